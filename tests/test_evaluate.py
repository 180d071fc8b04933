"""``python -m metamri.evaluate`` on a tiny cache: CSV rows, summary, and 1 vs 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from metamri.errors import ConfigError
from metamri.evaluate import evaluate
from metamri.metrics import MetricTable
from tests.test_reconstructor import make_module, save_checkpoint, write_cache

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def overrides(tmp_path: Path, out: str = "run", **extra) -> list[str]:
    cache = tmp_path / "cache"
    if not cache.exists():
        (cache / "brain").mkdir(parents=True)
        write_cache(cache / "brain", n_files=2, n_slices=2)
        save_checkpoint(make_module(), tmp_path / "model.ckpt")
    args = {
        "paths.output_dir": str(tmp_path / out), "paths.log_dir": str(tmp_path / "logs"),
        "data.cache_dir": str(cache), "data.sources.brain": str(tmp_path / "raw"),
        "data.phantom": "null", "data.split_fractions": "{train: 0.0, val: 0.0, test: 1.0}",
        "prepare_data": "false", "prior": str(tmp_path / "model.ckpt"), "sampler.num_steps": "2",
        "mask.center_fraction": "0.125", "mask.min_center_lines": "2",
        "mask.with_replacement": "false", "cs.n_iter": "5",
        "cs.backend": "sigpy", "lpips": "false",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def run(tmp_path: Path, **extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides(tmp_path, **extra))
    return evaluate(cfg)


def test_evaluate_writes_per_slice_csv_and_returns_diffusion_psnr(tmp_path, capsys):
    value = run(tmp_path)
    table = MetricTable.from_csv(tmp_path / "run" / "reconstruction" / "test_metrics.csv")
    keys = [(r.fname, r.slice, r.frame, r.method) for r in table]
    expected = [(f"file_brain_AXFLAIR_{v}.h5", s, None, m) for v in range(2) for s in range(2)
                for m in ("cs", "diffusion", "zero_filled")]
    assert keys == expected
    diff = [r.psnr for r in table if r.method == "diffusion"]
    assert value == pytest.approx(sum(diff) / len(diff))
    zf = [r.psnr for r in table if r.method == "zero_filled"]
    assert all(15 < p < 60 for p in zf), zf  # 4x undersampled: far from exact, far from noise
    summary = (tmp_path / "run" / "reconstruction" / "test_summary.md").read_text()
    assert "| zero_filled | 4 | 2 |" in summary
    # the summary states the mask, its effective acceleration and the coil maps (16 columns,
    # 2 centre lines + 2 distinct uniform lines: exactly 4x)
    mask_line = next(ln for ln in summary.splitlines() if ln.startswith("- mask:"))
    assert "Uniform1D(acceleration=4, center_fraction=0.125, with_replacement=False, min_center_lines=2)" in mask_line
    assert "effective acceleration 4.000x" in mask_line and "mean over 4 slices" in mask_line
    assert "- coil maps: fully_sampled" in summary
    assert "guidance_scale=1" in summary
    printed = capsys.readouterr().out
    assert "zero_filled" in printed and "effective acceleration" in printed


def test_evaluate_errors_name_the_prior(tmp_path):
    with pytest.raises(ConfigError, match="prior"):
        run(tmp_path, prior=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match="prior"):
        run(tmp_path, prior="null")
    # baselines alone need no prior; max_slices keeps the first N slices
    value = run(tmp_path, prior="null", methods="[zero_filled]", max_slices="3", out="zf")
    table = MetricTable.from_csv(tmp_path / "zf" / "reconstruction" / "test_metrics.csv")
    assert len(table) == 3 and value == pytest.approx(sum(r.psnr for r in table) / 3)


def test_ckpt_path_is_a_deprecated_alias_of_prior(tmp_path):
    ckpt = str(tmp_path / "model.ckpt")
    with pytest.warns(DeprecationWarning, match="ckpt_path"):
        value = run(tmp_path, prior="null", ckpt_path=ckpt, max_slices="1", out="alias",
                    methods="[diffusion]")
    assert value == value  # a number (an untrained prior: any PSNR)
    with pytest.raises(ConfigError, match="ckpt_path"):
        run(tmp_path, ckpt_path=str(tmp_path / "other.ckpt"), out="both")


def test_guidance_scale_is_one_knob(tmp_path):
    """The sampler configs carry no guidance_scale: the group's key reaches the sampler."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides(tmp_path, guidance_scale="2.5"))
        assert "guidance_scale" not in cfg.sampler
    from metamri.evaluation.builder import build_reconstructor
    from tests.test_reconstructor import make_module

    rec = build_reconstructor(cfg, make_module())
    assert rec.sampler.guidance_scale == 2.5
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", overrides=[*overrides(tmp_path), "+sampler.guidance_scale=3"])
    with pytest.raises(ConfigError, match="sampler.guidance_scale"):
        build_reconstructor(cfg, make_module())


