"""How every command line ends on bad input: one line on stderr, a non-zero exit, nothing left.

Every ``python -m metamri.<tool>`` runs its work inside :func:`user_errors` (argparse tools:
``inspect``, ``export``) or under :func:`hydra_task` (the Hydra apps: ``train``, ``evaluate``,
``reconstruct``, ``preprocess``, ``report``, ``information``, ``phantom``). A
:class:`~metamri.errors.MetamriError` (a bad input file, config value or checkpoint; also
one that Hydra's ``instantiate`` wrapped in its ``InstantiationException``) and OmegaConf's
missing mandatory value (``inputs: ???`` not given) then reach the user as::

    error: config max_slices = 0: must be an integer >= 1 or null. the first N slices ...

one line on stderr, no traceback, exit status 2 (:data:`EXIT_ERROR`). ``METAMRI_DEBUG=1`` in
the environment re-raises instead (Hydra then prints its traceback; add ``HYDRA_FULL_ERROR=1``
for the whole stack).

Hydra creates the run directory (``.hydra/`` and the job's log file) before the task function
runs, so a config error found by the task's validation step would leave an empty run directory
behind. :func:`hydra_task` removes it: on an error, a run directory that holds nothing but what
Hydra itself wrote there (``.hydra/{config,hydra,overrides}.yaml`` and the log file this process
opened) is deleted, with the parent folders it leaves empty below ``paths.log_dir``. A run
directory holding anything else (checkpoints, an evaluation's progress, W&B files) is kept.

A killed job must not leave half-written files either. Python's default action for SIGTERM
(``kill``, ``scancel``, a SLURM time limit) and SIGHUP (a closed terminal) ends the process at
once, without running ``finally`` blocks, so a file being written through
:func:`metamri.utils.io.atomic_output` would stay behind as its ``.<name>.*.tmp``.
:func:`hydra_task` therefore turns either signal into ``SystemExit(128 + signum)`` (143 for
SIGTERM, the status a killed process reports) while the task runs
(:func:`exit_on_termination`): the temporary file is removed, every output already finished
stays, and a rerun (``reconstruct``'s skip of finished files, ``evaluate``'s progress files)
picks up the rest. Training does not use :func:`hydra_task`: it saves ``last.ckpt`` on those
signals instead (:mod:`metamri.training.preemption`). SIGKILL cannot be caught.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from metamri.errors import ConfigError, MetamriError

#: Set to 1 to see the traceback of a user error instead of its one line.
DEBUG_ENV = "METAMRI_DEBUG"
#: Exit status of a run stopped by a user error (bad input, config or checkpoint).
EXIT_ERROR = 2
#: What Hydra writes into ``<run dir>/<hydra.output_subdir>``.
HYDRA_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    """Whether ``METAMRI_DEBUG`` asks for tracebacks (any value but ``""``, ``0``, ``false``, ``no``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: Any) -> str:
    """``str(text)`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def user_error(exc: BaseException) -> MetamriError | None:
    """The :class:`MetamriError` that ``exc`` is, or that caused it (``instantiate`` wraps them).

    OmegaConf's ``MissingMandatoryValue`` (a ``???`` key left unset) is turned into a
    :class:`~metamri.errors.ConfigError` naming the key. Anything else: ``None``.
    """
    from omegaconf.errors import MissingMandatoryValue

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, MetamriError):
            return cur
        if isinstance(cur, MissingMandatoryValue):
            key = getattr(cur, "full_key", None) or "?"
            return ConfigError(str(key), "???", "missing mandatory value",
                               hint=f"give it on the command line: {key}=...")
        cur = cur.__cause__ or cur.__context__
    return None


def print_error(error: BaseException | str) -> None:
    """Write ``error: <message>`` (one line) to stderr."""
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)


@contextmanager
def user_errors(status: int = EXIT_ERROR, cleanup: Callable[[], Any] | None = None) -> Iterator[None]:
    """Turn a user error raised in the block into one line on stderr and ``SystemExit(status)``.

    Args:
        status: The exit status.
        cleanup: Called first on a user error (e.g. :func:`remove_bare_run_dir`).

    Other exceptions pass through unchanged (a bug should show its traceback), and so does
    every exception with ``METAMRI_DEBUG=1``.
    """
    try:
        yield
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        if cleanup is not None:
            cleanup()
        if debug_enabled():
            raise
        print_error(error)
        raise SystemExit(status) from None


def exit_status(call: Callable[[], int | None], status: int = EXIT_ERROR) -> int:
    """``call()``'s exit status (``None``: 0); a user error in it is one line on stderr and ``status``.

    For the in-process form of a command (``metamri.report.__main__.run(cfg)``) and the
    argparse tools (``metamri.export``) that return their status instead of exiting. SIGTERM and
    SIGHUP during ``call`` return ``128 + signum`` after its clean-up (:func:`exit_on_termination`).
    """
    try:
        with exit_on_termination(), user_errors(status):
            return int(call() or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


#: Signals that end a non-training command cleanly (see the module docstring).
TERMINATION_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP")) if s is not None)


def _raise_exit(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
    print(f"stopped by {signal.Signals(signum).name}: the file being written is removed, finished "
          "outputs are kept; rerun the same command to continue", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


@contextmanager
def exit_on_termination(signals: tuple[int, ...] = TERMINATION_SIGNALS) -> Iterator[None]:
    """Inside the block, each of ``signals`` raises ``SystemExit(128 + signum)`` in the main thread.

    So ``finally`` blocks and :func:`metamri.utils.io.atomic_output` clean up before the process
    exits. The previous handlers are restored afterwards. Outside the main thread (where Python
    cannot set handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_exit) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def hydra_task(validate: Callable[[Any], Any] | None = None) -> Callable[[F], F]:
    """Decorate a Hydra task function (put it under ``@hydra.main``): validation, one-line errors.

    ``validate(cfg)`` runs first, before the task does anything; a user error from either
    removes the bare run directory (:func:`remove_bare_run_dir`), prints one line and exits
    with :data:`EXIT_ERROR` (see the module docstring). In a ``-m`` sweep this stops the sweep
    at the failing job. SIGTERM and SIGHUP end the task through ``SystemExit(128 + signum)``
    (:func:`exit_on_termination`), so nothing half-written stays behind.

    Example::

        @hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
        @hydra_task(validate=validate_evaluate)
        def main(cfg): return evaluate(cfg)
    """

    def decorate(task: F) -> F:
        @functools.wraps(task)
        def run(cfg: Any) -> Any:
            with exit_on_termination(), user_errors(cleanup=lambda: remove_bare_run_dir(_log_dir(cfg))):
                if validate is not None:
                    validate(cfg)
                return task(cfg)

        return run  # type: ignore[return-value]

    return decorate


