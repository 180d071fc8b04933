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
        "prepare_data": "false", "ckpt_path": str(tmp_path / "model.ckpt"), "sampler.num_steps": "2",
        "mask.center_fraction": "0.125", "cs.n_iter": "5", "cs.backend": "sigpy", "lpips": "false",
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
    assert "zero_filled" in capsys.readouterr().out


def test_evaluate_errors_name_the_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path"):
        run(tmp_path, ckpt_path=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match="ckpt_path"):
        run(tmp_path, ckpt_path="null")
    # baselines alone need no checkpoint; max_slices keeps the first N slices
    value = run(tmp_path, ckpt_path="null", methods="[zero_filled]", max_slices="3", out="zf")
    table = MetricTable.from_csv(tmp_path / "zf" / "reconstruction" / "test_metrics.csv")
    assert len(table) == 3 and value == pytest.approx(sum(r.psnr for r in table) / 3)


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
