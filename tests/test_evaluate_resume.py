"""An interrupted ``metamri.evaluate`` resumes: finished slices are read back, not redone, and the
final CSV is byte for byte the uninterrupted run's (:mod:`metamri.evaluation.progress`)."""

from __future__ import annotations

import json

import pytest

from metamri.errors import ConfigError
from metamri.evaluation import progress
from metamri.evaluation.reconstructor import Reconstructor
from tests.test_evaluate import run

#: 2 files x 2 slices; batch_size 1: 4 batches.
N_SLICES = 4
RECONSTRUCT_BATCH = Reconstructor.reconstruct_batch
EXTRA = {"methods": "[zero_filled,cs,diffusion]", "num_threads": "1", "wandb.enabled": "false"}


class Interrupt(RuntimeError):
    """A crash between two batches (a kill or Ctrl-C stops the run at the same point)."""


def counting(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count :meth:`Reconstructor.reconstruct_batch` calls; raise :class:`Interrupt` on call
    ``stop_after + 1`` (after ``stop_after`` finished batches)."""
    calls: list[int] = []

    def batch(self, samples):
        if stop_after is not None and len(calls) >= stop_after:
            raise Interrupt
        calls.append(len(samples))
        return RECONSTRUCT_BATCH(self, samples)

    monkeypatch.setattr(Reconstructor, "reconstruct_batch", batch)
    return calls


def test_interrupted_evaluation_resumes_without_redoing_slices_and_writes_the_same_csv(tmp_path, monkeypatch):
    full = run(tmp_path, out="full", **EXTRA)
    full_dir = tmp_path / "full" / "reconstruction"
    assert not progress.progress_files(full_dir, "test")  # removed once the CSV is written

    calls = counting(monkeypatch, stop_after=2)
    with pytest.raises(Interrupt):
        run(tmp_path, out="part", **EXTRA)
    part_dir = tmp_path / "part" / "reconstruction"
    assert calls == [1, 1] and not (part_dir / "test_metrics.csv").exists()
    (record,) = progress.progress_files(part_dir, "test")
    lines = record.read_text().splitlines()
    assert len(lines) == 3 and "fingerprint" in json.loads(lines[0])  # header + 2 batches
    with open(record, "a") as fh:  # a kill in the middle of the third batch's line
        fh.write('{"items": [{"index": 2, "slice')

    # other settings never mix with this progress: refused, naming the key that differs
    with pytest.raises(ConfigError, match=r"other settings .*guidance_scale") as err:
        run(tmp_path, out="part", guidance_scale="2.0", **EXTRA)
    assert "hydra.run.dir" in str(err.value)

    calls = counting(monkeypatch)
    resumed = run(tmp_path, out="part", **EXTRA)
    assert calls == [1, 1]  # only the two unfinished slices
    assert resumed == full
    for name in ("test_metrics.csv", "test_summary.md"):
        assert (part_dir / name).read_bytes() == (full_dir / name).read_bytes(), name
    assert not progress.progress_files(part_dir, "test")


def test_progress_of_another_world_size_or_batch_size_is_used_per_slice(tmp_path, monkeypatch):
    """Batches of 2 recorded, resumed with batches of 3: only the unfinished slices of the first
    batch of 3 are reconstructed; the rows agree with a run at batch size 1 up to float rounding."""
    one = run(tmp_path, out="one", **EXTRA)
    calls = counting(monkeypatch, stop_after=1)
    with pytest.raises(Interrupt):
        run(tmp_path, out="b", batch_size="2", **EXTRA)
    assert calls == [2]
    calls = counting(monkeypatch)
    value = run(tmp_path, out="b", batch_size="3", **EXTRA)
    assert calls == [1, 1]  # [0, 1, 2] with 0, 1 finished: slice 2 alone; then [3]
    assert value == pytest.approx(one, rel=1e-5)
