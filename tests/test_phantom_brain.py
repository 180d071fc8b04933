"""Brain anatomy of the phantom: tissue maps, contrast measured on rendered images, phase.

Contrast is measured as the mean magnitude of rendered (noiseless) images inside
tissue masks (GM fraction > 0.75, WM > 0.9, CSF > 0.9), on three slices through
the lateral ventricles at 128 x 128, not from the signal equations directly.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from metamri.phantom import brain
from metamri.phantom.brain import (
    BRAIN_COMPONENTS,
    SPIN_ECHO_FLOW_FACTOR,
    make_brain_phantom,
    render_brain_volume,
)
from metamri.phantom.protocols import Protocol

B15, B3 = 1.494, 2.89


def protocol(contrast, sequence, tr, te, ti, flip, b0, gadolinium=False):
    return Protocol(contrast, sequence, tr, te, ti, flip, b0, "test", gadolinium=gadolinium)


@pytest.fixture(scope="module")
def phantom():
    return make_brain_phantom(
        np.random.default_rng(0), image_size=128, template_z=(85.0, 95.0, 105.0), max_lesions=0
    )


@pytest.fixture(scope="module")
def masks(phantom):
    out = {"gm": phantom.maps["gm"] > 0.75, "wm": phantom.maps["wm"] > 0.9, "csf": phantom.maps["csf"] > 0.9}
    for k, m in out.items():
        assert m.sum() >= 100, f"too few {k} pixels for a mean: {m.sum()}"
    return out


def tissue_means(phantom, masks, prot):
    mag = np.abs(render_brain_volume(phantom, prot).image)
    return {k: float(mag[m].mean()) for k, m in masks.items()}


def test_templates_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    brain.load_templates.cache_clear()
    tpl = brain.load_templates()
    assert tpl.gm.shape == tpl.wm.shape == tpl.mask.shape == (197, 233, 189)
    assert float(tpl.gm.max()) == pytest.approx(1.0) and 0.0 <= float(tpl.wm.min())
    assert brain.load_templates() is tpl  # cached in-process


def test_maps_are_partial_volume_fractions(phantom):
    total = sum(phantom.maps.values())
    assert set(phantom.maps) == set(BRAIN_COMPONENTS)
    for k, m in phantom.maps.items():
        assert m.dtype == np.float32 and m.shape == (3, 128, 128), k
        assert m.min() >= 0.0 and m.max() <= 1.0 + 1e-6, k
    assert total.max() <= 1.0 + 1e-5
    assert total[:, 0, 0].max() == 0.0  # air in the corner
    # the head is mostly tissue: > 95 % of pixels with any brain are fully accounted for
    brain_px = (phantom.maps["gm"] + phantom.maps["wm"]) > 0.5
    assert (total[brain_px] > 0.99).mean() > 0.95
    # brain tissue volumes in a plausible ratio (MNI: GM ~ WM in these slices)
    gm, wm = phantom.maps["gm"].sum(), phantom.maps["wm"].sum()
    assert 0.5 < gm / wm < 2.0


def test_flair_csf_dark_t2_csf_bright(phantom, masks):
    for b0 in (B15, B3):
        flair = tissue_means(phantom, masks, protocol("AXFLAIR", "TurboSpinEcho", 9000, 90, 2500, 150, b0))
        t2 = tissue_means(phantom, masks, protocol("AXT2", "TurboSpinEcho", 6000, 105, None, 150, b0))
        # measured: FLAIR CSF/WM 0.112 (both fields; partial volume keeps it > 0), T2 CSF/WM 3.27
        assert flair["csf"] / flair["wm"] < 0.3
        assert t2["csf"] / t2["wm"] > 1.5
        assert t2["gm"] > t2["wm"]  # longer T2 and higher PD


@pytest.mark.parametrize(
    "prot",
    [
        ("AXT1", "TurboSpinEcho", 450, 9, None, 145),
        ("AXT1", "Flash", 250, 2.5, None, 70),
    ],
    ids=["TSE", "FLASH"],
)
def test_t1_wm_brighter_than_gm_and_field_dependence(phantom, masks, prot):
    low = tissue_means(phantom, masks, protocol(*prot, B15))
    high = tissue_means(phantom, masks, protocol(*prot, B3))
    for m in (low, high):
        assert m["wm"] > 1.1 * m["gm"]  # measured WM/GM 1.21-1.24
        assert m["csf"] < 0.5 * m["gm"]  # measured CSF/GM 0.38-0.48
    # longer T1 at 3 T: less recovery at the same TR, so darker GM and WM ...
    assert high["gm"] < 0.9 * low["gm"] and high["wm"] < 0.9 * low["wm"]
    # ... (GM 0.273 -> 0.225 TSE, 0.225 -> 0.184 FLASH) and the GM/WM contrast changes
    # (WM/GM 1.211 -> 1.220 TSE, 1.232 -> 1.239 FLASH)
    ratio_low, ratio_high = low["wm"] / low["gm"], high["wm"] / high["gm"]
    assert ratio_high > ratio_low + 0.005


def test_lesions_bright_on_flair_and_enhance_after_gadolinium(phantom):
    flair = render_brain_volume(phantom, protocol("AXFLAIR", "TurboSpinEcho", 9000, 90, 2500, 150, B15))
    assert flair.signals["lesion"] > 1.3 * flair.signals["wm"]
    pre = render_brain_volume(phantom, protocol("AXT1PRE", "Flash", 250, 2.5, None, 70, B15))
    post = render_brain_volume(phantom, protocol("AXT1POST", "Flash", 250, 2.5, None, 70, B15, gadolinium=True))
    assert pre.signals["lesion_enhancing"] == pytest.approx(pre.signals["lesion"])
    assert post.signals["lesion_enhancing"] > 1.5 * pre.signals["lesion_enhancing"]
    assert post.signals["blood"] > 1.5 * pre.signals["blood"]
    assert post.signals["wm"] == pytest.approx(pre.signals["wm"])  # intact blood-brain barrier
    # flow void of sinus blood in spin echoes
    t2 = render_brain_volume(phantom, protocol("AXT2", "TurboSpinEcho", 6000, 105, None, 150, B15))
    from metamri.phantom.tissue import relaxation, spin_echo

    rel = relaxation("blood", B15)
    assert t2.signals["blood"] == pytest.approx(
        SPIN_ECHO_FLOW_FACTOR * spin_echo(rel.pd, rel.t1, rel.t2, tr=6000, te=105)
    )


def test_image_is_sum_of_fractions_times_signals_with_smooth_phase(phantom):
    prot = protocol("AXT2", "TurboSpinEcho", 6000, 105, None, 150, B3)
    vol = render_brain_volume(phantom, prot, np.random.default_rng(5))
    assert vol.image.dtype == np.complex64 and vol.image.shape == (3, 128, 128)
    expected = sum(phantom.maps[k].astype(np.float64) * vol.signals[k] for k in BRAIN_COMPONENTS)
    np.testing.assert_allclose(np.abs(vol.image), expected, rtol=1e-5, atol=1e-7)
    obj = expected > 0.05
    phase = vol.phase.astype(np.float64)
    np.testing.assert_allclose(np.angle(vol.image[obj] * np.exp(-1j * phase[obj])), 0.0, atol=1e-5)
    # smooth and not trivial: neighbouring pixels differ by < 0.3 rad, the phase spans > 1 rad
    assert np.abs(np.diff(phase, axis=-1)).max() < 0.3 and np.abs(np.diff(phase, axis=-2)).max() < 0.3
    assert np.ptp(phase[obj]) > 1.0
    # without an rng the image is real and non-negative for a non-IR sequence
    real = render_brain_volume(phantom, prot).image
    assert np.abs(real.imag).max() == 0.0 and real.real.min() >= 0.0


def test_patients_are_seeded_and_differ():
    kw = dict(slices=2, image_size=32, max_lesions=2)
    a = make_brain_phantom(np.random.default_rng(11), **kw)
    b = make_brain_phantom(np.random.default_rng(11), **kw)
    c = make_brain_phantom(np.random.default_rng(12), **kw)
    for k in a.maps:
        np.testing.assert_array_equal(a.maps[k], b.maps[k])
    assert a.describe() == b.describe()
    assert np.abs(a.maps["wm"] - c.maps["wm"]).max() > 0.3
    assert a.template_z != c.template_z
    assert 25.0 <= min(a.template_z) and max(a.template_z) <= 150.0
    assert a.pose.scale != c.pose.scale


def test_deformation_moves_anatomy_smoothly():
    kw = dict(image_size=32, template_z=(95.0,), max_lesions=0, fov_mm=240.0)
    plain = make_brain_phantom(np.random.default_rng(3), deform=False, **kw)
    warped = make_brain_phantom(np.random.default_rng(3), deform=True, **kw)
    diff = np.abs(plain.maps["wm"] - warped.maps["wm"]).mean()
    assert diff > 0.02  # the pose and the elastic field change the anatomy
    # the brain's area stays within the head-size range drawn (scale 0.92-1.06 per axis)
    area_ratio = (warped.maps["gm"] + warped.maps["wm"]).sum() / (plain.maps["gm"] + plain.maps["wm"]).sum()
    assert 0.75 < area_ratio < 1.2
