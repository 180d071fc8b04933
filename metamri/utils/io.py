"""Atomic file output: write to a temporary file beside the target, rename it over the target
only when complete (:func:`os.replace`), so a reader or a rerun after a kill sees the old file
or the whole new one, never half of it.

:func:`atomic_output` serves any writer (h5py, MATLAB v7.3, CSV); the two helpers below are the
small-text cases (run-directory JSON and markdown). The preprocessing cache has its own
variant with a fixed ``<name>.tmp`` name, so an interrupted run's leftovers can be found and
removed (:mod:`metamri.preprocess.cache`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any


@contextmanager
def atomic_output(path: str | PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    A failure inside the block removes the temporary file and leaves ``path`` as it was. The
    file gets the permissions a plainly created one would (``0o666`` less the umask), not the
    owner-only ``0o600`` of :func:`tempfile.mkstemp`: outputs are for sharing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """``0o666`` less this process's umask: the mode ``open(path, "w")`` would give a new file."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_fingerprint(path: str | PathLike[str] | None) -> dict[str, Any] | None:
    """``{"path", "size", "mtime_ns"}`` of a file (a directory: its path only; ``None``: ``None``).

    What a result records of an input so that a rerun can tell whether it is still the same.
    """
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    if p.is_file():
        st = p.stat()
        return {"path": str(p.absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"path": str(p.absolute())}
