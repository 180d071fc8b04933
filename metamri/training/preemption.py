"""Preemption that saves: SIGTERM / SIGUSR1 write ``last.ckpt`` at the next step boundary and
exit with ``128 + signum`` (143 for SIGTERM, 138 for SIGUSR1 on Linux).

What Lightning (2.6) does by itself (``trainer/connectors/signal_connector.py``): on SIGTERM it
sets ``trainer.received_sigterm`` (and forwards the signal to the DDP processes it launched);
the loops then raise ``SIGTERMException`` (a ``SystemExit`` without a code) after the current
training batch, or between validation batches, so the process exits **0** and writes no
checkpoint unless a callback does (``ModelCheckpoint(save_on_exception=True)`` would, also in
the middle of validation, where this project's module holds its EMA weights in place of the
trained ones). SIGUSR1 has no handler outside SLURM: its default action kills the process.
Under SLURM with ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default when it detects
a SLURM batch job) the requeue signal (SIGUSR1 unless configured otherwise) saves
``<default_root_dir>/hpc_ckpt_<n>.ckpt`` at once (inside the signal handler, not at a step
boundary), runs ``scontrol requeue $SLURM_JOB_ID``, and the job goes on until SLURM stops it;
SIGTERM is "bypassed" (logged, and stops training as above). A requeued job started without
``ckpt_path`` resumes from the newest ``hpc_ckpt_*.ckpt`` in ``default_root_dir``.

:class:`PreemptionCheckpoint` builds on that. While training runs it handles the configured
signals itself; it leaves Lightning's requeue signal to Lightning under SLURM auto-requeue.
A handled signal is only recorded (and forwarded to the DDP processes Lightning launched, as
Lightning does for SIGTERM); at the next optimizer-step boundary (``on_train_batch_end`` after
the step, or the end of a validation run: validation is not cut short) every rank agrees to
stop, ``last.ckpt`` is written (through :class:`~metamri.training.checkpointing.LastCheckpoint`
when there is one, so that callback's state stays consistent), and :class:`Preempted` (a
``SIGTERMException`` with an exit code) ends ``trainer.fit``. Under SLURM auto-requeue the saved
file is also linked as Lightning's next ``hpc_ckpt_<n>.ckpt``, so a requeued job that runs in
the same directory resumes from it by itself. Resume anywhere with
``ckpt_path=<run>/checkpoints/last.ckpt`` (or ``ckpt_path=last`` in the same run directory):
the loop counters, the data order (:mod:`metamri.datamodules.resumable`), the optimizer, the
EMA and the training noise generator continue where they stopped. The previous handlers are put
back when training ends, fails or is torn down.

If a SIGTERM reaches Lightning's handler instead (before training starts or after it ends),
Lightning's ``SIGTERMException`` is given the same exit code, and ``last.ckpt`` is saved if that
happened at a step boundary (not in the middle of validation).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metamri.training.checkpointing import LastCheckpoint

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


def preempted_exit_code(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: ``128 + signum``, what a shell reports for
    a process killed by that signal (143 for SIGTERM, 138 for SIGUSR1 on Linux)."""
    return 128 + int(signum)


#: Exit status after SIGTERM (the checkpoint is saved; resume with ``ckpt_path``).
EXIT_SIGTERM = preempted_exit_code(signal.SIGTERM)


class Preempted(SIGTERMException):
    """Raised at the step boundary after a handled signal, once ``last.ckpt`` is written.

    A ``SystemExit``: uncaught, the process exits with :attr:`code` (``128 + signum`` unless
    configured). ``signum`` is the signal, ``path`` the checkpoint written.
    """

    def __init__(self, signum: int, code: int, path: str | None) -> None:
        super().__init__(code)
        self.signum, self.path = int(signum), path


def _signal(sig: str | int) -> signal.Signals | None:
    if isinstance(sig, str):
        return getattr(signal, sig.upper(), None)  # e.g. no SIGUSR1 on Windows
    return signal.Signals(int(sig))


