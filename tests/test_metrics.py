"""Metrics: agreement with skimage and fastmri.evaluate, LPIPS availability, the metric table."""

from __future__ import annotations

import logging
import math
import sys
import types

import numpy as np
import pytest
import torch
from fastmri import evaluate as fm_eval
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr

import metamri.metrics.lpips as lpips_mod
from metamri.errors import DataFileError
from metamri.metrics import (
    LPIPSMetric,
    MetricTable,
    nmse,
    psnr,
    psnr_volume,
    ssim,
    ssim_volume,
    to_lpips_input,
)


def _smooth_image(h=96, w=80):
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    img = np.exp(-((yy - 0.5) ** 2 + (xx - 0.45) ** 2) / 0.05)
    img += 0.6 * np.exp(-((yy - 0.3) ** 2 + (xx - 0.7) ** 2) / 0.005)
    img += 0.3 * (np.hypot(yy - 0.6, xx - 0.4) < 0.15)
    return img


def _pairs():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):  # random pairs, float32 as stored by the pipeline
        gt = rng.random((64, 72)).astype(np.float32) * rng.uniform(0.1, 10)
        out.append((gt, (gt + rng.normal(0, 0.1 * gt.max(), gt.shape)).astype(np.float32)))
    gt = _smooth_image()
    for sigma in (0.01, 0.05, 0.2):  # structured image vs noisy copies
        out.append((gt, np.abs(gt + rng.normal(0, sigma, gt.shape))))
    return out


def test_psnr_ssim_nmse_match_skimage_and_fastmri():
    diffs = {"psnr_skimage": 0.0, "psnr_fastmri": 0.0, "psnr_torchmetrics": 0.0,
             "ssim_skimage": 0.0, "ssim_fastmri": 0.0, "nmse_fastmri": 0.0}
    for gt, pred in _pairs():
        g64, p64 = gt.astype(np.float64), pred.astype(np.float64)
        rng_ = g64.max()
        p, s = psnr(gt, pred), ssim(gt, pred)
        diffs["psnr_skimage"] = max(diffs["psnr_skimage"],
                                    abs(p - peak_signal_noise_ratio(g64, p64, data_range=rng_)))
        diffs["psnr_fastmri"] = max(diffs["psnr_fastmri"], abs(p - fm_eval.psnr(g64, p64)))
        tm = float(tm_psnr(torch.from_numpy(p64), torch.from_numpy(g64), data_range=rng_))
        diffs["psnr_torchmetrics"] = max(diffs["psnr_torchmetrics"], abs(p - tm))
        diffs["ssim_skimage"] = max(diffs["ssim_skimage"],
                                    abs(s - structural_similarity(g64, p64, data_range=rng_)))
        diffs["ssim_fastmri"] = max(diffs["ssim_fastmri"],
                                    abs(s - float(fm_eval.ssim(g64[None], p64[None])[0])))
        diffs["nmse_fastmri"] = max(diffs["nmse_fastmri"],
                                    abs(nmse(gt, pred) - float(fm_eval.nmse(g64, p64))))
    print("max abs differences:", diffs)
    assert all(d < 1e-4 for d in diffs.values()), diffs
    assert diffs["psnr_fastmri"] < 1e-10 and diffs["ssim_fastmri"] < 1e-12


def test_volume_metrics_match_fastmri():
    rng = np.random.default_rng(1)
    gt = np.stack([_smooth_image() * a for a in (0.5, 1.0, 2.0)])
    pred = np.abs(gt + rng.normal(0, 0.05, gt.shape))
    assert abs(psnr_volume(gt, pred) - fm_eval.psnr(gt, pred)) < 1e-10
    assert abs(ssim_volume(gt, pred) - float(fm_eval.ssim(gt, pred)[0])) < 1e-12
    # the per-slice convention (slice max) differs from fastMRI's volume max on dim slices
    assert abs(ssim(gt[0], pred[0]) - ssim(gt[0], pred[0], data_range=gt.max())) > 1e-3


def test_closed_forms_and_magnitude_convention():
    gt = _smooth_image()
    c = 0.01
    assert psnr(gt, gt + c) == pytest.approx(20 * math.log10(gt.max() / c), abs=1e-9)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert nmse(gt, 1.1 * gt) == pytest.approx(0.01, rel=1e-9)
    phase = np.exp(1j * 0.7)  # a global phase is no error: metrics use magnitudes
    assert ssim(gt * phase, torch.from_numpy(gt + 0j)) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        psnr(gt, gt[:-1])
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)))


# -- LPIPS ------------------------------------------------------------------------------------


def test_lpips_unavailable_reports_once(monkeypatch, caplog):
    monkeypatch.setattr(lpips_mod, "_WARNED", False)
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError, as here
    with caplog.at_level(logging.WARNING, logger="metamri.metrics.lpips"):
        assert LPIPSMetric.try_create() is None
        assert LPIPSMetric.try_create() is None
    messages = [r.getMessage() for r in caplog.records if r.name == "metamri.metrics.lpips"]
    assert len(messages) == 1
    assert "LPIPS unavailable" in messages[0] and "torchvision" in messages[0]


