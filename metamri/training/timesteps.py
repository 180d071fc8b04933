"""Per-domain timestep ranges (paper Sec. 3.6, Fig. 2).

Each domain trains on timesteps drawn uniformly from its own range, given as
fractions [lo, hi] of T: brain [0, 1]; cardiac (OOD) [0.75, 1] ("high noise",
so the anatomy is hidden and the metadata is the only reliable signal) or
[0, 0.25] ("low noise").

Rounding: a fraction x maps to the integer timestep ``floor(x * T + 0.5)``
(round half up, not Python's round-half-to-even); the range [lo, hi] becomes the
integers ``lo_t <= t <= hi_t - 1`` with ``lo_t = floor(lo T + 0.5)``,
``hi_t = floor(hi T + 0.5)``, i.e. the half-open interval [lo_t, hi_t).  With
T = 1000: [0, 1] -> 0..999, [0.75, 1] -> 750..999, [0, 0.25] -> 0..249.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from metamri.errors import ConfigError


def fraction_to_timestep(x: float, num_train_timesteps: int) -> int:
    """``floor(x * T + 0.5)``: the timestep a fraction of T names (round half up)."""
    return int(math.floor(x * num_train_timesteps + 0.5))


class TimestepRangeSampler:
    """Draws one training timestep per sample, uniformly within its domain's range.

    Args:
        ranges: Domain name -> [lo, hi] fractions of T, ``0 <= lo < hi <= 1``.
        num_train_timesteps: T.
        seed: Seed of the generator used when :meth:`sample` gets none.
        default: Range of domains not in ``ranges``; ``None`` (the default) makes an
            unlisted domain an error.
    """

    def __init__(
        self,
        ranges: Mapping[str, Sequence[float]],
        num_train_timesteps: int = 1000,
        seed: int = 0,
        default: Sequence[float] | None = None,
    ) -> None:
        self.num_train_timesteps = int(num_train_timesteps)
        if self.num_train_timesteps <= 0:
            raise ConfigError("timesteps.num_train_timesteps", num_train_timesteps, "must be positive")
        if not ranges and default is None:
            raise ConfigError("timesteps.ranges", ranges, "give a timestep range for every domain")
        self.ranges: dict[str, tuple[float, float]] = {}
        self.bounds: dict[str, tuple[int, int]] = {}
        self.default: tuple[int, int] | None = None
        items = list(ranges.items()) + ([] if default is None else [(None, default)])
        for domain, rng in items:
            key = "timesteps.default" if domain is None else f"timesteps.ranges.{domain}"
            try:
                lo, hi = (float(v) for v in rng)
            except (TypeError, ValueError):
                raise ConfigError(key, rng, "expected [lo, hi] fractions of T") from None
            if not 0.0 <= lo < hi <= 1.0:
                raise ConfigError(key, [lo, hi], "need 0 <= lo < hi <= 1")
            lo_t = fraction_to_timestep(lo, self.num_train_timesteps)
            hi_t = fraction_to_timestep(hi, self.num_train_timesteps)
            if hi_t <= lo_t:
                raise ConfigError(key, [lo, hi], f"contains no integer timestep of T = {self.num_train_timesteps}")
            if domain is None:
                self.default = (lo_t, hi_t)
            else:
                self.ranges[str(domain)] = (lo, hi)
                self.bounds[str(domain)] = (lo_t, hi_t)
        self.generator = torch.Generator().manual_seed(int(seed))

    def bounds_of(self, domain: str) -> tuple[int, int]:
        """Integer half-open range [lo_t, hi_t) of ``domain``."""
        if domain in self.bounds:
            return self.bounds[domain]
        if self.default is not None:
            return self.default
        raise ConfigError(
            "timesteps.ranges", sorted(self.ranges),
            f"no timestep range for domain {domain!r}", hint=f"add timesteps.ranges.{domain}",
        )

    def sample(self, domains: Sequence[str], generator: torch.Generator | None = None) -> torch.Tensor:
        """Timesteps int64 (B,) on the CPU, ``t_b`` uniform on ``bounds_of(domains[b])``."""
        gen = self.generator if generator is None else generator
        bounds = torch.tensor([self.bounds_of(d) for d in domains], dtype=torch.int64).reshape(-1, 2)
        lo, width = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
        u = torch.rand(len(domains), generator=gen, dtype=torch.float64)
        offset = torch.minimum((u * width).floor().to(torch.int64), width - 1)
        return lo + offset