def test_calibration_coil_maps_are_checked(tmp_path):
    """coil_maps=calibration: ESPIRiT from the simulated measurement's ACS block, checked.

    The synthetic maps of this cache vary on the scale of 4 of its 16 pixels, more than a
    16 x 16 ESPIRiT kernel fit resolves: the map check stops the run naming the file, the slice
    and the ACS width (the phantom, whose maps pass, is in tests/test_measured.py).
    """
    from metamri.errors import DataFileError

    with pytest.raises(DataFileError, match=r"file_brain_AXFLAIR_0\.h5: slice 0: coil maps from the "
                                            r"calibration region \(ACS 8 lines\) are not trustworthy"):
        run(tmp_path, methods="[zero_filled]", coil_maps="calibration", out="cal8",
            **{"mask.min_center_lines": "8", "espirit.backend": "sigpy"})
    with pytest.raises(DataFileError, match=r"AXFLAIR_0.h5: slice 0: the calibration region of the mask \(ACS \d lines, centred\) is too narrow: ESPIRiT needs at least 8"):
        run(tmp_path, methods="[zero_filled]", coil_maps="calibration", out="cal2")


@pytest.mark.slow
def test_ddp_two_processes_give_the_single_process_metrics(tmp_path):
    """``trainer=ddp`` (2 CPU processes, gloo) writes exactly the rows of one process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    for name, trainer in (("one", "cpu"), ("two", "ddp")):
        args = overrides(tmp_path, out=name, **{"trainer": trainer, "hydra.run.dir": str(tmp_path / name),
                                                       "num_threads": "1"})
        subprocess.run([sys.executable, "-m", "metamri.evaluate", *args], check=True, env=env,
                       cwd=tmp_path, timeout=600)
    one = MetricTable.from_csv(tmp_path / "one" / "reconstruction" / "test_metrics.csv").rows
    two = MetricTable.from_csv(tmp_path / "two" / "reconstruction" / "test_metrics.csv").rows
    assert len(one) == 12 and one == two


def test_a_metadata_corruption_is_recorded_and_changes_the_fingerprint(tmp_path, monkeypatch):
    """A tiny evaluate with bad headers: the summary, the W&B config and the resume
    fingerprint carry the corruption; one that is off leaves the fingerprint as it was."""
    import json

    from metamri.evaluation import progress, wandb_log

    monkeypatch.setattr(progress, "discard", lambda *a, **k: None)  # keep the progress files to read
    corrupt = {"corrupt.missing_rate": "0.5", "corrupt.wrong_fields": "[contrast]", "corrupt.shuffle": "true",
               "corrupt.seed": "3"}
    common = {"methods": "[diffusion]", "wandb.enabled": "false", "max_slices": "2"}
    run(tmp_path, out="bad", **common, **corrupt)
    reco = tmp_path / "bad" / "reconstruction"
    summary = (reco / "test_summary.md").read_text()
    assert ("- metadata corruption: missing_rate=0.5, wrong_fields=[contrast], shuffle, seed=3 (drawn per "
            "volume, applied before drop_fields / keep_fields)") in summary
    header = json.loads((reco / "test_progress.rank0.jsonl").read_text().splitlines()[0])
    assert header["fingerprint"]["corrupt"] == {"missing_rate": 0.5, "numeric_scale": 0.0,
                                                "wrong_fields": ["contrast"], "shuffle": True, "seed": 3}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides(tmp_path, out="bad", **common, **corrupt))
    config = wandb_log.run_config(cfg)
    assert {k: v for k, v in config.items() if k.startswith("corrupt_")} == {
        "corrupt_missing_rate": 0.5, "corrupt_numeric_scale": 0.0, "corrupt_wrong_fields": "contrast",
        "corrupt_shuffle": True, "corrupt_seed": 3}
    # another corruption into the same run directory is refused, naming the setting that differs
    with pytest.raises(ConfigError, match=r"other settings .*corrupt"):
        run(tmp_path, out="bad", **common, **{**corrupt, "corrupt.seed": "4"})
    # off: no `corrupt` in the fingerprint (progress written before the setting existed resumes)
    run(tmp_path, out="good", **common)
    header = json.loads((tmp_path / "good" / "reconstruction" / "test_progress.rank0.jsonl").read_text()
                        .splitlines()[0])
    assert "corrupt" not in header["fingerprint"]
    assert "metadata corruption" not in (tmp_path / "good" / "reconstruction" / "test_summary.md").read_text()
