"""A bounded pool of open HDF5 files: at most ``max_open`` handles per process, LRU.

A dataset over thousands of cached volumes must not hold one open file per
volume: a 5,000-volume split would exceed the usual limit of 1,024 open
descriptors per process (``ulimit -n``), and every DataLoader worker holds its own
handles. :class:`FilePool` keeps the ``max_open`` most recently used files open and
closes the least recently used one before opening another, so a process never
holds more than ``max_open`` HDF5 descriptors, whatever the number of volumes.

Per process, never pickled: a pool pickles to an empty pool with the same bound
(DataLoader workers started by ``spawn``/``forkserver``), and a pool that finds
itself in another process than the one that opened its files (a ``fork``-ed worker)
closes the inherited handles first and starts empty. One pool can be shared by
several datasets (the data module passes one to all of its datasets, so a
``ConcatDataset`` of brain and cardiac stays within one bound per worker).

Cost: with random access over V volumes and a bound N < V, about ``1 - N/V`` of
the reads reopen a file (well under a millisecond for a cache entry on a local
disk, against a few milliseconds to read and collate one 320 x 320 slice). Raise
``data.max_open_files`` towards ``ulimit -n / (num_workers + 1)`` to reopen less.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from os import PathLike
from typing import Any

from metamri.errors import ConfigError

log = logging.getLogger(__name__)


class FilePool:
    """Least-recently-used pool of open read-only files.

    Args:
        max_open: Most files open at once in one process (>= 1).
        opener: ``path -> open file`` (default: :func:`metamri.preprocess.cache.open_entry`);
            the result must have ``close()``.
        key: Configuration key named when ``max_open`` is invalid.

    Raises:
        ConfigError: ``max_open`` is not a positive integer.
    """

    def __init__(
        self,
        max_open: int = 64,
        opener: Callable[[str], Any] | None = None,
        *,
        key: str = "data.max_open_files",
    ) -> None:
        if isinstance(max_open, bool) or not isinstance(max_open, int) or max_open < 1:
            raise ConfigError(key, max_open, "must be an integer >= 1 (open HDF5 files per process)")
        self.max_open = int(max_open)
        self._opener = opener
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._pid = os.getpid()
        #: Files opened by this process (counts reopenings after eviction).
        self.opened = 0

    # -- pickling: handles never travel ----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "_opener": self._opener}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"], state["_opener"])  # type: ignore[misc]

    # -- use -----------------------------------------------------------------------------------
    def get(self, path: str | PathLike[str]) -> Any:
        """The open file at ``path``, opening it (and closing the least recently used
        one when the pool is full) if needed."""
        self._check_process()
        key = os.fspath(path)
        handle = self._files.get(key)
        if handle is not None:
            self._files.move_to_end(key)
            return handle
        while len(self._files) >= self.max_open:
            _, old = self._files.popitem(last=False)
            _close(old)
        handle = self._open(key)
        self._files[key] = handle
        self.opened += 1
        return handle

    def close(self) -> None:
        """Close every file of the pool (it stays usable)."""
        while self._files:
            _, handle = self._files.popitem(last=False)
            _close(handle)

    def __len__(self) -> int:
        """Files open now (in this process)."""
        return len(self._files) if self._pid == os.getpid() else 0

    def __contains__(self, path: object) -> bool:
        return self._pid == os.getpid() and isinstance(path, str | PathLike) and os.fspath(path) in self._files

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __repr__(self) -> str:
        return f"FilePool(max_open={self.max_open}, open={len(self)})"

    # -- internals ------------------------------------------------------------------------------
    def _open(self, path: str) -> Any:
        if self._opener is not None:
            return self._opener(path)
        from metamri.preprocess.cache import open_entry

        return open_entry(path)

    def _check_process(self) -> None:
        pid = os.getpid()
        if pid != self._pid:  # inherited through fork: these descriptors are the parent's copies
            log.debug("FilePool: closing %d handle(s) inherited from process %d", len(self._files), self._pid)
            self.close()
            self._pid = pid
            self.opened = 0


def _close(handle: Any) -> None:
    try:
        handle.close()
    except Exception:  # noqa: BLE001 - a file that fails to close is gone either way
        log.debug("FilePool: closing %r failed", handle, exc_info=True)

