"""Every ``metamri.evaluate`` run is one W&B run (offline here): config, summary, table, group.

wandb 0.31 writes no ``config.yaml`` / ``wandb-summary.json`` into an offline run's
``files/`` (only media, requirements and logs): everything else is in its transaction log
``run-<id>.wandb``, which :func:`read_offline_run` parses with wandb's own record protobuf
(the log is LevelDB's block format: 32 KiB blocks of records with a 7-byte header).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from metamri.errors import ConfigError
from metamri.evaluate import evaluate
from metamri.evaluation import wandb_log
from metamri.evaluation.wandb_log import (
    TrainRun,
    WandbSettings,
    default_name,
    resolve_group,
    resolve_mode,
    run_config,
    summary_dict,
    train_run_dir,
    train_wandb_id,
)
from metamri.evaluation.wandb_offline import (
    is_complete,
    list_runs,
    read_offline_run,
    wait_until_complete,
)
from metamri.metrics import MetricTable
from tests.test_evaluate import CONF, overrides
from tests.test_reconstructor import make_module, save_checkpoint

METRICS = ("psnr", "ssim", "lpips", "nmse")


# -- helpers ----------------------------------------------------------------------------------


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def fake_train_run(root: Path, group: str = "additive", wandb_ids: tuple[str, ...] = ("abc123",)) -> Path:
    """A training run directory as ``metamri.train`` leaves it: Hydra config, checkpoint, W&B."""
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(
        f"task_name: train\ntags: [{group}]\nwandb_group: {group}\n"
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n"
        "logger:\n  wandb:\n    _target_: lightning.pytorch.loggers.WandbLogger\n"
        "    group: ${wandb_group}\n    save_dir: ${paths.output_dir}\n")
    (root / "checkpoints").mkdir()
    for i, wid in enumerate(wandb_ids):
        (root / "wandb" / f"offline-run-2026010{i + 1}_120000-{wid}").mkdir(parents=True)
    return root


def compose_cfg(*extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("evaluate", overrides=list(extra))


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory) -> Path:
    from metamri.models.tiny_contextmri import write_tiny_contextmri

    return write_tiny_contextmri(tmp_path_factory.mktemp("prior") / "tiny_contextmri")


# -- pure functions ---------------------------------------------------------------------------


def test_run_config_is_flat_with_exact_keys(tmp_path):
    train = fake_train_run(tmp_path / "train" / "additive")
    ckpt = train / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    cfg = compose_cfg(f"prior={ckpt}", "split=val", "guidance_scale=2", "drop_fields=[te,tr]",
                      "ensemble=3", "mask.acceleration=8", "sampler.num_steps=7", "max_slices=5",
                      "items_per_volume=1", "batch_size=2", "base_seed=4", "methods=[zero_filled,diffusion]",
                      "cs.lamda=0.01")
    config = run_config(cfg, SimpleNamespace(effective_acceleration=8.25))
    assert config == {
        "prior": str(ckpt), "train_run": str(train), "train_wandb_id": "abc123",
        "split": "val", "domain": "brain", "methods": "zero_filled,diffusion",
        "guidance_scale": 2.0, "ensemble": 3, "drop_fields": "te,tr", "keep_fields": None,
        "corrupt_missing_rate": 0.0, "corrupt_numeric_scale": 0.0, "corrupt_wrong_fields": "",
        "corrupt_shuffle": False, "corrupt_seed": 0,
        "mask": "Uniform1D", "acceleration": 8, "effective_acceleration": 8.25,
        "center_fraction": 0.08, "min_center_lines": 8,
        "sampler": "DecomposedDiffusionSampler", "num_steps": 7, "eta": 0.8,
        "items_per_volume": 1, "max_slices": 5, "batch_size": 2, "base_seed": 4,
        "coil_maps": "fully_sampled", "scaling": "reference", "cs_lamda": 0.01,
    }
    assert list(config) == list(config.keys())  # insertion order is the documented order
    # every value is a plain scalar: W&B's runs table sorts by each
    assert all(v is None or isinstance(v, (str, int, float)) for v in config.values())

    # a diffusers directory (no training run), DDIM without centre keys, keep_fields set
    prior = tmp_path / "ctx"
    (prior / "unet").mkdir(parents=True)
    cfg = compose_cfg(f"prior={prior}", "sampler=ddim", "mask=random", "keep_fields=[contrast]")
    config = run_config(cfg)
    assert config["train_run"] is None and config["train_wandb_id"] is None
    assert config["effective_acceleration"] is None and config["keep_fields"] == "contrast"
    assert config["sampler"] == "DDIMSampler" and config["eta"] == 0.0
    assert config["mask"] == cfg.mask._target_.rsplit(".", 1)[-1]
    assert config["drop_fields"] == "" and config["methods"] == "zero_filled,cs,diffusion"


def test_summary_dict_has_the_tables_means_and_stds():
    table = MetricTable()
    values = {("a.h5", 0): 30.0, ("a.h5", 1): 32.0, ("b.h5", 0): 35.0}
    for (fname, s), p in values.items():
        table.add(fname, s, None, "diffusion", psnr=p, ssim=p / 40, nmse=1 / p)
        table.add(fname, s, None, "zero_filled", psnr=p - 10, ssim=p / 50, nmse=2 / p, lpips=0.1 * s)
    summary = summary_dict(table)
    expected = table.summary()
    assert set(summary) == {f"{m}/{k}_{s}" for m in ("diffusion", "zero_filled") for k in METRICS
                            for s in ("mean", "std")} | {"n_slices", "n_volumes"}
    for method in ("diffusion", "zero_filled"):
        for metric in METRICS:
            mean, std = expected.loc[(method, metric), ["slice_mean", "slice_std"]]
            for key, want in ((f"{method}/{metric}_mean", mean), (f"{method}/{metric}_std", std)):
                if math.isnan(want):
                    assert summary[key] is None, key  # NaN (no LPIPS) is None, JSON-clean
                else:
                    assert summary[key] == pytest.approx(float(want), rel=1e-12), key
    assert summary["diffusion/psnr_mean"] == pytest.approx(97 / 3)
    assert summary["n_slices"] == 3 and summary["n_volumes"] == 2
    assert summary_dict(MetricTable()) == {"n_slices": 0, "n_volumes": 0}


def test_group_follows_the_training_run(tmp_path):
    train = fake_train_run(tmp_path / "logs" / "train" / "run1", group="concat",
                           wandb_ids=("old111", "new222"))
    ckpt = train / "checkpoints" / "step000100.ckpt"
    assert train_run_dir(ckpt) == train
    run = TrainRun.of_prior(ckpt)
    assert (run.path, run.group, run.wandb_id) == (train, "concat", "new222")  # the newest run
    assert resolve_group(None, ckpt) == "concat"
    assert resolve_group("mine", ckpt) == "mine"  # an explicit group always wins
    # a latest-run link names the current W&B run, whatever the folder times say
    (train / "wandb" / "latest-run").symlink_to(train / "wandb" / "offline-run-20260101_120000-old111")
    assert train_wandb_id(train) == "old111"

    # wandb_group alone (no logger block) is read too; a run without a config: its name
    other = tmp_path / "other"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text("wandb_group: lora\n")
    assert resolve_group(None, other / "checkpoints" / "last.ckpt") == "lora"
    bare = tmp_path / "bare" / "checkpoints"
    bare.mkdir(parents=True)
    assert TrainRun.of_prior(bare / "last.ckpt") == TrainRun(bare.parent, None, None)
    assert resolve_group(None, bare / "last.ckpt") == "bare"

    # a diffusers directory: its name; a loose checkpoint: its stem; no prior: baselines
    prior = tmp_path / "phantom_contextmri"
    (prior / "unet").mkdir(parents=True)
    assert train_run_dir(prior) is None
    assert resolve_group(None, prior) == "phantom_contextmri"
    assert resolve_group("sweep", prior) == "sweep"
    assert resolve_group(None, tmp_path / "model.ckpt") == "model"
    assert resolve_group(None, None) == "baselines"
    assert default_name(tmp_path / "eval" / "x4" / "text") == "x4/text"


def test_mode_precedence_and_bad_modes(tmp_path):
    assert resolve_mode("offline", {"WANDB_MODE": "online"}) == "offline"  # the config wins
    assert resolve_mode(None, {"WANDB_MODE": "online"}) == "online"
    assert resolve_mode(None, {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode(None, {}) == "offline"
    settings = WandbSettings.from_config(compose_cfg(), environ={})
    assert settings == WandbSettings("offline", "metamri", None, None, None, 4)
    assert WandbSettings.from_config(compose_cfg("wandb.enabled=false")) is None
    with pytest.raises(ConfigError, match=r"wandb\.mode = 'cloud'"):
        WandbSettings.from_config(compose_cfg("wandb.mode=cloud"))
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        WandbSettings.from_config(compose_cfg("wandb.mode=null"), environ={"WANDB_MODE": "nope"})
    with pytest.raises(ConfigError, match="wandb.panels"):
        WandbSettings.from_config(compose_cfg("wandb.panels=-1"))
    # evaluate checks the block before any work (no prior is loaded, nothing written)
    with pytest.raises(ConfigError, match=r"wandb\.mode"):
        evaluate(compose_cfg(*overrides(tmp_path, **{"wandb.mode": "sometimes"})))
    assert not (tmp_path / "run").exists()


# -- end to end -------------------------------------------------------------------------------


def test_evaluate_logs_one_offline_run(tmp_path, tiny_prior):
    out = "runs/x4/text"
    value = evaluate(compose_cfg(*overrides(
        tmp_path, out=out, prior=str(tiny_prior), methods="[zero_filled,diffusion]",
        max_slices="3", **{"wandb.mode": "offline", "wandb.panels": "2"})))
    run_dir = tmp_path / out
    table = MetricTable.from_csv(run_dir / "reconstruction" / "test_metrics.csv")
    (wb_dir,) = offline_runs(run_dir)
    # evaluate returns only once W&B's writer has closed the log (it ends with the exit record)
    assert is_complete(wb_dir)
    got = read_offline_run(wb_dir)

    assert got["group"] == "tiny_contextmri" and got["job_type"] == "evaluate"
    assert got["name"] == "x4/text" and got["tags"] == ["evaluate"]
    assert got["project"] == "metamri"
    config = got["config"]
    assert config["prior"] == str(tiny_prior) and config["train_run"] is None
    assert config["guidance_scale"] == 1.0 and config["methods"] == "zero_filled,diffusion"
    assert config["max_slices"] == 3 and config["num_steps"] == 2 and config["mask"] == "Uniform1D"
    assert config["acceleration"] == 4 and config["effective_acceleration"] == pytest.approx(4.0)
    assert config["center_fraction"] == 0.125 and config["min_center_lines"] == 2
    assert set(config) == set(run_config(compose_cfg(*overrides(tmp_path, prior=str(tiny_prior)))))

    summary = got["summary"]
    want = summary_dict(table)
    for key, v in want.items():
        assert key in summary, key
        assert summary[key] == (v if v is None or isinstance(v, int) else pytest.approx(v)), key
    assert summary["n_slices"] == 3 and summary["n_volumes"] == 2
    assert summary["diffusion/psnr_mean"] == pytest.approx(value)
    assert summary["diffusion/lpips_mean"] is None  # lpips=false: not computed

    # the per-slice table: the CSV's columns and rows
    (table_file,) = (wb_dir / "files" / "media" / "table").glob("per_slice_*.table.json")
    logged = json.loads(table_file.read_text())
    assert logged["columns"] == ["fname", "slice", "frame", "method", "psnr", "ssim", "lpips", "nmse"]
    assert [tuple(r[:4]) for r in logged["data"]] == [(r.fname, r.slice, r.frame, r.method) for r in table]
    assert [r[4] for r in logged["data"]] == pytest.approx([r.psnr for r in table])
    # two panels with captions naming the slice
    images = sorted((wb_dir / "files" / "media" / "images").glob("reconstructions_*.png"))
    assert len(images) == 2
    assert summary["reconstructions"]["count"] == 2
    captions = summary["reconstructions"]["captions"]
    assert captions[0].startswith("file_brain_AXFLAIR_0.h5 slice 0: ground truth | zero-filled | diffusion")


def test_multirun_jobs_are_runs_of_one_group(tmp_path):
    """``-m guidance_scale=0,1``: two runs, grouped with the training run of the checkpoint."""
    train = fake_train_run(tmp_path / "train" / "arm", group="additive", wandb_ids=("trn789",))
    ckpt = train / "checkpoints" / "last.ckpt"
    save_checkpoint(make_module(), ckpt)
    sweep = tmp_path / "sweep"
    args = overrides(tmp_path, prior=str(ckpt), methods="[diffusion]", max_slices="1",
                     **{"hydra.sweep.dir": str(sweep), "num_threads": "1"})
    args = [a for a in args if not a.startswith("paths.output_dir=")]  # each job: its own dir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "online"}  # the config's offline wins
    subprocess.run([sys.executable, "-m", "metamri.evaluate", "-m", "guidance_scale=0,1", *args],
                   check=True, env=env, cwd=tmp_path, timeout=600, capture_output=True)
    jobs = [sweep / "0", sweep / "1"]
    runs = [read_offline_run(offline_runs(job)[0]) for job in jobs]
    assert all(len(offline_runs(job)) == 1 for job in jobs)
    assert [r["group"] for r in runs] == ["additive", "additive"]
    assert [r["config"]["guidance_scale"] for r in runs] == [0.0, 1.0]
    assert {r["config"]["train_wandb_id"] for r in runs} == {"trn789"}
    assert {r["config"]["train_run"] for r in runs} == {str(train)}
    assert len({r["id"] for r in runs}) == 2
    assert [r["name"] for r in runs] == [f"{sweep.name}/0", f"{sweep.name}/1"]
    assert all("diffusion/psnr_mean" in r["summary"] for r in runs)
    assert all((job / "reconstruction" / "test_metrics.csv").is_file() for job in jobs)
    # the listing a user reads before `wandb sync`: both runs under the sweep, in job order
    listed = list_runs(sweep)
    assert [r["name"] for _, r in listed] == [r["name"] for r in runs]
    assert listed[0][1]["config"] == runs[0]["config"]


def test_a_failing_wandb_keeps_the_evaluation(tmp_path, monkeypatch, caplog):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network today")

    monkeypatch.setattr(wandb, "init", broken)
    with caplog.at_level(logging.WARNING, logger=wandb_log.__name__):
        value = evaluate(compose_cfg(*overrides(tmp_path, prior="null", methods="[zero_filled]",
                                                max_slices="2")))
    table = MetricTable.from_csv(tmp_path / "run" / "reconstruction" / "test_metrics.csv")
    assert len(table) == 2 and value == pytest.approx(sum(r.psnr for r in table) / 2)
    assert (tmp_path / "run" / "reconstruction" / "test_summary.md").is_file()
    (warning,) = [r for r in caplog.records if r.name == wandb_log.__name__]
    assert warning.levelno == logging.WARNING
    assert "wandb.init" in warning.getMessage() and "no network today" in warning.getMessage()


def test_disabled_wandb_touches_nothing_of_wandb(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` now raises ImportError
    called = []
    monkeypatch.setattr(wandb_log, "log_evaluation", lambda *a, **k: called.append(a))
    with caplog.at_level(logging.WARNING):
        value = evaluate(compose_cfg(*overrides(tmp_path, prior="null", methods="[zero_filled]",
                                                max_slices="1", **{"wandb.enabled": "false"})))
    assert value == value and not called
    assert not (tmp_path / "run" / "wandb").exists()
    assert not [r for r in caplog.records if "W&B" in r.getMessage()]


def test_a_log_cut_before_its_exit_record_is_not_complete(tmp_path, tiny_prior):
    evaluate(compose_cfg(*overrides(tmp_path, out="run", prior=str(tiny_prior), methods="[zero_filled]",
                                    max_slices="1", **{"wandb.mode": "offline", "wandb.panels": "0"})))
    (wb_dir,) = offline_runs(tmp_path / "run")
    (log_file,) = wb_dir.glob("run-*.wandb")
    data = log_file.read_bytes()
    cut = tmp_path / "cut" / wb_dir.name
    cut.mkdir(parents=True)
    # the first 1000 bytes: the header and run records, no exit record (what a reader sees
    # when it looks before W&B's writer has flushed)
    (cut / log_file.name).write_bytes(data[:1000])
    assert is_complete(wb_dir) and not is_complete(cut)
    assert not wait_until_complete(cut, timeout_s=0.2)
    assert not is_complete(tmp_path / "nowhere")
