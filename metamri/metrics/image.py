"""Per-slice image-quality metrics on magnitude images, in fastMRI's conventions.

Conventions (see ``docs/metrics.md``):

* Metrics compare MAGNITUDE images ``(H, W)``; complex inputs are reduced to
  ``|x|`` first, so a global phase does not count as an error.
* ``data_range`` defaults to ``gt.max()``: the maximum of the ground-truth
  magnitude of that slice (fastMRI's ``evaluate.psnr``/``ssim`` use the maximum of
  the ground-truth VOLUME; :func:`psnr_volume` and :func:`ssim_volume` reproduce
  that exactly).
* SSIM is ``skimage.metrics.structural_similarity`` with fastMRI's arguments:
  7x7 uniform window (``gaussian_weights=False``), ``K1 = 0.01``, ``K2 = 0.03``,
  sample covariance; the mean SSIM over the valid window positions.
* NMSE is ``||gt - pred||^2 / ||gt||^2``.

The metrics are computed in float64 with scikit-image, the library fastMRI's
``evaluate.py`` itself calls, so the numbers are the same to rounding.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

#: fastMRI's SSIM window (``skimage`` default, passed explicitly so it cannot drift).
SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def magnitude(x) -> np.ndarray:
    """``|x|`` as float64 NumPy (accepts NumPy arrays or tensors, real or complex)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.abs() if x.is_complex() else x
        return x.to(torch.float64).numpy()
    x = np.asarray(x)
    return (np.abs(x) if np.iscomplexobj(x) else x).astype(np.float64)


def _pair(gt, pred, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = magnitude(gt), magnitude(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if gt.ndim != ndim:
        what = "(H, W) slices" if ndim == 2 else "(S, H, W) volumes"
        raise ValueError(f"expected {what}, got shape {gt.shape}")
    return gt, pred


def _data_range(gt: np.ndarray, data_range: float | None) -> float:
    value = float(gt.max()) if data_range is None else float(data_range)
    if not value > 0:
        raise ValueError(f"data_range must be positive, got {value} (an all-zero ground truth?)")
    return value


def psnr(gt, pred, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        gt: ground truth ``(H, W)``, real or complex (magnitude is used).
        pred: prediction, same shape.
        data_range: peak value (default: ``gt.max()``, fastMRI's convention).
    """
    gt, pred = _pair(gt, pred)
    return float(peak_signal_noise_ratio(gt, pred, data_range=_data_range(gt, data_range)))


def ssim(gt, pred, data_range: float | None = None) -> float:
    """Structural similarity with fastMRI's settings (7x7 uniform window, K1 0.01, K2 0.03).

    Args:
        gt: ground truth ``(H, W)``, at least 7x7; magnitude is used.
        pred: prediction, same shape.
        data_range: dynamic range (default: ``gt.max()`` of this slice).
    """
    gt, pred = _pair(gt, pred)
    return float(
        structural_similarity(
            gt, pred, data_range=_data_range(gt, data_range), win_size=SSIM_WIN_SIZE,
            gaussian_weights=False, K1=SSIM_K1, K2=SSIM_K2, use_sample_covariance=True,
        )
    )


def nmse(gt, pred) -> float:
    """Normalised mean squared error ``||gt - pred||^2 / ||gt||^2`` of the magnitudes."""
    gt, pred = _pair(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr_volume(gt, pred, data_range: float | None = None) -> float:
    """fastMRI's volume PSNR: one MSE over the ``(S, H, W)`` volume, range = volume max."""
    gt, pred = _pair(gt, pred, ndim=3)
    return float(peak_signal_noise_ratio(gt, pred, data_range=_data_range(gt, data_range)))


def ssim_volume(gt, pred, data_range: float | None = None) -> float:
    """fastMRI's volume SSIM: the mean of slice SSIMs, each with range = the VOLUME max."""
    gt, pred = _pair(gt, pred, ndim=3)
    value = _data_range(gt, data_range)
    return float(np.mean([ssim(g, p, data_range=value) for g, p in zip(gt, pred, strict=True)]))
