"""The MVUE coil combination, centre crop/pad, p99 normalisation and the 2-channel layout.

For coil images ``m_c = F^-1 y_c`` (orthonormal centred inverse FFT) and maps
``S_c``, the minimum-variance unbiased estimate of the image (SENSE with R = 1) is

    x_hat(r) = sum_c conj(S_c(r)) m_c(r) / sum_c |S_c(r)|^2,

so for noiseless data ``y_c = F(S_c x)`` it returns ``x`` exactly, whatever the
maps' scale. Pixels where ``sum_c |S_c|^2 = 0`` (ESPIRiT-cropped background) are 0.

Images are complex (H, W); the models see them as float32 (2, H, W) real/imag
channels divided by the slice's 99th-percentile magnitude.
"""

from __future__ import annotations

import numpy as np

from metamri.physics.fft import center_crop, ifft2c_np


def mvue(kspace: np.ndarray, maps: np.ndarray, *, eps: float = 0.0) -> np.ndarray:
    """Coil-combine fully sampled k-space with sensitivity maps.

    Args:
        kspace: complex (coils, readout, phase) (or (..., coils, H, W)).
        maps: complex, same shape as ``kspace``.
        eps: Pixels with ``sum_c |S_c|^2 <= eps`` are set to 0.

    Returns:
        complex (readout, phase) image (complex64 for complex64 inputs,
        complex128 when either input is complex128), in the units of ``kspace``.
    """
    kspace, maps = np.asarray(kspace), np.asarray(maps)
    if kspace.shape != maps.shape or kspace.ndim < 3:
        raise ValueError(
            f"kspace {kspace.shape} and maps {maps.shape} must share one shape (..., coils, H, W)"
        )
    dtype = np.result_type(kspace.dtype, maps.dtype, np.complex64)
    coil_images = ifft2c_np(kspace.astype(dtype, copy=False))
    num = np.sum(np.conj(maps) * coil_images, axis=-3)
    den = np.sum(np.abs(maps) ** 2, axis=-3)
    out = np.zeros(num.shape, dtype=dtype)
    np.divide(num, den, out=out, where=den > eps)
    return out


def crop_or_pad(image: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Centre-crop (or zero-pad) the last two axes to ``size`` (fastMRI's centre convention).

    Args:
        image: (..., H, W) array, complex or real.
        size: (H', W'), or one int for a square.

    Returns:
        (..., H', W') array of the same dtype.
    """
    size = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return np.ascontiguousarray(center_crop(image, size))


def p99_normalize(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
    """Divide each slice by the 99th percentile of its magnitude.

    Args:
        image: complex or real (H, W), or a stack (..., H, W) normalised per slice.

    Returns:
        ``(image / s, s)``: the normalised image (same dtype) and the divisor ``s``
        (a float for one slice, a float32 array (...) for a stack) such that
        ``normalised * s`` is ``image``. An all-zero slice keeps ``s = 1``.

    Raises:
        ValueError: The image holds NaN or inf.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"p99_normalize needs (..., H, W), got shape {image.shape}")
    mag = np.abs(image).reshape(*image.shape[:-2], -1)
    if not np.isfinite(mag).all():
        raise ValueError("cannot normalise an image holding NaN or inf")
    s = np.percentile(mag, 99, axis=-1)
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    out = (image / s[..., None, None]).astype(image.dtype, copy=False)
    return out, (float(s) if image.ndim == 2 else s)


def to_two_channel(image: np.ndarray) -> np.ndarray:
    """complex (..., H, W) -> float32 (..., 2, H, W) with channels (real, imag)."""
    image = np.asarray(image)
    if not np.iscomplexobj(image):
        raise ValueError(f"to_two_channel needs a complex image, got {image.dtype}")
    return np.stack([image.real, image.imag], axis=-3).astype(np.float32)


def from_two_channel(image: np.ndarray) -> np.ndarray:
    """float (..., 2, H, W) real/imag channels -> complex64 (..., H, W)."""
    image = np.asarray(image)
    if image.ndim < 3 or image.shape[-3] != 2:
        raise ValueError(f"from_two_channel needs (..., 2, H, W), got shape {image.shape}")
    return (image[..., 0, :, :] + 1j * image[..., 1, :, :]).astype(np.complex64)