def test_lpips_unavailable_on_this_install(monkeypatch, caplog):
    """This CPU install has no torchvision, hence no lpips: try_create says so and returns None."""
    monkeypatch.setattr(lpips_mod, "_WARNED", False)
    try:
        import lpips  # noqa: F401
    except Exception:
        with caplog.at_level(logging.WARNING, logger="metamri.metrics.lpips"):
            assert LPIPSMetric.try_create() is None
        assert any("LPIPS unavailable" in r.getMessage() for r in caplog.records)
    else:  # where lpips is installed, a missing weights file is still reported cleanly
        with caplog.at_level(logging.WARNING, logger="metamri.metrics.lpips"):
            assert LPIPSMetric.try_create(weights_path="/nonexistent/alex.pth") is None
        assert any("does not exist" in r.getMessage() for r in caplog.records)


def test_lpips_input_scaling():
    gt = np.array([[0.0, 1.0], [2.0, 4.0]])
    out = to_lpips_input(gt, reference_max=4.0)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    expected = torch.tensor([[-1.0, -0.5], [0.0, 1.0]])
    for ch in range(3):
        torch.testing.assert_close(out[0, ch], expected)
    # complex input uses the magnitude; values above the gt max saturate at +1
    pred = np.array([[0.0, -1.0j], [2.0 * np.exp(0.3j), 8.0]])
    torch.testing.assert_close(to_lpips_input(pred, 4.0)[0, 0], expected)


def test_lpips_metric_with_stand_in_network(monkeypatch):
    """The LPIPSMetric pipeline (scaling, channels, call) with a stand-in for lpips.LPIPS."""
    seen = {}

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose, model_path=None):
            super().__init__()
            seen["net"] = net
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, a, b):
            seen["shape"], seen["range"] = tuple(a.shape), (float(a.min()), float(a.max()))
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    metric = LPIPSMetric.try_create()
    assert metric is not None
    gt = _smooth_image()
    value = metric(gt, 0.9 * gt)
    # |2 gt/m - 2 * 0.9 gt/m| = 0.2 gt / m averaged
    assert value == pytest.approx(float(np.mean(0.2 * gt / gt.max())), rel=1e-5)
    assert seen["net"] == "alex" and seen["shape"] == (1, 3, *gt.shape)
    assert seen["range"][0] >= -1 and seen["range"][1] == pytest.approx(1.0)


# -- the table --------------------------------------------------------------------------------


def _table():
    t = MetricTable()
    t.add("a.h5", 0, None, "zf", psnr=30.0, ssim=0.80, nmse=0.02)
    t.add("a.h5", 1, None, "zf", psnr=32.0, ssim=0.90, nmse=0.01)
    t.add("b.h5", 0, None, "zf", psnr=20.0, ssim=0.60, nmse=0.10)
    t.add("c.mat", 3, 7, "cs", psnr=35.5, ssim=0.95, nmse=0.005, lpips=0.1234567890123)
    return t


def test_summary_over_slices_and_volumes():
    s = _table().summary()
    zf = s.loc[("zf", "psnr")]
    assert zf.n_slices == 3 and zf.n_volumes == 2
    assert zf.slice_mean == pytest.approx((30 + 32 + 20) / 3)
    assert zf.slice_std == pytest.approx(np.std([30, 32, 20], ddof=1))
    assert zf.volume_mean == pytest.approx((31 + 20) / 2)  # mean per volume first
    assert zf.volume_std == pytest.approx(np.std([31, 20], ddof=1))
    no_lpips = s.loc[("zf", "lpips")]
    assert no_lpips.n_slices == 0 and math.isnan(no_lpips.slice_mean)
    assert s.loc[("cs", "lpips")].slice_mean == pytest.approx(0.1234567890123)
    assert math.isnan(s.loc[("cs", "psnr")].slice_std)  # one slice: no spread
    text = _table().format_summary()
    assert "zf psnr: slices 27.33 ± 6.429 (3) | volumes 25.5 ± 7.778 (2)" in text
    assert "zf lpips: not computed" in text
    assert "cs psnr: slices 35.5 ± n/a (1) | volumes 35.5 ± n/a (1)" in text
    assert "nan" not in text


def test_csv_round_trip_is_exact_and_atomic(tmp_path):
    t = _table()
    t.add_images(_smooth_image(), 0.95 * _smooth_image(), fname="d.h5", slice=2, frame=None,
                 method="zf")
    path = tmp_path / "sub" / "metrics.csv"
    t.to_csv(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.csv"]  # no temp files left
    back = MetricTable.from_csv(path)
    assert back.rows == t.rows  # floats written with repr: bit-exact
    t.to_csv(path)  # overwriting works
    assert MetricTable.from_csv(path).rows == t.rows


def test_from_csv_names_bad_field(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("fname,slice,frame,method,psnr,ssim,lpips,nmse\na.h5,0,,zf,abc,0.5,,0.1\n")
    with pytest.raises(DataFileError, match=r"psnr = 'abc'"):
        MetricTable.from_csv(path)
    path.write_text("fname,slice,method\n")
    with pytest.raises(DataFileError, match="frame"):
        MetricTable.from_csv(path)
