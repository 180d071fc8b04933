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

    With ``synchronize`` (a sampler's ``profile=True``) it synchronises a CUDA device at each
    boundary, so asynchronous kernels are charged to the category that launched them. Without
    it nothing waits for the device inside the loop (the sections then time kernel launches,
    not kernels); :meth:`result` always synchronises once, so ``"total"`` is exact. On CPU
    both are the same.
    """

    def __init__(self, device: torch.device, synchronize: bool = True) -> None:
        self.device = torch.device(device)
        self.synchronize = bool(synchronize)
        self.seconds: dict[str, float] = {"unet": 0.0, "data_consistency": 0.0}
        self._start = time.perf_counter()

    def _sync(self, force: bool = False) -> None:
        if self.device.type == "cuda" and (self.synchronize or force):
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
        self._sync(force=True)
        total = time.perf_counter() - self._start
        out = dict(self.seconds)
        out["other"] = max(total - sum(self.seconds.values()), 0.0)
        out["total"] = total
        return out
