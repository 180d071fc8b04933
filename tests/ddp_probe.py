"""A callback the DDP test adds on the command line: each rank writes what it trained on
and a hash of its final weights to ``<out_dir>/rank<r>.json``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


class RankProbe(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[list[list]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append([[f, int(s), int(fr)] for f, s, fr in
                             zip(batch.fname, batch.slice_index, batch.frame, strict=True)])

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            if not hasattr(tensor, "detach"):  # encoder statistics (extra state)
                digest.update(json.dumps(tensor, sort_keys=True, default=str).encode())
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "rank": trainer.global_rank, "world_size": trainer.world_size,
            "global_step": trainer.global_step, "batches": self.batches,
            "weights_sha256": digest.hexdigest(),
        }))