class PreemptionCheckpoint(L.Callback):
    """Save ``last.ckpt`` and exit non-zero when training receives one of ``signals``.

    Args:
        signals: Signal names (or numbers) to handle, default SIGTERM and SIGUSR1.
        exit_code: Exit status after a handled signal; ``None``: ``128 + signum``.
        dirpath: Where ``last.ckpt`` goes when the trainer has no
            :class:`~metamri.training.checkpointing.LastCheckpoint` (``None``:
            ``<default_root_dir>/checkpoints``); with one, its ``last.ckpt`` is written.
        link_hpc: Under SLURM auto-requeue, also link the checkpoint as Lightning's next
            ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir`` (what a requeued job resumes from).
    """

    def __init__(self, signals: Sequence[str | int] = DEFAULT_SIGNALS, exit_code: int | None = None,
                 dirpath: str | None = None, link_hpc: bool = True) -> None:
        self.signals = [s for s in (_signal(x) for x in signals) if s is not None]
        self.exit_code = None if exit_code is None else int(exit_code)
        self.dirpath = dirpath
        self.link_hpc = bool(link_hpc)
        self.received: int | None = None
        self.saved_path: str | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._handler = self._on_signal  # one bound method: restored only if still ours
        self._trainer: L.Trainer | None = None
        self._step_at_batch_start: int | None = None
        self._slurm_requeue = False

    # ------------------------------------------------------------------ signals
    def code_for(self, signum: int) -> int:
        return self.exit_code if self.exit_code is not None else preempted_exit_code(signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            log.info("received signal %d again; still stopping at the next step boundary", signum)
            return
        self.received = int(signum)
        log.info("received signal %d: saving last.ckpt at the next step boundary, then exiting %d",
                 signum, self.code_for(signum))
        trainer = self._trainer
        launcher = None if trainer is None else trainer.strategy.launcher
        if launcher is not None:  # the DDP processes Lightning started (as Lightning does for SIGTERM)
            try:
                launcher.kill(signum)
            except Exception:  # noqa: BLE001 - a handler must not raise
                log.warning("could not forward signal %d to the other processes", signum, exc_info=True)

    def _install(self, trainer: L.Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: %s cannot handle signals", type(self).__name__)
            return
        env = getattr(trainer._accelerator_connector, "cluster_environment", None)  # what Lightning's connector reads
        self._slurm_requeue = isinstance(env, SLURMEnvironment) and bool(env.auto_requeue)
        leave = {env.requeue_signal} if self._slurm_requeue else set()
        for sig in self.signals:
            if sig in leave or sig in self._previous:
                continue
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) is self._handler:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own handlers (Trainer._run), which are the previous ones
        self._trainer, self.received, self.saved_path = trainer, None, None
        self._install(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self._step_at_batch_start:  # an optimizer step was taken
            self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, Preempted) or not isinstance(exception, SIGTERMException):
            return
        # Lightning's own SIGTERM handling stopped the run: give it the exit code, and save
        # when it stopped at a step boundary (not inside validation or the sanity check).
        exception.code = self.code_for(signal.SIGTERM)
        if trainer.state.fn == TrainerFn.FITTING and not (trainer.validating or trainer.sanity_checking):
            path = self._save(trainer)
            log.info("SIGTERM (Lightning's handler): saved %s at step %d", path, trainer.global_step)
        else:
            log.warning("SIGTERM outside a training step boundary (validation, testing): no checkpoint saved "
                        "(during validation the weights in place may be the EMA's)")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()
        self._trainer = None

    # ------------------------------------------------------------------ stopping
    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        signum = self.received or 0
        if trainer.world_size > 1:  # every rank stops at the same boundary (and knows the signal)
            t = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(t, reduce_op="max").item())
        if not signum:
            return
        path = self._save(trainer)
        self._restore()
        code = self.code_for(signum)
        log.info("signal %d: saved %s at step %d; exiting with %d", signum, path, trainer.global_step, code)
        raise Preempted(signum, code, path)

    def _save(self, trainer: L.Trainer) -> str:
        last = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
        if last is not None:
            last.save_now(trainer)  # False when it saved at this very step already: that file is current
            path = last.last_path
        else:
            root = self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
            path = os.path.join(root, "last.ckpt")
            trainer.save_checkpoint(path)
        self.saved_path = path
        if self._slurm_requeue and self.link_hpc and trainer.is_global_zero:
            self._link_hpc(trainer, path)
        return path

    @staticmethod
    def _link_hpc(trainer: L.Trainer, path: str) -> None:
        """``path`` as Lightning's next ``hpc_ckpt_<n>.ckpt`` (a hard link, else a copy)."""
        import shutil

        try:
            hpc = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            Path(hpc).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, hpc)
            except OSError:
                shutil.copyfile(path, hpc)
            log.info("linked %s as %s (SLURM auto-requeue resumes from it)", path, hpc)
        except Exception:  # noqa: BLE001 - the checkpoint itself is saved
            log.warning("could not link %s as an hpc checkpoint", path, exc_info=True)
