"""ESPIRiT through BART and sigpy: same parameters, same maps, one phase convention."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy.mri

import metamri.preprocess.espirit as espirit
from metamri.errors import ConfigError
from metamri.physics.fft import fft2c_np
from metamri.preprocess.espirit import (
    BartEspirit,
    SigpyEspirit,
    estimate_maps,
    make_estimator,
    map_agreement,
    resolve_backend,
    virtual_coil,
)

COILS, READOUT, PHASE = 8, 128, 64


def synthetic_image(shape, seed):
    """A head-like complex image: an ellipse with inner ellipses and a smooth phase."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    a, b = rng.uniform(0.7, 0.85), rng.uniform(0.7, 0.85)
    mag = 0.7 * (((y / a) ** 2 + (x / b) ** 2) < 1)
    for _ in range(4):
        cy, cx = rng.uniform(-0.4, 0.4, 2)
        ry, rx = rng.uniform(0.08, 0.3, 2)
        mag = mag + rng.uniform(-0.3, 0.3) * ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) < 1)
    phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-1, 1) * y + rng.uniform(-1, 1) * x + 0.5 * x * y
    return mag * np.exp(1j * phase)


def acquisition(seed, noise=0.0):
    """y = F(S x) (+ complex Gaussian noise, std relative to max |y|) with birdcage maps."""
    x = synthetic_image((READOUT, PHASE), seed)
    maps = sigpy.mri.birdcage_maps((COILS, READOUT, PHASE))
    y = fft2c_np(maps * x)
    if noise:
        rng = np.random.default_rng(100 + seed)
        y = y + noise * np.abs(y).max() * (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape))
    return x, maps, y.astype(np.complex64)


@pytest.fixture(scope="module")
def slices():
    """Three slices (one noisy) with maps from both backends."""
    out = []
    for seed, noise in [(0, 0.0), (1, 0.0), (2, 1e-3)]:
        x, true_maps, y = acquisition(seed, noise)
        out.append((x, true_maps, y, estimate_maps(y, backend="bart"), estimate_maps(y, backend="sigpy")))
    return out


def _object(x, *maps):
    """Pixels inside the object (|x| > 10% of max) where every map set is non-zero."""
    inside = np.abs(x) > 0.1 * np.abs(x).max()
    covered = np.logical_and.reduce([np.sum(np.abs(m) ** 2, axis=0) > 0.5 for m in maps])
    return inside, inside & covered


def test_bart_and_sigpy_maps_agree(slices):
    """Per-pixel |<S_bart, S_sigpy>| / (||S_bart|| ||S_sigpy||) > 0.99 inside the object."""
    mins, means = [], []
    for x, _, _, mb, ms in slices:
        inside, mask = _object(x, mb, ms)
        assert mask.sum() >= 0.99 * inside.sum()  # neither backend crops the object away
        agree = map_agreement(mb, ms)[mask]
        mins.append(agree.min())
        means.append(agree.mean())
    print(f"\nBART vs sigpy map agreement inside the object: min {min(mins):.6f}, mean {np.mean(means):.7f}")
    assert min(mins) > 0.99
    assert np.mean(means) > 0.999


def test_same_phase_convention_makes_maps_equal_elementwise(slices):
    """After align_phase the backends agree entry by entry, not only up to a phase."""
    for x, _, y, mb, ms in slices:
        _, mask = _object(x, mb, ms)
        assert np.abs(mb - ms)[:, mask].max() < 0.05  # |S_c| ~ 0.35 for 8 coils
        u = virtual_coil(y, 24)
        for maps in (mb, ms):
            v = np.tensordot(np.conj(u), maps, axes=(0, 0))[mask]
            assert np.abs(v.imag).max() < 1e-5 and v.real.min() > 0


def test_maps_match_true_sensitivities_and_have_unit_norm(slices):
    for x, true_maps, _, mb, ms in slices:
        _, mask = _object(x, mb, ms)
        for maps in (mb, ms):
            assert maps.dtype == np.complex64 and maps.shape == (COILS, READOUT, PHASE)
            np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0)[mask], 1.0, atol=1e-4)
            assert map_agreement(maps, true_maps)[mask].min() > 0.99


