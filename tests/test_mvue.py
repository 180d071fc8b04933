"""MVUE coil combination (closed form and with ESPIRiT maps), crop/pad, p99, 2 channels."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy.mri
import torch
from fastmri.data.transforms import center_crop as fastmri_center_crop

from metamri.physics.fft import fft2c_np
from metamri.preprocess.espirit import estimate_maps, virtual_coil
from metamri.preprocess.mvue import (
    crop_or_pad,
    from_two_channel,
    mvue,
    p99_normalize,
    to_two_channel,
)

COILS, READOUT, PHASE = 8, 128, 64


def smooth_phase_image(shape, seed=0):
    """Ellipses with a smooth (linear + bilinear) phase, complex128."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    mag = 0.8 * ((y / 0.8) ** 2 + (x / 0.75) ** 2 < 1) + 0.3 * ((y / 0.3) ** 2 + ((x - 0.2) / 0.2) ** 2 < 1)
    phase = 0.4 + 0.9 * y - 0.6 * x + 0.5 * x * y + 0.05 * rng.standard_normal()
    return mag * np.exp(1j * phase)


def nrmse(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def acquisition():
    x = smooth_phase_image((READOUT, PHASE))
    maps = sigpy.mri.birdcage_maps((COILS, READOUT, PHASE))  # complex128, rss = 1
    return x, maps, fft2c_np(maps * x)


def test_true_maps_give_x_exactly(acquisition):
    """sum_c conj(S_c) S_c x / sum_c |S_c|^2 = x: float64 precision for complex128 inputs."""
    x, maps, y = acquisition
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, atol=1e-12)
    est = mvue(y, maps)
    assert est.dtype == np.complex128 and est.shape == (READOUT, PHASE)
    assert np.abs(est - x).max() < 1e-13
    # the closed form does not need unit-norm maps
    assert np.abs(mvue(fft2c_np(3 * maps * x), 3 * maps) - x).max() < 1e-13
    est32 = mvue(y.astype(np.complex64), maps.astype(np.complex64))
    assert est32.dtype == np.complex64
    assert np.abs(est32 - x).max() < 2e-6


def test_zero_maps_give_zero_not_nan(acquisition):
    x, maps, y = acquisition
    maps = maps.copy()
    maps[:, :10] = 0
    est = mvue(y, maps)
    assert np.isfinite(est).all() and np.all(est[:10] == 0)
    np.testing.assert_allclose(est[10:], x[10:], atol=1e-12)


@pytest.mark.parametrize("backend", ["bart", "sigpy"])
def test_espirit_mvue_recovers_x_up_to_the_map_phase(acquisition, backend):
    """With ESPIRiT maps, MVUE = x e^{i arg(u^H S_true)} (the convention of align_phase)."""
    x, true_maps, y = acquisition
    y = y.astype(np.complex64)
    maps = estimate_maps(y, backend=backend)
    est = mvue(y, maps)
    obj = np.abs(x) > 0.1 * np.abs(x).max()
    mag_err = nrmse(np.abs(est)[obj], np.abs(x)[obj])
    # best global phase alignment
    g = np.vdot(est[obj], x[obj])
    global_err = nrmse(est[obj] * g / abs(g), x[obj])
    # the predicted per-pixel phase: that of the virtual coil u^H S_true
    v = np.tensordot(np.conj(virtual_coil(y, 24)), true_maps, axes=(0, 0))
    pixel_err = nrmse(est[obj] * np.conj(v[obj]) / np.abs(v[obj]), x[obj])
    print(f"\n{backend}: NRMSE |x| {mag_err:.2e}, complex after global phase {global_err:.2e}, "
          f"after the virtual-coil phase {pixel_err:.2e}")
    assert mag_err < 1e-3
    assert pixel_err < 1e-3
    assert global_err < 0.2  # the map phase is smooth but not constant


def test_crop_or_pad_matches_fastmri_and_pads_back():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, 13, 10)) + 1j * rng.standard_normal((3, 13, 10))
    for size in [(8, 6), (13, 4), (7, 10)]:
        ours = crop_or_pad(img, size)
        ref_re = fastmri_center_crop(torch.from_numpy(img.real), size).numpy()
        ref_im = fastmri_center_crop(torch.from_numpy(img.imag), size).numpy()
        np.testing.assert_array_equal(ours, ref_re + 1j * ref_im)
    padded = crop_or_pad(img, (20, 15))
    assert padded.shape == (3, 20, 15) and padded.dtype == img.dtype
    np.testing.assert_array_equal(crop_or_pad(padded, (13, 10)), img)  # pad then crop = identity
    assert np.abs(padded).sum() == pytest.approx(np.abs(img).sum())
    assert crop_or_pad(img, 5).shape == (3, 5, 5)
    # one axis cropped, the other padded
    mixed = crop_or_pad(img, (9, 14))
    np.testing.assert_array_equal(mixed[:, :, 2:12], img[:, 2:11, :])


def test_p99_normalize():
    rng = np.random.default_rng(1)
    img = (rng.standard_normal((40, 30)) + 1j * rng.standard_normal((40, 30))).astype(np.complex64) * 7
    out, s = p99_normalize(img)
    assert isinstance(s, float) and out.dtype == np.complex64
    assert s == pytest.approx(np.percentile(np.abs(img), 99), rel=1e-6)
    assert np.percentile(np.abs(out), 99) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(out * s, img, rtol=1e-6)
    stack = np.stack([img, 3 * img, np.zeros_like(img)])
    out, s = p99_normalize(stack)
    assert s.shape == (3,) and s.dtype == np.float32
    np.testing.assert_allclose(s[:2], [np.percentile(np.abs(img), 99), 3 * np.percentile(np.abs(img), 99)],
                               rtol=1e-5)
    assert s[2] == 1.0 and np.all(out[2] == 0)  # an all-zero slice keeps scale 1
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        p99_normalize(np.full((4, 4), np.nan))


def test_two_channel_round_trip():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((2, 5, 6)) + 1j * rng.standard_normal((2, 5, 6))
    two = to_two_channel(img)
    assert two.dtype == np.float32 and two.shape == (2, 2, 5, 6)
    np.testing.assert_array_equal(two[:, 0], img.real.astype(np.float32))
    np.testing.assert_array_equal(two[:, 1], img.imag.astype(np.float32))
    back = from_two_channel(two)
    assert back.dtype == np.complex64
    np.testing.assert_array_equal(back, img.astype(np.complex64))
    assert to_two_channel(img[0]).shape == (2, 5, 6)
    with pytest.raises(ValueError):
        to_two_channel(img.real)
    with pytest.raises(ValueError):
        from_two_channel(np.zeros((3, 5, 6)))
