"""Exponential moving average of the trainable parameters.

``W_ema <- d_n * W_ema + (1 - d_n) * W`` after the n-th optimizer step (n = 0, 1, ...),
with the warm-up of diffusers' ``EMAModel`` (which ContextMRI trained with, decay 0.999)::

    d_n = min(decay, (1 + n) / (10 + n))

except that the first update (n = 0) copies ``W``; then d_1 = 2/11, d_2 = 3/12, ... The average
follows the weights closely early on and reaches ``decay`` after about 10 / (1 - decay) steps
(~10,000 for 0.999).  Without the warm-up a short run's average is mostly the initial
weights (0.999^300 = 0.74 of them after 300 steps), and sampling with it fails.

This class only keeps the averages of the parameters that train (LoRA adapters and the
metadata encoder under LoRA, everything under full fine-tuning) rather than a deep copy of
a frozen 300 M-parameter UNet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


class EMA:
    """EMA of a fixed, named set of parameters.

    Args:
        named_parameters: ``(name, parameter)`` pairs to average, usually the
            trainable ones of a module (``(n, p) for n, p in m.named_parameters() if p.requires_grad``).
        decay: In [0, 1); the cap of the warmed-up decay (0.999 averages over roughly
            the last 1000 steps once warmed up).
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay = {decay!r}: must lie in [0, 1)")
        self.decay = float(decay)
        self.params: dict[str, nn.Parameter] = dict(named_parameters)
        self.shadow: dict[str, torch.Tensor] = {
            n: p.detach().clone() for n, p in self.params.items()
        }
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: ``min(decay, (1 + n) / (10 + n))``, n updates so far."""
        n = self.num_updates
        return 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameter values into the averages (call after ``optimizer.step``)."""
        names = list(self.params)
        if not names:
            return
        current = [self.params[n].detach() for n in names]
        for n, p in zip(names, current, strict=True):
            if self.shadow[n].device != p.device:
                self.shadow[n] = self.shadow[n].to(p.device)
        shadows = [self.shadow[n] for n in names]
        # shadow <- d shadow + (1 - d) w  ==  lerp(shadow, w, 1 - d); d = 0 copies
        torch._foreach_lerp_(shadows, current, 1.0 - self.current_decay())
        self.num_updates += 1

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Temporarily put the averages into the parameters; restore them on exit."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.shadow[n].to(p.device))
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """Overwrite the parameters with their averages (for export/sampling)."""
        for n, p in self.params.items():
            p.copy_(self.shadow[n].to(p.device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": {n: t.detach().cpu().clone() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore averages saved by :meth:`state_dict`; the parameter names must match."""
        missing = set(self.params) - set(state["shadow"])
        extra = set(state["shadow"]) - set(self.params)
        if missing or extra:
            raise KeyError(
                f"EMA state does not match the trainable parameters: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(extra)[:5]}"
            )
        for n, p in self.params.items():
            t = state["shadow"][n]
            if t.shape != p.shape:
                raise ValueError(f"EMA state {n}: shape {tuple(t.shape)} != parameter {tuple(p.shape)}")
            self.shadow[n] = t.to(device=p.device, dtype=p.dtype).clone()
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
