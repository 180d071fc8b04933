"""A callback the preemption tests add on the command line: it records each training batch
(``<out_dir>/batches.jsonl``, ``batches_rank<r>.jsonl`` on the other DDP ranks: the global step
it starts at and its slices), writes the global step reached after each batch to
``<out_dir>/step`` (rank 0) and can sleep after each batch, so that a test can send a signal
while training is known to be mid-run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L


class Pace(L.Callback):
    def __init__(self, out_dir: str, sleep_s: float = 0.0) -> None:
        self.out_dir = Path(out_dir)
        self.sleep_s = float(sleep_s)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
               "slices": [[f, int(s), int(fr)] for f, s, fr in
                          zip(batch.fname, batch.slice_index, batch.frame, strict=True)]}
        name = "batches.jsonl" if trainer.global_rank == 0 else f"batches_rank{trainer.global_rank}.jsonl"
        with open(self.out_dir / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == 0:
            tmp = self.out_dir / "step.tmp"
            tmp.write_text(str(trainer.global_step))
            os.replace(tmp, self.out_dir / "step")
        if self.sleep_s:
            time.sleep(self.sleep_s)
