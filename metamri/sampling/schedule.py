"""Noise schedule and DDIM timestep grid.

The model is trained with diffusers' ``DDPMScheduler`` (linear betas from 1e-4 to 0.02,
T = 1000 steps, epsilon prediction); :func:`alphas_cumprod` returns its
``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` for t = 0..T-1.

Sampling visits ``num_steps`` of those T timesteps.  :func:`ddim_timesteps` reproduces
diffusers' ``DDIMScheduler.set_timesteps`` exactly (tested against it) for its three
spacings (Table 2 of Lin et al. 2024, "Common diffusion noise schedules and sample
steps are flawed"):

* ``"leading"`` (the default, diffusers' default, and what both reference codes use):
  ``t_i = i * (T // n) + steps_offset`` for i = n-1..0, e.g. n = 100: 990, 980, ..., 10, 0.
  DDS (Chung, Lee, Ye 2023) iterates ``reversed(range(0, 1000, 1000 // n))`` and ContextMRI
  (Chung et al. 2025) takes ``DDIMScheduler.set_timesteps(n)`` with ``steps_offset = 0``;
  both give this grid.
* ``"trailing"``: ``round(T - i * T / n) - 1``, e.g. 999, 989, ..., 9 (starts at the last
  training timestep, so the first step sees pure noise).
* ``"linspace"``: ``round(linspace(0, T - 1, n))`` reversed.

Each step goes from ``t_i`` to the next grid point ``t_{i+1}``; after the last grid point the
sampler steps to "t = -1" whose ``alpha_bar`` is 1 (diffusers' ``set_alpha_to_one=True``),
so the final update returns the clean estimate.  For ``"leading"`` this equals diffusers'
``prev_t = t - T // n``; for the other spacings with ``n`` not dividing T diffusers' rule
can skip or repeat part of the grid, and we keep to the grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from metamri.errors import ConfigError

SPACINGS = ("leading", "trailing", "linspace")


def alphas_cumprod(scheduler_config: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``alpha_bar_t`` of a diffusers ``DDPMScheduler``.

    Args:
        scheduler_config: keyword arguments of ``diffusers.DDPMScheduler`` (e.g. the
            ``scheduler/scheduler_config.json`` of a pretrained model); ``None`` gives
            diffusers' defaults (linear betas 1e-4..0.02, 1000 steps), the model's schedule.

    Returns:
        float64 tensor (T,), decreasing from ~1 at t = 0; computed by diffusers (in float32,
        as during training) and then widened.
    """
    from diffusers import DDPMScheduler

    config = dict(scheduler_config or {})
    config.pop("_class_name", None)
    config.pop("_diffusers_version", None)
    scheduler = DDPMScheduler(**config)
    return scheduler.alphas_cumprod.to(torch.float64)


def ddim_timesteps(
    num_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> torch.Tensor:
    """The timesteps a ``num_steps``-step DDIM sampler visits, first (noisiest) to last.

    Args:
        num_steps: number of sampling steps n, 1 <= n <= T.
        num_train_timesteps: T, the training schedule's length.
        spacing: ``"leading"``, ``"trailing"`` or ``"linspace"`` (see the module docstring).
        steps_offset: added to every timestep for ``"leading"`` (diffusers' ``steps_offset``).

    Returns:
        int64 tensor (n,), strictly decreasing, within [0, T - 1].
    """
    n, T = int(num_steps), int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ConfigError("sampler.num_steps", num_steps, f"must lie in [1, {T}]")
    if spacing == "leading":
        t = np.arange(0, n)[::-1] * (T // n) + steps_offset
    elif spacing == "trailing":
        t = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "linspace":
        t = np.linspace(0, T - 1, n).round()[::-1]
    else:
        raise ConfigError("sampler.timestep_spacing", spacing, f"must be one of {SPACINGS}")
    t = torch.from_numpy(np.ascontiguousarray(t).astype(np.int64))
    if t.numel() != n or (t.numel() > 1 and bool((t[1:] >= t[:-1]).any())):
        raise ConfigError("sampler.num_steps", num_steps, f"gives a degenerate {spacing} grid")
    if int(t.min()) < 0 or int(t.max()) > T - 1:
        raise ConfigError("sampler.steps_offset", steps_offset, f"moves the grid outside [0, {T - 1}]")
    return t


class DDIMGrid(NamedTuple):
    """The per-step quantities of a DDIM sampler.

    Attributes:
        timesteps: int64 (n,), the network's timestep at each step, decreasing.
        alpha_bar: float64 (n,), ``alpha_bar_{t_i}``.
        alpha_bar_prev: float64 (n,), ``alpha_bar_{t_{i+1}}``; the last entry is 1.
    """

    timesteps: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor


def ddim_grid(
    alphas_cumprod: torch.Tensor,
    num_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> DDIMGrid:
    """Timesteps and ``alpha_bar`` pairs (t_i -> t_{i+1}) of a DDIM sampler.

    Args:
        alphas_cumprod: (T,) ``alpha_bar_t`` of the training schedule.
        num_steps: n.
        spacing, steps_offset: see :func:`ddim_timesteps`.
    """
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if ab.ndim != 1 or not bool(((ab > 0) & (ab <= 1)).all()):
        raise ConfigError("sampler.alphas_cumprod", ab.shape, "must be a 1-D tensor in (0, 1]")
    t = ddim_timesteps(num_steps, ab.numel(), spacing, steps_offset)
    alpha_bar = ab[t]
    alpha_bar_prev = torch.cat([alpha_bar[1:], torch.ones(1, dtype=torch.float64)])
    return DDIMGrid(t, alpha_bar, alpha_bar_prev)
