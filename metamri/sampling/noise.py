"""Per-sample Gaussian noise from per-sample generators.

Each batch element owns a ``torch.Generator``, so a sample's noise (x_T and every
re-noising draw) depends only on its own seed, not on its position in the batch, the
batch size or the number of processes (as in NVlabs/edm's per-image seeds).  The draw
happens on the generator's device and is then moved, so CPU generators give the same
noise on every machine. Moving it to a CUDA device goes through pinned memory with a
non-blocking copy, so the host does not wait for the device's queued work at every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def generators_from_seeds(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded ``torch.Generator`` per seed, on ``device``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn_per_sample(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Standard normal noise (B, *shape), row b drawn from ``generators[b]``.

    The only Python loop over batch elements in the samplers: one ``randn`` per element.
    """
    rows = [torch.randn(tuple(shape), generator=g, dtype=dtype, device=g.device) for g in generators]
    device = torch.device(device)
    if device.type == "cuda" and all(r.device.type == "cpu" for r in rows):
        return torch.stack(rows).pin_memory().to(device, non_blocking=True)
    return torch.stack([r.to(device) for r in rows])
