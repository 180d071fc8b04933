"""Checkpoints that survive interruptions: ``last.ckpt`` on a clock, written atomically.

:class:`LastCheckpoint` keeps ``<dirpath>/last.ckpt`` current every N optimizer steps and/or
every T minutes and at the end of training, independent of validation. (Lightning's
``ModelCheckpoint`` allows one of its step / time / epoch triggers at a time, and one that
monitors ``val/loss`` holds its step-based saves, ``last`` included, until the first
validation has logged the metric; its ``save_last`` at the end of training only fires when
nothing was saved before, so ``last.ckpt`` could lag the final step.) It is the one writer of
``last.ckpt`` in ``conf/callbacks/default.yaml``; the preemption callback saves through it.

:class:`AtomicCheckpointIO` writes every checkpoint of the trainer to a temporary file beside
the target, fsyncs it and renames it over the target, so a kill (SIGKILL after a grace
period, a node failure) leaves the previous checkpoint or the new one, never a truncated file.
Lightning's own ``TorchCheckpointIO`` (``_atomic_save`` in ``lightning.fabric.utilities.cloud_io``)
serialises to memory and writes through an fsspec transaction: fsspec's local file writes a
temporary file made by ``tempfile.mkstemp()`` (in ``$TMPDIR``, ``/tmp``), then
``shutil.move``\\ s it onto the target. That is an atomic rename only when ``$TMPDIR`` is on
the checkpoint's filesystem; on a cluster (node-local ``/tmp``, checkpoints on a network
filesystem) the move falls back to copying into the target path, and a kill during the copy
leaves a truncated ``last.ckpt`` with the previous one already overwritten. Nothing is
fsynced either. Remote (non-local) paths keep Lightning's transaction.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from metamri.utils.io import atomic_output

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are a temporary file + fsync + rename.

    Give it to the trainer as a plugin (``conf/trainer/default.yaml``: ``plugins``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomic(checkpoint, path)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` through a temporary file in ``path``'s directory, fsynced and
    renamed onto ``path`` (a failure leaves ``path`` as it was and removes the temporary)."""
    path = Path(path)
    with atomic_output(path, suffix=".tmp") as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    try:  # the rename itself reaches the disk with the directory
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def repair_epoch_end_restart(trainer: L.Trainer) -> bool:
    """Undo Lightning's double count of the epoch a checkpoint saved at its end (in an
    ``on_train_epoch_end`` hook: ``ModelCheckpoint``'s default save after an epoch-end
    validation, the ``step<N>.ckpt`` of the best ``val/loss``) resumes from.

    Lightning 2.6 restores such a checkpoint as "restarted on epoch end": it runs that epoch's
    end again and increments ``fit_loop.epoch_progress.processed`` a second time, so from then
    on every epoch ``e`` calls ``sampler.set_epoch(e + 1)`` (the data order of another epoch
    than the uninterrupted run's) and ``max_epochs`` is reached one epoch early. Called in
    ``on_train_start`` (after Lightning's ``fit_loop.reset`` decided the restart stage, before the
    epoch's ``set_epoch``), this takes the first increment back; ``True`` when it did.
    """
    loop = trainer.fit_loop
    if not loop.restarted_on_epoch_end:
        return False
    loop.epoch_progress.current.processed -= 1
    loop.epoch_progress.total.processed -= 1
    return True


class LastCheckpoint(ModelCheckpoint):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` steps and/or every
    ``every_n_minutes`` of training, and at the end of training; never waits for validation.

    Saves happen at optimizer-step boundaries only (under gradient accumulation, after the
    stepping micro-batch), so a resume from ``last.ckpt`` continues the run exactly.

    Args:
        dirpath: Directory of ``last.ckpt`` (``None``: Lightning's default).
        every_n_train_steps: Save when ``global_step`` is a multiple of this (``None``/0: off).
        every_n_minutes: Save when this many minutes passed since the last save (``None``: off).
        save_on_train_end: Save the final state (also at a step that is no multiple of
            ``every_n_train_steps``): at the boundary of step ``max_steps``, else (``max_epochs``,
            early stopping) when training ends.
        save_weights_only: As ``ModelCheckpoint`` (a weights-only file cannot resume training).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int | None = None,
        every_n_minutes: float | None = None,
        save_on_train_end: bool = True,
        save_weights_only: bool = False,
        verbose: bool = False,
    ) -> None:
        # No trigger of ModelCheckpoint's own (its triggers exclude each other and defer to
        # validation when a metric is monitored): this class decides when to save.
        super().__init__(dirpath=dirpath, monitor=None, save_last=True, save_top_k=0,
                         every_n_train_steps=0, every_n_epochs=0, save_weights_only=save_weights_only,
                         verbose=verbose, enable_version_counter=False)  # always last.ckpt itself
        if every_n_train_steps is not None and int(every_n_train_steps) < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        if every_n_minutes is not None and float(every_n_minutes) <= 0:
            raise ValueError(f"every_n_minutes must be > 0, got {every_n_minutes}")
        self.every_steps = int(every_n_train_steps or 0)
        self.interval = None if every_n_minutes is None else timedelta(minutes=float(every_n_minutes))
        self.save_on_train_end = bool(save_on_train_end)
        self._saved_at = time.monotonic()
        self._step_at_batch_start: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_train_steps=self.every_steps, interval=str(self.interval))

    @property
    def last_path(self) -> str:
        """Where :meth:`save_now` writes (``<dirpath>/last.ckpt``)."""
        return self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_at = time.monotonic()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step_at_batch_start:  # accumulating: no step boundary
            return
        due = self.every_steps > 0 and trainer.global_step % self.every_steps == 0
        # the last step: saved here, at its boundary, rather than in on_train_end, where Lightning
        # has already closed the epoch (a run resumed from it to more steps would start a new one)
        due = due or (self.save_on_train_end and 0 < trainer.max_steps <= trainer.global_step)
        if self.interval is not None:
            late = time.monotonic() - self._saved_at >= self.interval.total_seconds()
            due = due or bool(trainer.strategy.broadcast(late))  # one decision for all ranks
        if due:
            self.save_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_on_train_end:
            self.save_now(trainer)

    def save_now(self, trainer: L.Trainer) -> bool:
        """Write ``last.ckpt`` now (every rank calls it); ``False`` when there is nothing new
        (no step since the last save, sanity check, ``fast_dev_run``, not fitting)."""
        if self._should_skip_saving_checkpoint(trainer):
            return False
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._saved_at = time.monotonic()
        if self.verbose:
            log.info("saved %s at step %d", self.last_model_path, trainer.global_step)
        return True
