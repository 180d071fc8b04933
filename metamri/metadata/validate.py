"""The one check of a metadata value against its field's kind and valid range.

Every value of a :class:`~metamri.metadata.record.Metadata` record goes through
:func:`check_value` (the record's constructor calls it), whatever the value came from:
a file's header, a table cell (first parsed by :func:`parse_text`), a config or JSON.
The readers do not check values themselves: :func:`metamri.metadata.extract.read_values`
turns a :class:`FieldValueError` into a :class:`~metamri.errors.DataFileError` that
names the file, where in it the value is, and the value as stored.

Rules, by the field's :class:`~metamri.metadata.schema.FieldKind`:

* numeric: a real number (not a bool), finite, inside ``FieldSpec.valid_range`` (in the
  field's units, bounds included); stored as ``float``;
* categorical: a string, stripped; an empty string is missing;
* multi-label: a list or tuple of strings (a string is split at ``;``), each stripped,
  empty labels dropped, order and repeats kept; no label is missing.

``None`` is always missing and always valid.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from metamri.errors import MetadataError

if TYPE_CHECKING:
    from metamri.metadata.schema import FieldSpec


class FieldValueError(MetadataError):
    """A value that does not fit its field; ``str()`` reads
    ``metadata field 'tr' = -3.0: -3 ms is outside the valid range [0, inf) ms``.

    Attributes:
        name: The field.
        value: The value given.
        problem: What is wrong with it.
    """

    def __init__(self, name: str, value: Any, problem: str) -> None:
        super().__init__(f"metadata field {name!r} = {value!r}: {problem}")
        self.name, self.value, self.problem = name, value, problem


def check_value(spec: FieldSpec, value: Any) -> Any:
    """``value`` checked against ``spec`` and canonicalised (see the module docstring).

    Raises:
        FieldValueError: The value does not fit the field's kind or range.
    """
    from metamri.metadata.schema import FieldKind

    if value is None:
        return None
    if spec.kind is FieldKind.NUMERIC:
        if isinstance(value, bool) or not (isinstance(value, int | float) or _is_numpy_number(value)):
            raise FieldValueError(spec.name, value, "expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise FieldValueError(spec.name, value, "not a finite number")
        low, high = spec.valid_range
        if not low <= value <= high:
            raise FieldValueError(
                spec.name, value, f"{value:g}{_units(spec)} is outside the valid range {spec.range_text()}"
            )
        return value
    if spec.kind is FieldKind.CATEGORICAL:
        if not isinstance(value, str):
            raise FieldValueError(spec.name, value, "expected a string")
        return value.strip() or None
    if isinstance(value, str):
        value = value.split(";")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise FieldValueError(spec.name, value, "expected a list of strings")
    labels = tuple(v.strip() for v in value if v.strip())  # order and repeats kept
    return labels or None


def parse_text(spec: FieldSpec, text: Any) -> Any:
    """A value read as text (a table cell, an HDF5 attribute) typed for ``spec``'s kind.

    Numbers are parsed (``"3.6"`` -> 3.6); other kinds, and values that are not text
    (a split multi-label cell), pass unchanged.  An empty text is missing.

    Raises:
        FieldValueError: A numeric field's text is not a number.
    """
    from metamri.metadata.schema import FieldKind

    if not isinstance(text, str):
        return text
    text = text.strip()
    if not text:
        return None
    if spec.kind is not FieldKind.NUMERIC:
        return text
    try:
        return float(text)
    except ValueError:
        raise FieldValueError(spec.name, text, "not a number") from None


def _units(spec: FieldSpec) -> str:
    return f" {spec.units}" if spec.units else ""


def _is_numpy_number(value: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, np.integer | np.floating)
