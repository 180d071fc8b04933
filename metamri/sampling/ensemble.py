"""Ensembles: K posterior samples of each slice, run as one batch, averaged.

Following the paper (Sec. 4.7, after Shen et al. 2024) K reconstructions of the same
k-space that differ only in their seeds are averaged pixel-wise.  We average the COMPLEX
images (the magnitude of the mean is what metrics see) and keep, as the uncertainty map,
the sample standard deviation of the MAGNITUDES ``|x_k|`` over the K samples
(``correction = 1``; all zeros when K = 1).  The magnitude std is what a reader looks at
and is insensitive to the global phase, which is poorly defined where the signal is
small; keep ``samples`` if a complex std is wanted.

The K samples of B slices run as one batch of B*K (slice-major: element ``b*K + j`` is
sample j of slice b): y, maps, mask and contexts are repeated K times.  Each element has
its own seed, and both the noise and the CG solve are per element, so the result does
not depend on the batch composition or on how many processes share the slices.
Seeds come from the caller; :func:`ensemble_seeds` derives them from a slice's name.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from metamri.sampling.guidance import EpsFn
from metamri.sampling.noise import generators_from_seeds


@dataclass
class EnsembleResult:
    """K-sample reconstructions of B slices.

    Attributes:
        mean: complex (B, H, W), the mean of the K complex samples.
        std: real (B, H, W), the sample std (correction 1) of the K magnitudes; 0 when K = 1.
        samples: complex (B, K, H, W) when asked for (``keep_samples=True``), else None.
        timings: seconds, summed over the sampler calls (see ``SampleResult.timings``).
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor | None
    timings: dict[str, float]


def ensemble_seeds(slice_id: str, k: int, base_seed: int = 0) -> list[int]:
    """K seeds for one slice, a pure function of (base_seed, slice_id, j).

    ``slice_id`` names the slice, e.g. ``"file_brain_AXT2_200_2000019.h5:7"``; CRC-32 is
    used (not Python's salted ``hash``) so every process derives the same seeds.
    """
    return [zlib.crc32(f"{base_seed}:{slice_id}:{j}".encode()) for j in range(int(k))]


def _repeat(x: torch.Tensor | None, batch: int, k: int) -> torch.Tensor | None:
    """Repeat each batch element k times (slice-major) if x carries the batch axis."""
    if x is None or x.ndim < 3 or x.shape[0] == 1 or x.shape[0] != batch:
        return x
    return x.repeat_interleave(k, dim=0)


def ensemble_sample(
    sampler,
    eps_fn: EpsFn,
    y: torch.Tensor,
    maps: torch.Tensor,
    mask: torch.Tensor,
    cond_ctx: torch.Tensor | None,
    uncond_ctx: torch.Tensor | None,
    k: int,
    seeds: Sequence[int],
    make_operator: Callable | None = None,
    generator_device: str | torch.device = "cpu",
    keep_samples: bool = False,
) -> EnsembleResult:
    """Run K samples of each of B slices as one batch and summarise them.

    Args:
        sampler: a :class:`~metamri.sampling.dds.DecomposedDiffusionSampler` (or anything
            with its ``sample`` signature).
        eps_fn: the network, see :data:`metamri.sampling.guidance.EpsFn`.
        y: complex k-space (B, C, H, W).
        maps: complex sensitivity maps (B, C, H, W), or (C, H, W) / (1, C, H, W) shared.
        mask: sampling mask in any form ``make_operator`` accepts; repeated only when its
            first axis is the batch (B > 1).
        cond_ctx, uncond_ctx: contexts (B or 1, L, D).
        k: samples per slice.
        seeds: B*K ints, slice-major (``seeds[b*K + j]`` is sample j of slice b).
        make_operator: ``(maps, mask) -> operator``; default
            :class:`metamri.physics.sense.SenseOperator`.
        generator_device: where the per-sample generators draw (CPU: identical noise on
            every machine).
        keep_samples: also return all samples (B, K, H, W).
    """
    if make_operator is None:
        from metamri.physics.sense import SenseOperator as make_operator
    b, k = y.shape[0], int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(seeds) != b * k:
        raise ValueError(f"need B*K = {b}*{k} = {b * k} seeds (slice-major), got {len(seeds)}")
    maps_k = _repeat(maps, b, k) if maps.ndim == 4 else maps  # (C, H, W) broadcasts
    mask_k = _repeat(torch.as_tensor(mask), b, k)
    y_k = y.repeat_interleave(k, dim=0)
    operator = make_operator(maps_k, mask_k)
    result = sampler.sample(
        eps_fn,
        operator,
        y_k,
        _repeat(cond_ctx, b, k),
        _repeat(uncond_ctx, b, k),
        (b * k, 2, *y.shape[-2:]),
        generators_from_seeds(seeds, generator_device),
    )
    samples = result.image.reshape(b, k, *y.shape[-2:])
    std = samples.abs().std(dim=1, correction=1) if k > 1 else torch.zeros_like(samples[:, 0].real)
    return EnsembleResult(samples.mean(dim=1), std, samples if keep_samples else None, result.timings)