def test_cropped_support_is_the_same(slices):
    for _, _, _, mb, ms in slices:
        sb, ss = np.any(mb != 0, axis=0), np.any(ms != 0, axis=0)
        assert (sb & ss).sum() / (sb | ss).sum() > 0.98  # same eigenvalue threshold in both


def test_bart_gets_the_squared_threshold(monkeypatch):
    """BART keeps singular values above sqrt(t) * max: we pass t = threshold**2."""
    seen = {}

    def fake_run_bart(args, inputs, n_outputs=1, **kw):
        seen["args"] = list(args)
        (k,) = inputs
        seen["shape"] = k.shape
        return [np.ones(k.shape, np.complex64)]

    monkeypatch.setattr(espirit, "run_bart", fake_run_bart)
    y = np.ones((4, 40, 30), np.complex64)
    BartEspirit(calib_size=20, threshold=0.03, kernel_size=5, crop=0.9, align=False)(y)
    args = seen["args"]
    assert args[:2] == ["ecalib", "-m1"]
    opts = dict(zip(args[2::2], args[3::2], strict=True))
    assert opts == {"-r": "20", "-k": "5", "-t": repr(0.03**2), "-c": "0.9"}
    assert seen["shape"] == (40, 30, 1, 4)  # BART layout (readout, phase, z, coils)


def test_backend_resolution(monkeypatch):
    assert resolve_backend("auto") == "bart"  # bart is installed on this machine
    assert isinstance(make_estimator("auto"), BartEspirit)
    assert isinstance(make_estimator("sigpy", crop=0.5), SigpyEspirit)
    monkeypatch.setattr(espirit, "bart_available", lambda: False)
    assert resolve_backend("auto") == "sigpy"
    with pytest.raises(ConfigError, match="espirit.backend = 'bart': the BART command"):
        resolve_backend("bart")
    with pytest.raises(ConfigError, match="unknown ESPIRiT backend"):
        resolve_backend("matlab")


def test_bad_parameters_and_inputs():
    with pytest.raises(ConfigError, match="espirit.crop = 1.5"):
        SigpyEspirit(crop=1.5)
    with pytest.raises(ConfigError, match="espirit.threshold"):
        BartEspirit(threshold=0)
    with pytest.raises(ConfigError, match="espirit.kernel_size"):
        BartEspirit(calib_size=8, kernel_size=10)
    with pytest.raises(ValueError, match="complex k-space of shape"):
        estimate_maps(np.ones((4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="smaller than the calibration block"):
        estimate_maps(np.ones((4, 32, 16), np.complex64))
    bad = np.ones((4, 32, 32), np.complex64)
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_maps(bad)


def test_espirit_params_defaults_are_written_once_and_the_config_instantiates_them():
    """conf/espirit/default.yaml is an instantiation of EspiritParams with its own defaults."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from metamri.preprocess.espirit import EspiritParams

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "espirit" / "default.yaml")
    assert instantiate(conf) == EspiritParams() == EspiritParams.from_config(conf)
    assert EspiritParams.from_config(None) == EspiritParams()
    assert EspiritParams.from_config({"backend": "sigpy", "calib_size": 16}) == EspiritParams("sigpy", 16)
    # the estimators take the same defaults
    est = make_estimator("sigpy")
    p = EspiritParams()
    assert (est.calib_size, est.kernel_size, est.threshold, est.crop) == (
        p.calib_size, p.kernel_size, p.threshold, p.crop)
    assert make_estimator(EspiritParams(backend="sigpy", crop=0.5)) == SigpyEspirit(crop=0.5)
    assert EspiritParams(backend="bart").estimator(threads=1) == BartEspirit(threads=1)
    assert p.replace(kernel_size=4).kernel_size == 4 and p.to_dict()["backend"] == "auto"


def test_espirit_params_errors_name_the_key():
    from metamri.preprocess.espirit import EspiritParams

    with pytest.raises(ConfigError, match="espirit.backend = 'matlab'"):
        EspiritParams(backend="matlab")
    with pytest.raises(ConfigError, match="espirit.kernel_size = 30"):
        EspiritParams(kernel_size=30)
    with pytest.raises(ConfigError, match="espirit.calib_size"):
        EspiritParams(calib_size=1)
    with pytest.raises(ConfigError, match="espirit.calib_width = 3: unknown ESPIRiT parameter"):
        EspiritParams.from_config({"calib_width": 3})
