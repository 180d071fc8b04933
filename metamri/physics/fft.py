"""Orthonormal, centred 2-D FFTs (the convention of fastMRI's ``fft2c``/``ifft2c``).

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes,
so ``ifft2c(fft2c(x)) == x`` and both are unitary: ``||fft2c(x)|| == ||x||``.
NumPy and torch versions agree to float precision; both act on complex arrays
(not fastMRI's trailing real/imag axis).
"""

from __future__ import annotations

import numpy as np
import torch

_AXES = (-2, -1)


def fft2c_np(x: np.ndarray) -> np.ndarray:
    """Image -> k-space. x: complex, (..., H, W)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=_AXES), axes=_AXES, norm="ortho"), axes=_AXES)


def ifft2c_np(k: np.ndarray) -> np.ndarray:
    """K-space -> image. k: complex, (..., H, W)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=_AXES), axes=_AXES, norm="ortho"), axes=_AXES)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Image -> k-space. x: complex tensor, (..., H, W)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_AXES), dim=_AXES, norm="ortho"), dim=_AXES)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """K-space -> image. k: complex tensor, (..., H, W)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_AXES), dim=_AXES, norm="ortho"), dim=_AXES)


def center_crop(x, shape: tuple[int, int]):
    """Crop (or, where ``shape`` is larger, zero-pad) the last two axes to ``shape``, centred.

    Uses fastMRI's centre convention (``from = (size - target) // 2``) so crops
    agree with ``fastmri.data.transforms.center_crop``.  Works on NumPy arrays and tensors.
    """
    h, w = x.shape[-2:]
    th, tw = shape
    if th <= h and tw <= w:
        top, left = (h - th) // 2, (w - tw) // 2
        return x[..., top : top + th, left : left + tw]
    # pad the axes that are too small, then crop the others
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if isinstance(x, torch.Tensor):
        out = x.new_zeros((*x.shape[:-2], h + ph, w + pw))
    else:
        out = np.zeros((*x.shape[:-2], h + ph, w + pw), dtype=x.dtype)
    out[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w] = x
    return center_crop(out, shape)


def rss(x, axis: int = 0):
    """Root-sum-of-squares over the coil axis of a complex coil image."""
    if isinstance(x, torch.Tensor):
        return torch.sqrt((x.abs() ** 2).sum(dim=axis))
    return np.sqrt((np.abs(x) ** 2).sum(axis=axis))
