"""What a sampler returns, and the wall-clock bookkeeping behind ``timings``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class SampleResult:
    """The output of one sampler call.

    Attributes:
        image: complex tensor (B, H, W): the final clean estimate (for DDS the last
            data-consistent x0; for DDIM the last Tweedie x0).
        timings: wall-clock seconds split into ``"unet"`` (network calls, guidance
            arithmetic included), ``"data_consistency"`` (the CG solves; 0 for DDIM),
            ``"other"`` (everything else: Tweedie, re-noising, noise draws) and ``"total"``.
        nfe: number of network calls (a guided step with 0 < s != 1 counts one call of
            batch 2B).
        timesteps: int64 (num_steps,), the timesteps visited.
    """

    image: torch.Tensor
    timings: dict[str, float]
    nfe: int
    timesteps: torch.Tensor = field(repr=False)


class StepTimer:
    """Accumulates wall-clock time per category.

    On CUDA it synchronises the device at each boundary so that asynchronous kernels are
    charged to the category that launched them.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {"unet": 0.0, "data_consistency": 0.0}
        self._start = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def section(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def result(self) -> dict[str, float]:
        """The timings so far, with ``"other"`` = total - the named sections."""
        self._sync()
        total = time.perf_counter() - self._start
        out = dict(self.seconds)
        out["other"] = max(total - sum(self.seconds.values()), 0.0)
        out["total"] = total
        return out
