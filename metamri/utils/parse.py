"""Parse the text of a table cell into a value, or fail naming the file, column and cell."""

from __future__ import annotations

import math
from os import PathLike

from metamri.errors import DataFileError


def finite_number(text: str, path: str | PathLike[str] | None, column: str, where: str = "") -> float:
    """``float(text)``, finite; else a :class:`DataFileError` naming ``path``, ``column`` and ``text``.

    Args:
        text: The cell as read.
        path: The table's file.
        column: The column (named in the error as the field).
        where: A prefix of the problem, e.g. ``"line 7: "``.
    """
    try:
        value = float(text)
    except ValueError:
        raise DataFileError(path, f"{where}not a number", field=column, value=text) from None
    if not math.isfinite(value):
        raise DataFileError(path, f"{where}not a finite number", field=column, value=text)
    return value
