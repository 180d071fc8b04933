"""An evaluation's finished slices on disk, so that an interrupted run resumes where it stopped.

While :func:`~metamri.evaluation.run.evaluate_split` runs, every process appends one JSON line
per finished batch to its own ``<out_dir>/<stage>_progress.rank<r>.jsonl`` (fsynced: a kill
loses at most the batch in flight): the batch's item indices, its metric rows and the slices'
effective accelerations. The file's first line is the run's *fingerprint*: the settings the
rows depend on (the reconstruction group, the prior file, split, data, counts; not the
process count or batch size).

Run the same evaluation again into the same run directory (``hydra.run.dir=<that run>``) and
the finished batches are read back from every rank's file and skipped: only the rest is
reconstructed, and the final ``<stage>_metrics.csv`` is the uninterrupted run's, byte for byte
(rows are stored with ``repr`` floats, which read back exactly; with the same process count
and batch size the batches are the same, so even float rounding is). With another process count
or batch size the unfinished slices of a batch are reconstructed together (equal up to float
rounding for batch sizes above 1); a finished slice is never redone. Progress of *other* settings is
refused (:class:`~metamri.errors.ConfigError` naming the differing keys), never mixed in.
Once the CSV is written, rank 0 deletes the progress files (:func:`discard`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple
from os import PathLike
from pathlib import Path
from typing import Any

from metamri.errors import ConfigError, DataFileError
from metamri.metrics.table import MetricRow

#: ``<stage>_progress.rank<r>.jsonl`` in the output directory.
SUFFIX = ".jsonl"


def progress_path(directory: str | PathLike[str], stage: str, rank: int) -> Path:
    """The progress file of process ``rank``."""
    return Path(directory) / f"{stage}_progress.rank{int(rank)}{SUFFIX}"


def progress_files(directory: str | PathLike[str], stage: str) -> list[Path]:
    """Every rank's progress file of ``stage`` in ``directory``, sorted."""
    return sorted(Path(directory).glob(f"{stage}_progress.rank*{SUFFIX}"))


def _normal(obj: Any) -> Any:
    """``obj`` as JSON reads it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


class EvaluationProgress:
    """The finished batches of one evaluation (all ranks), and this rank's file to append to.

    Args:
        directory: The evaluation's output directory.
        stage: The split (``test``): names the files.
        fingerprint: The settings the rows depend on (JSON-able).
        rank: This process's rank (its file is the one appended to).

    Raises:
        ConfigError: A progress file in ``directory`` was made with another fingerprint.
    """

    def __init__(self, directory: str | PathLike[str], stage: str, fingerprint: Mapping[str, Any],
                 rank: int = 0) -> None:
        self.directory, self.stage, self.rank = Path(directory), str(stage), int(rank)
        self.fingerprint = _normal(dict(fingerprint))
        self.path = progress_path(self.directory, self.stage, self.rank)
        self.rows: dict[int, list[MetricRow]] = {}
        self.accelerations: dict[int, dict[str, float]] = {}
        for file in progress_files(self.directory, self.stage):
            self._read(file)

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, file: Path) -> None:
        lines = file.read_text().split("\n")
        complete = lines[:-1]  # the last piece has no newline: empty, or a batch cut off mid-write
        if not complete:
            return
        try:
            head = json.loads(complete[0])
        except json.JSONDecodeError:
            raise DataFileError(file, "line 1: not a progress header",
                                hint="remove the file to evaluate from the start") from None
        stored = head.get("fingerprint") if isinstance(head, dict) else None
        if stored != self.fingerprint:
            raise ConfigError("hydra.run.dir", str(self.directory),
                              f"holds the progress of an evaluation with other settings ({file.name}: "
                              f"{_differences(stored, self.fingerprint)} differ)",
                              hint="resume with the same settings, or evaluate into a new run directory "
                                   f"(or delete {file} to start over)")
        for n, line in enumerate(complete[1:], start=2):
            try:
                for item in json.loads(line)["items"]:
                    i = int(item["index"])
                    rows = [MetricRow(*r) for r in item["rows"]]
                    accel = float(item["acceleration"])
                    self.rows[i], self.accelerations[i] = rows, {str(item["slice_id"]): accel}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DataFileError(file, f"line {n}: not a progress record",
                                    hint="remove the file to evaluate from the start") from None

    def done(self, indices: Iterable[int]) -> bool:
        """Whether every item of ``indices`` (a batch) is finished."""
        return all(int(i) in self.rows for i in indices)

    def restored(self, indices: Iterable[int]) -> tuple[list[MetricRow], dict[str, float]]:
        """The stored rows and accelerations of the finished items among ``indices``."""
        rows: list[MetricRow] = []
        accel: dict[str, float] = {}
        for i in indices:
            if int(i) in self.rows:
                rows.extend(self.rows[int(i)])
                accel.update(self.accelerations[int(i)])
        return rows, accel

    # -- writing ---------------------------------------------------------------------------------
    def append(self, items: Sequence[tuple[int, str, Sequence[MetricRow], float]]) -> None:
        """Record one finished batch: ``(index, slice id, its rows, its effective acceleration)`` per item."""
        if self.path.exists():
            _drop_torn_tail(self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_line({"fingerprint": self.fingerprint}, fresh=True)
        self._write_line({"items": [{"index": int(i), "slice_id": str(s), "rows": [list(astuple(r)) for r in rows],
                                     "acceleration": float(a)} for i, s, rows, a in items]})
        for i, s, rows, a in items:
            self.rows[int(i)], self.accelerations[int(i)] = list(rows), {str(s): float(a)}

    def _write_line(self, obj: Any, fresh: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w" if fresh else "a") as fh:
            fh.write(json.dumps(obj) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left without its newline (the next append would join it)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def _differences(stored: Any, current: Mapping[str, Any]) -> str:
    if not isinstance(stored, Mapping):
        return "all settings"
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "") if keys else "the settings"


def discard(directory: str | PathLike[str], stage: str) -> None:
    """Delete every rank's progress file of ``stage`` (the final CSV holds their rows now)."""
    for file in progress_files(directory, stage):
        file.unlink(missing_ok=True)
