"""Shared fixtures: a tiny phantom dataset, preprocessed once per test session.

The phantom is written in the real formats and goes through the real
preprocessing (ESPIRiT, MVUE, p99), so tests that use it exercise the same path
as a user's data.  It is small (32 px, a handful of patients) to keep CPU time low.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TINY_PHANTOM = {
    "brain": {"patients": 6, "volumes_per_patient": 1, "slices": 3, "coils": 4, "image_size": 32},
    "cardiac": {"patients": 3, "frames": 2, "sax_slices": 2, "lax_slices": 1, "coils": 4, "image_size": 32},
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """``{"raw": dir with brain/ and cardiac/, "cache": preprocessed cache root}``."""
    from metamri.phantom.generate import generate_domain
    from metamri.preprocess.pipeline import preprocess_directory

    root = tmp_path_factory.mktemp("tiny_data")
    for domain, overrides in TINY_PHANTOM.items():
        generate_domain(domain, root / "raw" / domain, seed=0, **overrides)
        preprocess_directory(
            root / "raw" / domain, root / "cache", espirit={"backend": "sigpy", "calib_size": 12},
            image_size=32, cardiac_frames="all", progress=False,
        )
    return {"raw": root / "raw", "cache": root / "cache"}


def compose_train(overrides: list[str], root: Path, data: dict[str, Path]):
    """Compose the real ``conf/train.yaml`` for a CPU test run in ``root``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from metamri.utils.hydra import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(data["cache"])
        cfg.data.phantom = None
        cfg.data.num_workers = 0
        if cfg.data.sources.get("brain") is not None:
            cfg.data.sources.brain = str(data["raw"] / "brain")
        if cfg.data.sources.get("cardiac") is not None:
            cfg.data.sources.cardiac = str(data["raw"] / "cardiac")
        cfg.data.preprocess.espirit.backend = "sigpy"
        cfg.data.preprocess.espirit.calib_size = 12
        cfg.data.preprocess.image_size = 32
        cfg.data.preprocess.cardiac_frames = "all"
        cfg.trainer.max_steps = 2
        cfg.trainer.enable_progress_bar = False
        cfg.logger = {"csv": cfg.logger.get("csv") or {"_target_": "lightning.pytorch.loggers.CSVLogger",
                                                      "save_dir": str(root / "run"), "name": "csv"}}
        cfg.logger.csv.save_dir = str(root / "run")
        cfg.callbacks = {}
    return cfg


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: on tiny tensors the thread pool only adds overhead
    (20x on a loaded 2-core box)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
