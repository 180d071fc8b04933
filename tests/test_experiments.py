"""Every experiment in conf/experiment/ composes and runs one training step on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, compose_train

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_the_paper_experiments_exist():
    assert set(EXPERIMENTS) >= {
        "unconditional", "contextmri", "additive", "concat", "lora", "ood_additive", "ood_low_noise",
    }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run(name, tiny_data, tmp_path: Path):
    from metamri.train import train

    cfg = compose_train([f"+experiment={name}", "debug=fast"], tmp_path, tiny_data)
    assert name in cfg.tags and cfg.wandb_group == name
    train(cfg)
    assert (tmp_path / "run" / "splits.json").exists()


def test_train_default_runs_and_checkpoints(tiny_data, tmp_path: Path):
    """The default (OOD + additive) trains two steps and saves a last checkpoint."""
    from omegaconf import open_dict

    from metamri.train import train

    cfg = compose_train(["trainer.max_steps=2"], tmp_path, tiny_data)
    with open_dict(cfg):
        cfg.callbacks = {"ckpt": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                  "dirpath": str(tmp_path / "run" / "checkpoints"), "save_last": True}}
    train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
