"""``metamri.reconstruct`` on raw files agrees with ``metamri.evaluate`` on their cache.

One small phantom volume (64 px as the embedded default, 8 coils, 2 slices) in the real
fastMRI format: ``evaluate`` simulates each slice's measurement from the cached MVUE and scores
against it; ``reconstruct`` reads the raw k-space, undersamples it with the same file-seeded
mask, estimates maps from the calibration region and the scale from the zero-filled image,
and is scored against the file's ``reconstruction_rss``. With evaluate on reconstruct's
protocol (``coil_maps=calibration scaling=measured``) zero-filled and CS agree within 0.5 dB;
with evaluate's defaults (the fully sampled maps, the cache's scale) zero-filled does too, and
CS within 1 dB (the fully sampled maps' tighter support helps CS; measured on the embedded
default in docs/cs_baseline.md). CS (the configured weight, chosen on val) is at least 3 dB
above zero-filled everywhere. The phantom is noiseless: evaluate's measurement ``y = A x_gt``
has no noise by protocol, so measured noise would separate the two by design (the embedded
default's numbers, with noise, are in docs/cs_baseline.md).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from metamri.data.readers import open_volume
from metamri.evaluate import evaluate
from metamri.metrics import MetricTable, psnr
from metamri.reconstruct import reconstruct
from tests.conftest import REPO

METHODS = ("zero_filled", "cs")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from metamri.phantom.generate import generate_domain

    root = tmp_path_factory.mktemp("rve")
    generate_domain("brain", root / "raw", seed=0, patients=1, volumes_per_patient=1, slices=2, snr=None)
    return root


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=overrides)


def _evaluate(raw: Path, name: str, *extra: str) -> dict[str, float]:
    cfg = _compose("evaluate", [
        f"paths.output_dir={raw / name}", f"paths.log_dir={raw / 'logs'}", f"data.cache_dir={raw / 'cache'}",
        f"data.sources.brain={raw / 'raw'}", "data.phantom=null",
        "data.split_fractions={train: 0.0, val: 0.0, test: 1.0}", f"methods=[{','.join(METHODS)}]",
        "lpips=false", *extra,
    ])
    evaluate(cfg)
    table = MetricTable.from_csv(raw / name / "reconstruction" / "test_metrics.csv")
    return {m: float(np.mean([r.psnr for r in table if r.method == m])) for m in METHODS}


def test_reconstruct_and_evaluate_agree_on_the_same_slices_and_masks(raw, capsys):
    ev = _evaluate(raw, "eval_default")
    same = _evaluate(raw, "eval_protocol", "coil_maps=calibration", "scaling=measured")

    files = sorted((raw / "raw" / "multicoil_train").glob("*.h5"))
    rec = {}
    for method in METHODS:
        rcfg = _compose("reconstruct", [f"paths.output_dir={raw / method}", f"out_dir={raw / method}",
                                        f"inputs={files[0]}", f"method={method}"])
        (out,) = reconstruct(rcfg)
        with h5py.File(out, "r") as f:
            images = f["reconstruction"][()]
            assert f.attrs["mask"].startswith("Uniform1D(acceleration=4, center_fraction=0.08, "
                                              "with_replacement=True")
        rec[method] = np.mean([psnr(item.target, image) for item, image in
                               zip(open_volume(files[0]), images, strict=True)])
    with capsys.disabled():
        print("\n" + " | ".join(f"{m}: evaluate {ev[m]:.2f} dB (reconstruct's protocol {same[m]:.2f} dB), "
                                 f"reconstruct {rec[m]:.2f} dB" for m in METHODS))
    for m in METHODS:
        assert abs(same[m] - rec[m]) < 0.5, (m, same[m], rec[m])
    assert abs(ev["zero_filled"] - rec["zero_filled"]) < 0.5 and abs(ev["cs"] - rec["cs"]) < 1.0
    for r in (ev, same, rec):
        assert r["cs"] > r["zero_filled"] + 3.0, r