def _log_dir(cfg: Any) -> Path | None:
    try:
        value = cfg.paths.log_dir
    except Exception:  # noqa: BLE001 - a config without paths (report) or an unresolvable one
        return None
    return None if value is None else Path(str(value)).expanduser()


def _hydra_output_dir() -> tuple[Path, str | None] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hydra = HydraConfig.get()
        return Path(hydra.runtime.output_dir), hydra.output_subdir
    except Exception:  # noqa: BLE001 - outside a Hydra run
        return None


def _is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def remove_bare_run_dir(log_dir: Path | None = None) -> Path | None:
    """Delete this Hydra job's run directory if it holds only what Hydra wrote; return it, else None.

    "Only what Hydra wrote": ``<output_subdir>/`` with nothing but :data:`HYDRA_FILES`, and log
    files this process has open (Hydra's job log). The current directory (or one above it) is
    never removed, nor is anything in a DDP child process (``RANK``/``LOCAL_RANK`` set: the run
    directory is the parent's). Parents left empty are removed too, up to (not including)
    ``log_dir``; without ``log_dir`` only the run directory goes.
    """
    found = _hydra_output_dir()
    if found is None or not _is_rank_zero():
        return None
    out, subdir = found
    if not out.is_dir():
        return None
    out = out.resolve()
    cwd = Path.cwd().resolve()
    if cwd == out or cwd.is_relative_to(out):
        return None
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, logging.FileHandler)
                and Path(h.baseFilename).resolve().parent == out]
    logs = {Path(h.baseFilename).resolve() for h in handlers}
    for entry in out.iterdir():
        if subdir and entry.name == subdir and entry.is_dir() and not entry.is_symlink():
            if all(p.is_file() and p.name in HYDRA_FILES for p in entry.iterdir()):
                continue
        if entry.resolve() in logs:
            continue
        return None  # the run made something: keep it all
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    shutil.rmtree(out, ignore_errors=True)
    if log_dir is not None:
        stop = log_dir.resolve()
        parent = out.parent
        while parent != stop and parent.is_relative_to(stop) and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return out
