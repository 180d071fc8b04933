"""Errors that name the file, the field and the value that was wrong.

Every user-facing failure on bad input raises a subclass of :class:`MetamriError`
so that command-line tools can print it as one line and exit non-zero.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

_MAX_VALUE_REPR = 80


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_REPR else text[: _MAX_VALUE_REPR - 3] + "..."


class MetamriError(Exception):
    """Base class of metamri's user-facing errors."""


class DataFileError(MetamriError, ValueError):
    """A data file (or one field of it) cannot be used.

    The message reads ``<file>: <field> = <value>: <problem>. <hint>`` with the
    parts that are known, e.g.::

        data/file1.h5: ismrmrd_header/sequenceParameters/TR = 'abc': not a number.
    """

    def __init__(
        self,
        path: str | PathLike[str] | None,
        problem: str,
        *,
        field: str | None = None,
        value: Any = ...,
        hint: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.value = value
        self.problem = problem
        self.hint = hint
        super().__init__(_located(self.path, problem, field, value, hint))


def _located(path: str | None, problem: str, field: str | None, value: Any, hint: str | None) -> str:
    """``<file>: <field> = <value>: <problem>. <hint>``, with the parts that are known."""
    where = path if path is not None else "<no file>"
    what = ""
    if field is not None:
        what = f" {field}" + (f" = {_short(value)}" if value is not ... else "")
    msg = f"{where}:{what}: {problem}" if what else f"{where}: {problem}"
    if hint:
        msg += f". {hint}"
    return msg


class CheckpointError(MetamriError, ValueError):
    """A stored prior (checkpoint, exported directory) asks for more than data.

    Raised before anything in the file is run or built: the file holds pickled objects
    other than tensors and plain values, or its stored config names a callable that is
    not one of metamri's components (:mod:`metamri.trust`).  The message reads
    ``<file>: <key> = <value>: <problem>. <hint>``, e.g.::

        last.ckpt: hyper_parameters.encoder.text._target_ = 'os.system': not a component metamri builds. ...
    """

    def __init__(
        self,
        path: str | PathLike[str] | None,
        problem: str,
        *,
        key: str | None = None,
        value: Any = ...,
        hint: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.key = key
        self.value = value
        self.problem = problem
        self.hint = hint
        super().__init__(_located(self.path, problem, key, value, hint))


class MetadataError(MetamriError, ValueError):
    """A metadata value does not fit the schema (wrong type, NaN, unknown field)."""


class ConfigError(MetamriError, ValueError):
    """A configuration value is invalid; the message names the key and the value."""

    def __init__(self, key: str, value: Any, problem: str, hint: str | None = None) -> None:
        msg = f"config {key} = {_short(value)}: {problem}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)
        self.key, self.value = key, value
