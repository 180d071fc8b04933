"""Atomic writes of small text files (run-directory JSON, markdown, CSV).

A file is written to a temporary name in the same directory, flushed to disk, then
renamed over the target with :func:`os.replace`, so a reader (or a rerun after a kill)
sees either the old file or the complete new one, never half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | PathLike[str], write: Callable[[IO[str]], None], *, newline: str | None = None) -> Path:
    """Call ``write(handle)`` on a temporary text file next to ``path``, then rename it to ``path``.

    Nothing is left behind if ``write`` raises (or the process is interrupted before the rename,
    apart from a ``.<name>.*.tmp`` file that the next write of the same directory does not read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline=newline) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomic(path, lambda fh: fh.write(text))


def write_json_atomic(path: str | PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
