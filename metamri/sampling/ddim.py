"""DDIM (Song, Meng, Ermon 2021): generation from the prior, and the update both samplers use.

With ``a_t = alpha_bar_t`` and the (guided) network noise ``eps``, one step t -> t' is
(paper Eqs. 2 and 3):

    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                                   (2)
    sigma_t = eta * sqrt((1 - a_t') / (1 - a_t)) * sqrt(1 - a_t / a_t')
    x_t'    = sqrt(a_t') x0_hat + sqrt(1 - a_t' - sigma_t^2) eps + sigma_t z,  z ~ N(0, I)  (3)

eta = 0 is deterministic DDIM, eta = 1 has DDPM's posterior variance.  The last step goes
to a_t' = 1, where sigma = 0 and the update returns x0_hat.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metamri.errors import ConfigError
from metamri.sampling.complex_image import to_complex
from metamri.sampling.guidance import EpsFn, GuidedDenoiser
from metamri.sampling.noise import randn_per_sample
from metamri.sampling.result import SampleResult, StepTimer
from metamri.sampling.schedule import alphas_cumprod as default_alphas_cumprod
from metamri.sampling.schedule import ddim_grid


def tweedie_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Eq. 2: the denoised estimate E[x0 | x_t] from the predicted noise."""
    return (x_t - (1.0 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def ddim_sigma(alpha_bar: float, alpha_bar_prev: float, eta: float) -> float:
    """Eq. 3's noise level sigma_t for the step a_t -> a_t' (0 when a_t' = 1)."""
    if alpha_bar_prev >= 1.0:
        return 0.0
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_prev: float,
    sigma: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Eq. 3: ``sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z`` (z ignored when sigma = 0)."""
    out = alpha_bar_prev**0.5 * x0 + max(1.0 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        out = out + sigma * noise
    return out


def check_sampler_args(num_steps: int, eta: float, guidance_scale: float) -> None:
    """Config checks shared by the samplers (errors name the key and value)."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise ConfigError("sampler.num_steps", num_steps, "must be a positive integer")
    if not 0.0 <= eta <= 1.0:
        raise ConfigError("sampler.eta", eta, "must lie in [0, 1] (0: DDIM, 1: DDPM variance)")
    if guidance_scale != guidance_scale:  # NaN
        raise ConfigError("sampler.guidance_scale", guidance_scale, "must be a number")


def initial_noise(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    x_init: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """x_T: ``x_init`` if given, else N(0, I) (B, 2, H, W) drawn per sample."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[1] != 2:
        raise ValueError(f"shape must be (B, 2, H, W); got {shape}")
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch element: {len(generators)} for batch {shape[0]}")
    if x_init is not None:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
        return x_init.to(device=device, dtype=dtype)
    return randn_per_sample(generators, shape[1:], dtype, device)


class DDIMSampler:
    """Plain DDIM sampling from the (guided) prior, for generation.

    Args:
        num_steps: n sampling steps on the DDIM grid (see :mod:`metamri.sampling.schedule`).
        eta: DDIM eta in [0, 1].
        guidance_scale: classifier-free guidance scale s (see :mod:`.guidance`).
        timestep_spacing: ``"leading"`` (default, as DDS and ContextMRI), ``"trailing"``,
            ``"linspace"``.
        alphas_cumprod: (T,) ``alpha_bar`` of the model's training schedule; ``None`` gives
            diffusers' default DDPM schedule (linear betas, T = 1000), the model's.
        clip_x0: if set, clamp each x0_hat to [-clip_x0, clip_x0] (ContextMRI's generation
            clamps to 4); ``None`` leaves it alone.
        profile: synchronise a CUDA device around the timed sections (see
            :class:`~metamri.sampling.dds.DecomposedDiffusionSampler`).
    """

    def __init__(
        self,
        num_steps: int = 100,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        timestep_spacing: str = "leading",
        alphas_cumprod: torch.Tensor | Sequence[float] | None = None,
        clip_x0: float | None = None,
        profile: bool = False,
    ) -> None:
        check_sampler_args(num_steps, eta, guidance_scale)
        ab = default_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.grid = ddim_grid(ab, num_steps, timestep_spacing)
        self.num_steps, self.eta = int(num_steps), float(eta)
        self.guidance_scale = float(guidance_scale)
        self.clip_x0 = clip_x0
        self.profile = bool(profile)

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        cond_ctx: torch.Tensor | None,
        uncond_ctx: torch.Tensor | None,
        shape: Sequence[int],
        generators: Sequence[torch.Generator],
        x_init: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> SampleResult:
        """Draw B images from the prior.

        Args:
            eps_fn: ``eps_fn(x_t (N, 2, H, W), t (N,), context (N, L, D)) -> eps``.
            cond_ctx, uncond_ctx: contexts (B or 1, L, D); see :class:`GuidedDenoiser`.
            shape: (B, 2, H, W).
            generators: B ``torch.Generator``s, one per sample.
            x_init: optional x_T (B, 2, H, W) instead of drawing it.
            dtype, device: real dtype and device of the image tensors.

        Returns:
            :class:`SampleResult` with ``image`` complex (B, H, W).
        """
        device = torch.device(device)
        timer = StepTimer(device, synchronize=self.profile)
        denoiser = GuidedDenoiser(eps_fn, cond_ctx, uncond_ctx, self.guidance_scale)
        x = initial_noise(shape, generators, x_init, dtype, device)
        x0 = x
        for t, a_t, a_prev in zip(*self.grid, strict=True):
            a_t, a_prev = float(a_t), float(a_prev)
            with timer.section("unet"):
                eps = denoiser(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=device))
            x0 = tweedie_x0(x, eps, a_t)
            if self.clip_x0 is not None:
                x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            if a_prev >= 1.0:
                break
            sigma = ddim_sigma(a_t, a_prev, self.eta)
            noise = randn_per_sample(generators, x.shape[1:], x.dtype, device) if sigma > 0 else None
            x = ddim_update(x0, eps, a_prev, sigma, noise)
        return SampleResult(to_complex(x0), timer.result(), denoiser.calls, self.grid.timesteps)
