"""Measured k-space preparation (metamri/preprocess/measured.py): ACS, readout crop, calibration
maps and their check, scaling."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from metamri.errors import DataFileError
from metamri.physics.fft import center_crop, fft2c_np, ifft2c_np
from metamri.preprocess.espirit import EspiritParams, map_agreement
from metamri.preprocess.measured import (
    MIN_ACS_LINES,
    acs_width,
    calibration_maps,
    calibration_params,
    check_maps,
    crop_readout,
    prepare_slice,
)
from metamri.preprocess.mvue import crop_or_pad, mvue


@pytest.fixture(scope="module")
def phantom_slice(tmp_path_factory):
    """One 64 px phantom slice (8 coils, k-space 128 x 64, noisy as the embedded default)."""
    from metamri.data.readers import open_volume
    from metamri.phantom.generate import generate_domain

    root = tmp_path_factory.mktemp("measured")
    generate_domain("brain", root, seed=0, patients=1, volumes_per_patient=1, slices=1)
    (path,) = sorted((root / "multicoil_train").glob("*.h5"))
    (item,) = list(open_volume(path))
    return path, item


def centre_mask(width: int, n: int) -> np.ndarray:
    mask = np.zeros(width, bool)
    mask[width // 2 - n // 2: width // 2 - n // 2 + n] = True
    return mask


def test_acs_width_is_the_centred_block_espirit_crops():
    mask = np.zeros(16, bool)
    mask[6:11] = True  # 5 lines centred on W // 2 = 8
    assert acs_width(mask) == 5
    mask[11] = True  # a line next to the block: contiguous 6, but the centred 6-crop starts at 5
    assert acs_width(mask) == 5
    mask[5] = True
    assert acs_width(mask) == 7
    assert acs_width(np.zeros(8)) == 0 and acs_width(np.ones(8)) == 8


def test_crop_readout_is_the_image_domain_centre_crop():
    rng = np.random.default_rng(0)
    mask = centre_mask(16, 6)
    k = fft2c_np(rng.standard_normal((2, 32, 16)) + 0j) * mask
    cropped = crop_readout(k, 16)
    assert cropped.shape == (2, 16, 16) and np.abs(cropped[..., ~mask]).max() < 1e-6
    np.testing.assert_allclose(ifft2c_np(cropped), center_crop(ifft2c_np(k), (16, 16)), atol=1e-6)


def test_calibration_params_cap_the_block_and_keep_the_kernel_ratio():
    p = EspiritParams(backend="sigpy")
    assert calibration_params(p, 40) == p  # wide ACS: the preprocessing's 24 / 6
    assert (calibration_params(p, 25).calib_size, calibration_params(p, 25).kernel_size) == (24, 6)
    assert [(calibration_params(p, a).calib_size, calibration_params(p, a).kernel_size)
            for a in (8, 12, 16, 20)] == [(8, 3), (12, 3), (16, 4), (20, 5)]


@pytest.mark.parametrize("backend", ["sigpy", "bart"])
def test_calibration_maps_agree_with_fully_sampled_maps_from_the_minimum_acs(phantom_slice, backend):
    if backend == "bart" and shutil.which("bart") is None:
        pytest.skip("needs the BART command line")
    path, item = phantom_slice
    k = np.asarray(item.kspace, np.complex64)
    h, w = item.recon_size
    params = EspiritParams(backend=backend)
    ref = crop_or_pad(params.estimator()(k), (h, w))
    x = crop_or_pad(mvue(k, params.estimator()(k)), (h, w))
    obj = (np.abs(x) > 0.1 * np.percentile(np.abs(x), 99)) & (np.sum(np.abs(ref) ** 2, 0) > 0.5)
    mask = centre_mask(w, MIN_ACS_LINES)
    y = crop_readout(k * mask, h) * mask
    maps, check = calibration_maps(y, mask, params, path=path)
    assert check.ok and check.acs == MIN_ACS_LINES
    assert map_agreement(maps, ref)[obj].mean() > 0.999


def test_too_narrow_acs_and_broken_maps_are_refused_naming_the_file(phantom_slice):
    path, item = phantom_slice
    k = np.asarray(item.kspace, np.complex64)
    h, w = item.recon_size
    mask = centre_mask(w, 5)  # 8% of 64
    y = crop_readout(k * mask, h) * mask
    with pytest.raises(DataFileError) as err:
        calibration_maps(y, mask, EspiritParams(backend="sigpy"), path=path, where="slice 0")
    msg = str(err.value)
    assert path.name in msg and "slice 0" in msg and "ACS 5 lines" in msg and f"at least {MIN_ACS_LINES}" in msg
    # the check on the maps themselves: a 6-wide kernel on an 8-line block collapses the maps
    mask8 = centre_mask(w, 8)
    y8 = crop_readout(k * mask8, h) * mask8
    broken = EspiritParams(backend="sigpy", calib_size=8, kernel_size=6).estimator()(y8)
    bad = check_maps(broken, y8, 8)
    assert not bad.ok
    good = check_maps(calibration_params(EspiritParams(backend="sigpy"), 8).estimator()(y8), y8, 8)
    assert good.ok and good.residual < 0.02 and good.coverage > 0.98
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(broken.shape) + 1j * rng.standard_normal(broken.shape)
    assert not check_maps(noise / np.linalg.norm(noise, axis=0), y8, 8).ok


def test_prepare_slice_scales_to_the_zero_filled_p99_and_keeps_file_units(phantom_slice):
    from metamri.recon.baselines import zero_filled

    path, item = phantom_slice
    h, w = item.recon_size
    mask = centre_mask(w, 8)
    mask[::4] = True
    m = prepare_slice(item.kspace, mask, item.recon_size, EspiritParams(backend="sigpy"), path=path)
    assert m.y.shape == (8, h, w) and m.maps.shape == (8, h, w) and m.y.dtype == np.complex64
    assert np.abs(m.y[..., ~mask]).max() == 0
    zf = crop_or_pad(zero_filled(m.y, m.maps, m.mask), (h, w))
    assert np.percentile(np.abs(zf), 99) == pytest.approx(1.0, rel=1e-4)  # normalised units
    assert m.effective_acceleration == pytest.approx(w / mask.sum())
    # the estimate of the training divisor (p99 of the fully sampled MVUE) is within 25%
    full = crop_or_pad(mvue(crop_readout(np.asarray(item.kspace), h), m.maps), (h, w))
    assert 0.75 < m.scale / np.percentile(np.abs(full), 99) < 1.25
    with pytest.raises(DataFileError, match="mask has shape"):
        prepare_slice(item.kspace, mask[:-1], item.recon_size, path=path)
