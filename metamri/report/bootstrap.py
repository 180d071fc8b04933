r"""Percentile bootstrap intervals that resample volumes, not slices.

Slices of one volume share the subject, the coil setup and the protocol, so their metrics
are correlated; resampling slices as if they were independent gives intervals that are
too narrow. Here the unit of resampling is the volume (the ``fname``): a draw picks
``V`` volumes with replacement out of the ``V`` observed ones, keeps every slice of each
pick, and the statistic is the mean over all slices of the drawn volumes,

.. math::  \hat\theta^{*} = \frac{\sum_{j=1}^{V} S_{v_j}}{\sum_{j=1}^{V} c_{v_j}},
           \qquad v_j \sim \mathrm{Uniform}\{1..V\},

with ``S_v`` the sum and ``c_v`` the number of slices of volume ``v``; the point estimate
is the plain mean over slices. The interval is the ``(1 - level) / 2`` and
``(1 + level) / 2`` quantiles of ``n_boot`` draws (percentile bootstrap).

A paired comparison (method A minus method B on the same slices) bootstraps the per-slice
differences ``a - b`` the same way, which keeps the pairing and the within-volume
correlation.

Every function makes its own ``np.random.default_rng(seed)``, so a call's result depends
on its arguments only (not on what ran before), and two calls with the same seed draw the
same volumes. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Bound on the ``(draws, volumes)`` index block held at once (memory, not results).
_MAX_BLOCK = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A mean over slices and its bootstrap interval.

    Attributes:
        estimate: The mean over all slices (of the differences, for a paired interval),
            in the metric's units (PSNR: dB).
        lo, hi: The percentile interval; NaN with fewer than two volumes (one volume has
            no between-volume variation to resample).
        level: Coverage, e.g. 0.95.
        n_boot: Bootstrap draws.
        n_slices: Slices that entered (paired: slices both sides have).
        n_volumes: Distinct volumes among them (the units resampled).
    """

    estimate: float
    lo: float
    hi: float
    level: float
    n_boot: int
    n_slices: int
    n_volumes: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def bootstrap_draws(
    values: np.ndarray, volumes: np.ndarray | None = None, *, n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """The bootstrap distribution of the mean over slices, resampling volumes.

    Args:
        values: ``(n_slices,)`` finite per-slice values.
        volumes: ``(n_slices,)`` volume label of each slice (any hashable dtype, e.g. the
            file names); ``None`` makes every slice its own volume (the ordinary, slice-level
            bootstrap).
        n_boot: Number of draws.
        seed: Seed of the generator this call creates.

    Returns:
        ``(n_boot,)`` float64: the mean over all slices of each draw's volumes.

    Raises:
        ValueError: empty or non-finite ``values``, mismatched shapes, ``n_boot < 1``.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite: drop missing entries (NaN) before bootstrapping")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    sums, counts = _per_volume(values, volumes)
    rng = np.random.default_rng(seed)
    n_vol = sums.size
    block = max(1, _MAX_BLOCK // n_vol)
    out = np.empty(int(n_boot))
    for start in range(0, int(n_boot), block):
        stop = min(int(n_boot), start + block)
        picks = rng.integers(0, n_vol, size=(stop - start, n_vol))
        out[start:stop] = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return out


def volume_bootstrap(
    values: np.ndarray,
    volumes: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Mean over slices with a percentile interval from resampling volumes.

    Args:
        values: ``(n_slices,)`` finite per-slice values (e.g. PSNR in dB).
        volumes: ``(n_slices,)`` volume label per slice; ``None``: each slice is a volume.
        n_boot, seed: See :func:`bootstrap_draws`.
        level: Coverage in (0, 1).

    Returns:
        An :class:`Interval` (``lo``/``hi`` NaN with a single volume).

    >>> iv = volume_bootstrap([1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"], n_boot=200)
    >>> iv.estimate, iv.n_volumes, 1.5 <= iv.lo <= iv.hi <= 3.5
    (2.5, 2, True)
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(values, dtype=float)
    draws = bootstrap_draws(values, volumes, n_boot=n_boot, seed=seed)
    n_vol = _per_volume(values, volumes)[0].size
    if n_vol < 2:
        lo = hi = math.nan
    else:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(values.mean()), float(lo), float(hi), float(level), int(n_boot),
                    int(values.size), int(n_vol))


def paired_volume_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    volumes: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Mean paired difference ``a - b`` over slices, with an interval resampling volumes.

    Args:
        a, b: ``(n_slices,)`` the two methods' values on the same slices, in the same order.
        volumes: ``(n_slices,)`` volume label per slice; ``None``: each slice is a volume.
        n_boot, seed, level: See :func:`volume_bootstrap`.

    Returns:
        An :class:`Interval` of the mean of ``a - b`` (a positive PSNR estimate: ``a`` is
        better, in dB).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    return volume_bootstrap(a - b, volumes, n_boot=n_boot, seed=seed, level=level)


def _per_volume(values: np.ndarray, volumes) -> tuple[np.ndarray, np.ndarray]:
    """``(sums, counts)``, each ``(n_volumes,)``, in order of first appearance."""
    if volumes is None:
        return values.astype(float), np.ones(values.size)
    volumes = np.asarray(volumes)
    if volumes.shape != values.shape:
        raise ValueError(f"volumes must have the shape of values {values.shape}, got {volumes.shape}")
    _, first, inverse = np.unique(volumes, return_index=True, return_inverse=True)
    order = np.argsort(first)              # relabel by first appearance (stable, readable)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    labels = rank[inverse.reshape(-1)]
    sums = np.bincount(labels, weights=values, minlength=order.size)
    counts = np.bincount(labels, minlength=order.size).astype(float)
    return sums, counts
