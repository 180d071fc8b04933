"""Receive coils and the acquisition: ``y_c = F(S_c m) + n_c``.

Coil sensitivities are :func:`sigpy.mri.birdcage_maps` (a ring of ``n`` loops
around the object; sigpy normalises them so that their root-sum-of-squares is 1
everywhere, so the RSS of noiseless coil images equals ``|m|``).  Per patient the
ring radius is drawn in 1.3-1.7 (in units of half the field of view) and the
object sits off the ring's centre by up to 1/16 of the field of view.

Noise is white complex Gaussian, independent between coils and samples (no coil
noise correlation), with standard deviation ``sigma`` per complex sample (sigma /
sqrt(2) per real and imaginary part).  The FFT is unitary, so sigma is also the
per-pixel noise of each coil image.  ``snr`` sets ``sigma = mean(|m| over the
object) / snr``, the object being where ``|m|`` exceeds 10 % of its maximum:
``snr`` is the signal-to-noise ratio of the RSS image inside the object.
"""

from __future__ import annotations

import numpy as np
import sigpy.mri

from metamri.physics.fft import center_crop, fft2c_np, ifft2c_np, rss


def birdcage_coil_maps(
    n_coils: int, shape: tuple[int, int], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Birdcage coil sensitivities over an image grid.

    Args:
        n_coils: Number of receive coils.
        shape: (H, W) of the image (the object's field of view, no readout oversampling).
        rng: Draws the ring radius and the offset; ``None`` gives radius 1.5, no offset.

    Returns:
        complex64 (n_coils, H, W), root-sum-of-squares 1 at every pixel.
    """
    if n_coils < 1:
        raise ValueError(f"need at least one coil, got {n_coils}")
    h, w = shape
    side = max(h, w)
    margin = side // 16 if rng is not None else 0
    radius = 1.5 if rng is None else float(rng.uniform(1.3, 1.7))
    full = side + 2 * margin
    maps = sigpy.mri.birdcage_maps((n_coils, full, full), r=radius * side / full, nzz=8)
    dy, dx = (0, 0) if rng is None else (int(v) for v in rng.integers(-margin, margin + 1, size=2))
    top, left = (full - h) // 2 + dy, (full - w) // 2 + dx
    return np.ascontiguousarray(maps[:, top : top + h, left : left + w]).astype(np.complex64)


def noise_sigma(image: np.ndarray, snr: float) -> float:
    """``sigma = mean(|image| over the object) / snr`` (object: ``|image|`` > 10 % of its max)."""
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    mag = np.abs(image)
    obj = mag > 0.1 * mag.max()
    return float(mag[obj].mean() / snr) if obj.any() else 0.0


def simulate_kspace(
    image: np.ndarray,
    maps: np.ndarray,
    *,
    sigma: float = 0.0,
    rng: np.random.Generator | None = None,
    readout_oversampling: int = 1,
) -> np.ndarray:
    """Multi-coil Cartesian k-space of complex images.

    ``y_c = fft2c(S_c m) + n_c`` with the orthonormal centred FFT over the last two
    axes.  With readout oversampling ``k`` the coil images are zero-padded along
    the readout axis (axis -2, fastMRI's convention) to ``k * H`` rows before the
    FFT, so the object fills the central ``1/k`` of the readout field of view.

    Args:
        image: complex (..., H, W) images.
        maps: complex (C, H, W) coil sensitivities.
        sigma: Complex noise standard deviation per sample (0: noiseless).
        rng: Draws the noise; required when ``sigma > 0``.
        readout_oversampling: 1 (none) or 2 (fastMRI brain).

    Returns:
        complex64 (..., C, k * H, W).
    """
    if maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"coil maps {maps.shape} do not match images {image.shape}")
    coil_images = image[..., None, :, :] * maps
    if readout_oversampling != 1:
        h, w = image.shape[-2:]
        coil_images = center_crop(coil_images, (readout_oversampling * h, w))
    kspace = fft2c_np(coil_images.astype(np.complex64))
    if sigma > 0:
        if rng is None:
            raise ValueError("simulate_kspace needs an rng to draw noise")
        noise = rng.standard_normal((2, *kspace.shape), dtype=np.float32)
        kspace = kspace + (sigma / np.sqrt(2.0)) * (noise[0] + 1j * noise[1])
    return kspace.astype(np.complex64)


def rss_reconstruction(kspace: np.ndarray, recon_shape: tuple[int, int]) -> np.ndarray:
    """fastMRI's ``reconstruction_rss``: ``center_crop(rss(ifft2c(kspace)), recon_shape)``.

    Args:
        kspace: complex (..., C, H, W).
        recon_shape: (h, w) of the crop.

    Returns:
        float32 (..., h, w).
    """
    return center_crop(rss(ifft2c_np(kspace), axis=-3), recon_shape).astype(np.float32)
