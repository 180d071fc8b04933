"""Checks of single config values: each returns the value as its type or raises a ConfigError.

The :class:`~metamri.errors.ConfigError` names the key and the value as given, and says what
is accepted, e.g. ``config max_slices = 0: must be an integer >= 1 or null``. Hydra hands
command-line values over as ints, floats, bools or strings (``guidance_scale=abc`` is the
string ``'abc'``); a bool is never taken for a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from metamri.errors import ConfigError
from metamri.utils.hydra import plain


def integer(value: Any, key: str, *, minimum: int | None = None, allow_none: bool = False,
            hint: str | None = None) -> int | None:
    """``value`` as an int (an integral float is taken), at least ``minimum``; ``None`` if allowed."""
    if value is None:
        if allow_none:
            return None
        raise ConfigError(key, value, "must be an integer" + _at_least(minimum), hint=hint)
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok or (isinstance(value, float) and value.is_integer())
    if not ok or (minimum is not None and value < minimum):
        raise ConfigError(key, value, "must be an integer" + _at_least(minimum)
                          + (" or null" if allow_none else ""), hint=hint)
    return int(value)


def _at_least(minimum: int | float | None) -> str:
    return "" if minimum is None else f" >= {minimum}"


def number(value: Any, key: str, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None, allow_none: bool = False,
           hint: str | None = None) -> float | None:
    """``value`` as a finite float within the bounds (``minimum <= v <= maximum``, ``above < v < below``)."""
    if value is None and allow_none:
        return None
    bounds = ", ".join(b for b in (
        f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
        f"<= {maximum}" if maximum is not None else "", f"< {below}" if below is not None else "") if b)
    what = "must be a finite number" + (f" {bounds}" if bounds else "") + (" or null" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, value, what, hint=hint)
    v = float(value)
    if ((minimum is not None and v < minimum) or (maximum is not None and v > maximum)
            or (above is not None and v <= above) or (below is not None and v >= below)):
        raise ConfigError(key, value, what, hint=hint)
    return v


def boolean(value: Any, key: str) -> bool:
    """``value`` if it is ``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "must be true or false")
    return value


def choice(value: Any, key: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ConfigError(key, value, f"choose one of {options}")
    return value


def text(value: Any, key: str, *, allow_none: bool = False) -> str | None:
    """``value`` if it is a non-empty string (``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(key, value, "must be a non-empty string" + (" or null" if allow_none else ""))
    return value


def string_list(value: Any, key: str, *, allow_none: bool = False) -> list[str] | None:
    """``value`` as a list of strings (a list of names)."""
    value = plain(value)
    if value is None and allow_none:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "must be a list of names" + (" or null" if allow_none else ""))
    return list(value)


def existing_path(value: Any, key: str, *, kind: str = "any", hint: str | None = None) -> Path:
    """``value`` as a path that exists: ``kind`` ``"file"``, ``"dir"`` or ``"any"``."""
    if not isinstance(value, str | PathLike) or not str(value):
        raise ConfigError(key, value, "must be a path", hint=hint)
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(key, str(value), "no such file or directory", hint=hint)
    if kind == "file" and not path.is_file():
        raise ConfigError(key, str(value), "is a directory, not a file" if path.is_dir() else "is not a file",
                          hint=hint)
    if kind == "dir" and not path.is_dir():
        raise ConfigError(key, str(value), "is not a directory", hint=hint)
    return path


def int_pair(value: Any, key: str, *, minimum: Sequence[int] = (0, 0), what: str = "[a, b]",
             hint: str | None = None) -> tuple[int, int]:
    """``value`` as a pair of integers, each at least its ``minimum``."""
    value = plain(value)
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or any(v < m for v, m in zip(value, minimum, strict=True)):
        raise ConfigError(key, value, f"must be {what}: two integers, each >= {list(minimum)}", hint=hint)
    return int(value[0]), int(value[1])
