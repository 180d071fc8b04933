"""``python -m metamri.train trainer=ddp``: two CPU processes (gloo) train one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_training_keeps_ranks_in_sync_on_disjoint_batches(tiny_data, tmp_path):
    run, probe = tmp_path / "run", tmp_path / "probe"
    args = [
        f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}", f"paths.cache_dir={tiny_data['cache']}",
        "data.phantom=null", f"data.sources.brain={tiny_data['raw'] / 'brain'}",
        f"data.sources.cardiac={tiny_data['raw'] / 'cardiac'}", "data.num_workers=0",
        "data.preprocess.espirit.backend=sigpy", "data.preprocess.espirit.calib_size=12",
        "data.preprocess.image_size=32", "data.preprocess.cardiac_frames=all", "data.batch_size=2",
        "trainer=ddp", "trainer.devices=2", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
        "logger=csv", "~callbacks.rich_progress_bar",
        "+callbacks.probe._target_=tests.ddp_probe.RankProbe", f"+callbacks.probe.out_dir={probe}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "metamri.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [3, 3]
    # gradients are all-reduced: both processes end with bit-identical weights
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # the distributed sampler gives each rank its own share of the ratio sampler's draws
    for step in range(3):
        assert len(ranks[0]["batches"][step]) == len(ranks[1]["batches"][step]) == 2
    seen = [tuple(map(tuple, b)) for r in ranks for b in r["batches"]]
    assert ranks[0]["batches"] != ranks[1]["batches"]
    assert len(seen) == 6
    # one run directory; rank 0 wrote the checkpoint, and it loads
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
