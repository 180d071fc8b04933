"""Run the schema's sources on one file: every field's value, each checked once.

A reader builds a :class:`~metamri.metadata.sources.FileView` of its file and calls
:func:`read_values` with its format's name; it never names a field.  Per field of
:data:`~metamri.metadata.schema.SCHEMA`, in two passes (sources that read other
fields' values, :attr:`Source.dependent`, come second):

1. the format's source reads the value as stored (``None``: absent, or not applicable
   because its ``when`` rule does not hold);
2. text is parsed for the field's kind (:func:`~metamri.metadata.validate.parse_text`),
   ``convert`` and ``scale`` are applied;
3. :func:`~metamri.metadata.validate.check_value` checks it: a failure is a
   :class:`~metamri.errors.DataFileError` naming the file (the table, with the line,
   for a table cell), where the value is (``ismrmrd_header/sequenceParameters/TR``,
   ``TR_ms``), the value as stored and the field's rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metamri.errors import DataFileError
from metamri.metadata.schema import SCHEMA, FieldSpec
from metamri.metadata.sources import FileView, Source
from metamri.metadata.validate import FieldValueError, check_value, parse_text


def read_values(
    fmt: str,
    view: FileView,
    *,
    given: Mapping[str, Any] | None = None,
    only: type[Source] | tuple[type[Source], ...] | None = None,
) -> dict[str, Any]:
    """The value of every schema field in one file of format ``fmt``.

    Args:
        fmt: The format's name in ``FieldSpec.sources`` (``"fastmri"``, ``"cmrxrecon"``,
            ``"contextmri"``).
        view: The file.
        given: Values read and checked elsewhere, taken as they are (a cine file's sidecar
            row, read and checked once with its table).
        only: Read the sources of these kinds only (a table reader reads its
            :class:`~metamri.metadata.sources.Column` sources); the other fields are left
            out of the result.

    Returns:
        ``{field: value}`` in schema order, canonical (floats, stripped strings, tuples),
        ``None`` where missing or not applicable.

    Raises:
        DataFileError: A value does not fit its field (kind, finiteness, valid range).
    """
    given = dict(given or {})
    values: dict[str, Any] = {}
    later: list[tuple[FieldSpec, Source]] = []
    for spec in SCHEMA:
        src = spec.source(fmt)
        if only is not None and not isinstance(src, only):
            continue
        if spec.name in given:
            values[spec.name] = given[spec.name]
        elif src.dependent:
            later.append((spec, src))
        else:
            values[spec.name] = read_value(spec, src, view, values)
    for spec, src in later:
        values[spec.name] = read_value(spec, src, view, values)
    return {spec.name: values[spec.name] for spec in SCHEMA if spec.name in values}


def read_value(spec: FieldSpec, src: Source, view: FileView, values: Mapping[str, Any]) -> Any:
    """One field's value from ``src`` (steps 1-3 of the module docstring)."""
    if src.when is not None and not src.when(view, values):
        return None
    raw = src.read(view, values)
    if raw is None:
        return None
    try:
        value = parse_text(spec, raw) if src.text else raw
        if value is not None and src.convert is not None:
            value = src.convert(value)
        if value is not None and src.scale is not None and isinstance(value, int | float):
            value = value * src.scale
        return check_value(spec, value)
    except FieldValueError as err:
        raise value_error(spec, src, view, raw, err.problem) from None


def value_error(spec: FieldSpec, src: Source, view: FileView, raw: Any, problem: str) -> DataFileError:
    """The error of a stored value that does not fit ``spec``: names the file (or table and
    line), where the value is, the value as stored, the field and what is wrong."""
    in_table = src.part == "row" and view.table is not None
    path = view.table if in_table else view.path
    where = f"line {view.line}: " if in_table and view.line is not None else ""
    units = f", {spec.units}" if spec.units else ""
    return DataFileError(
        path, f"{where}{problem} (metadata field {spec.name!r}{units})", field=src.location or spec.name, value=raw,
        hint="correct the value, or remove it to read the field as missing",
    )
