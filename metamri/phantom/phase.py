"""Smooth random image phase: real MR images are complex.

B0 inhomogeneity, coil and receiver phase make the phase of an MR image smooth
but far from zero.  :func:`smooth_phase` draws a second-order polynomial
``phi(u, v) = c0 + c1 u + c2 v + c3 u^2 + c4 u v + c5 v^2`` over normalised image
coordinates ``u`` (rows) and ``v`` (columns) in [-1, 1]: c0 uniform in [-pi, pi),
the linear terms N(0, 1) rad and the quadratic terms N(0, 0.75) rad, drawn once
per call (one volume), plus N(0, 0.2) rad per slice and coefficient.  A linear
term c moves the k-space peak by c / pi samples only, so the centre of k-space
stays at the centre.
"""

from __future__ import annotations

import numpy as np


def smooth_phase(rng: np.random.Generator, slices: int, shape: tuple[int, int]) -> np.ndarray:
    """Random smooth low-order phase.

    Args:
        rng: Source of the coefficients.
        slices: Number of slices (each gets its own small perturbation).
        shape: (H, W) of one slice.

    Returns:
        float64 (slices, H, W), radians.
    """
    u = np.linspace(-1.0, 1.0, shape[0])[:, None]
    v = np.linspace(-1.0, 1.0, shape[1])[None, :]
    basis = np.stack(np.broadcast_arrays(np.ones_like(u * v), u, v, u * u, u * v, v * v))
    base = np.concatenate([[rng.uniform(-np.pi, np.pi)], rng.normal(0, 1.0, 2), rng.normal(0, 0.75, 3)])
    coeffs = base + rng.normal(0, 0.2, size=(slices, 6))
    return np.einsum("sk,khw->shw", coeffs, basis)
