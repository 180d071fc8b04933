"""The procedural beating heart: motion, geometry of the views and bSSFP contrast."""

from __future__ import annotations

import numpy as np
import pytest

from metamri.phantom.cardiac import (
    CARDIAC_COMPONENTS,
    cardiac_maps,
    contraction,
    make_cardiac_phantom,
    render_cine,
)
from metamri.phantom.protocols import Protocol

SHAPE = (96, 128)


def cine_protocol(flip, b0=1.5, tr=3.6, te=1.6):
    return Protocol("CINE", "TrueFISP", tr, te, None, flip, b0, "test")


@pytest.fixture(scope="module")
def normal():
    return make_cardiac_phantom(np.random.default_rng(0), pathology="normal")


def test_contraction_waveform():
    tau_es = 0.35
    tau = np.linspace(0, 1, 1001)
    c = contraction(tau, tau_es)
    assert c.min() >= 0.0 and c.max() <= 1.0 + 1e-12
    assert contraction(0.0, tau_es) == pytest.approx(0.0)
    assert contraction(tau_es, tau_es) == pytest.approx(1.0)
    assert contraction(1.0, tau_es) == pytest.approx(0.0)  # periodic
    assert tau[np.argmax(c)] == pytest.approx(tau_es, abs=1e-3)
    assert np.abs(np.diff(c)).max() < 0.02  # continuous at the phase boundaries


def test_apical_short_axis_motion(normal):
    """Apex slice (no RV, no papillary muscles): cavity area follows (1 - fs c)^2, wall area is conserved."""
    frames = 12
    maps = cardiac_maps(normal, "sax", frames=frames, slices=6, shape=SHAPE)
    lv = maps["lv_blood"][:, -1].sum(axis=(1, 2))
    myo = maps["myocardium"][:, -1].sum(axis=(1, 2))
    assert maps["rv_blood"][:, -1].sum() == 0.0  # the RV ends before the apex
    c = contraction(np.arange(frames) / frames, normal.tau_es)
    np.testing.assert_allclose(lv / lv[0], (1 - normal.fs * c) ** 2, atol=0.03)
    np.testing.assert_allclose(myo / myo[0], 1.0, atol=0.03)  # mass conservation -> thickening
    # the whole-ventricle cavity shrinks: an area ejection fraction in the normal range
    total = maps["lv_blood"].sum(axis=(1, 2, 3))
    ef = 1 - total.min() / total[0]
    assert 0.45 < ef < 0.7, ef


def test_pathologies_change_function():
    def ef(ph):
        lv = cardiac_maps(ph, "sax", frames=8, slices=4, shape=(48, 64))["lv_blood"].sum(axis=(1, 2, 3))
        return 1 - lv.min() / lv[0]

    rng = np.random.default_rng(1)
    normal, dcm, hcm = (make_cardiac_phantom(rng, pathology=p) for p in ("normal", "DCM", "HCM"))
    assert ef(dcm) < 0.35 < ef(normal)
    assert dcm.lv_radius > normal.lv_radius and hcm.lv_wall > normal.lv_wall
    with pytest.raises(ValueError, match="unknown pathology"):
        make_cardiac_phantom(rng, pathology="MI")


def test_short_axis_base_to_apex(normal):
    maps = cardiac_maps(normal, "sax", frames=1, slices=6, shape=SHAPE)
    lv = maps["lv_blood"][0].sum(axis=(1, 2))
    rv = maps["rv_blood"][0].sum(axis=(1, 2))
    liver = maps["liver"][0].sum(axis=(1, 2))
    assert np.all(np.diff(lv) < 0)  # the LV narrows towards the apex
    assert rv[0] > 0.5 * lv[0] and rv[-1] == 0
    assert liver[0] == 0 and liver[-1] > 0
    total = sum(maps.values())
    assert total.max() <= 1.0 + 1e-6 and total[0, :, 0, 0].max() == 0.0


def test_long_axis_views(normal):
    maps = cardiac_maps(normal, "lax", frames=2, slices=3, shape=SHAPE)
    rv, vessel, atria = (maps[k][0].sum(axis=(1, 2)) for k in ("rv_blood", "vessel_blood", "atrial_blood"))
    assert rv[0] > 0 and rv[1] == 0 and rv[2] == 0  # 4CH, 2CH, 3CH
    assert vessel[2] > vessel[1]  # 3CH shows the aortic outflow
    assert np.all(atria > 0)
    lv = maps["lv_blood"][0, 1]
    rows, cols = np.nonzero(lv > 0.5)
    pts = np.stack([rows, cols], axis=1).astype(float)
    eig = np.linalg.eigvalsh(np.cov(pts.T))
    assert np.sqrt(eig[1] / eig[0]) > 1.4  # elongated LV
    with pytest.raises(ValueError, match="lax views"):
        cardiac_maps(normal, "lax", frames=1, slices=4, shape=SHAPE)
    with pytest.raises(ValueError, match="unknown cardiac view"):
        cardiac_maps(normal, "axial", frames=1, slices=1, shape=SHAPE)


@pytest.mark.parametrize("b0", [1.5, 3.0])
def test_bssfp_myocardium_blood_contrast_depends_on_flip(normal, b0):
    ratios = {}
    for flip in (15, 60):
        vol = render_cine(normal, "sax", cine_protocol(flip, b0), frames=2, slices=3, shape=SHAPE)
        mag = np.abs(vol.image)
        myo = mag[vol.maps["myocardium"] > 0.9].mean()
        blood = mag[vol.maps["lv_blood"] > 0.9].mean()
        assert blood > myo  # bright blood
        ratios[flip] = myo / blood
    # measured myocardium/blood: 1.5 T 0.657 (15 deg) vs 0.260 (60 deg); 3 T 0.653 vs 0.292
    assert ratios[15] > 0.55 and ratios[60] < 0.35
    assert ratios[15] - ratios[60] > 0.3


def test_render_matches_maps_and_is_seeded(normal):
    prot = cine_protocol(45)
    vol = render_cine(normal, "sax", prot, np.random.default_rng(3), frames=3, slices=2, shape=(48, 64))
    assert vol.image.shape == (3, 2, 48, 64) and vol.image.dtype == np.complex64
    expected = sum(vol.maps[k].astype(np.float64) * vol.signals[k] for k in CARDIAC_COMPONENTS)
    np.testing.assert_allclose(np.abs(vol.image), expected, rtol=1e-5, atol=1e-7)
    # one phase map per slice, constant over frames
    ph = np.angle(vol.image * np.exp(-1j * vol.phase[None]))
    assert np.abs(ph[expected > 0.02]).max() < 1e-5
    again = render_cine(normal, "sax", prot, np.random.default_rng(3), frames=3, slices=2, shape=(48, 64))
    np.testing.assert_array_equal(vol.image, again.image)
    a = make_cardiac_phantom(np.random.default_rng(9))
    assert a == make_cardiac_phantom(np.random.default_rng(9))
    assert a != make_cardiac_phantom(np.random.default_rng(10))
