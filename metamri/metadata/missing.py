"""Metadata a file should give and does not: a warning, or an error when strict.

A fastMRI file without an ISMRMRD header, or a cine file without a sidecar row, reads
with its TR, TE and flip angle missing; the encoder then embeds them as "unknown".
That is allowed (the model learns an "empty" embedding per field) but should never
go unnoticed, so the readers call :func:`report_missing` after reading a file's values:

* a field is **missing** when it is one of the ``required`` fields (the fields the
  chosen encoder reads, ``data.metadata_fields``; by default the schema's
  :data:`~metamri.metadata.schema.REQUIRED_FIELDS`), the file's format has a source
  for it that should give a value (``Source.is_expected``: not a constant, not the
  item position, not a ``when`` rule that does not hold, such as TI on a
  non-inversion-recovery scan), and the file gave none;
* by default each such file is reported once per process, as a ``logging`` warning
  of ``metamri.metadata.missing`` naming the file, the fields, where each would be
  and why that part of the file is absent; the fields read as missing;
* with ``strict`` (``data.metadata_strict=true``, a reader's ``strict=True``) such a
  file is a :class:`~metamri.errors.DataFileError` naming the same.

The warning reads, e.g.::

    data/file_brain_AXT1_001.h5: missing metadata sequence (ismrmrd_header/sequenceParameters/sequence_type),
    tr (ismrmrd_header/sequenceParameters/TR), te (ismrmrd_header/sequenceParameters/TE), flip_angle
    (ismrmrd_header/sequenceParameters/flipAngle_deg): the file has no ismrmrd_header dataset. They are read
    as unknown; give the file these values, or set data.metadata_strict=true to refuse such files
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from metamri.errors import DataFileError
from metamri.metadata.schema import FIELDS, REQUIRED_FIELDS, resolve_fields
from metamri.metadata.sources import FileView

log = logging.getLogger(__name__)

#: (file, missing fields) already warned about in this process.
_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def required_fields(fields: str | Iterable[str] | None) -> tuple[str, ...]:
    """The fields to require: ``None`` -> :data:`REQUIRED_FIELDS`; a named set (``"paper"``,
    ``"contextmri"``, ``"all"``) or a list of field names as :func:`resolve_fields` takes them;
    ``()`` requires nothing."""
    if fields is None:
        return REQUIRED_FIELDS
    if not isinstance(fields, str):
        fields = [str(f) for f in fields]
        if not fields:
            return ()
    return resolve_fields(fields)


def missing_fields(
    fmt: str, view: FileView, values: Mapping[str, Any], required: Sequence[str]
) -> list[tuple[str, str, str | None]]:
    """``(field, where it would be, why that part is absent)`` of every missing field
    (see the module docstring), in ``required``'s order."""
    out = []
    for name in required:
        spec = FIELDS[name]
        src = spec.source(fmt)
        if values.get(name) is not None or not src.is_expected(view, values):
            continue
        if src.when is not None and not src.when(view, values):
            continue  # not applicable to this file (TI of a non-inversion-recovery scan)
        out.append((name, src.location or name, view.notes.get(src.part or "")))
    return out


def report_missing(
    fmt: str,
    view: FileView,
    values: Mapping[str, Any],
    *,
    required: str | Iterable[str] | None = None,
    strict: bool = False,
) -> tuple[str, ...]:
    """Warn about (or, ``strict``, refuse) a file that lacks required metadata.

    Args:
        fmt: The file's format in ``FieldSpec.sources``.
        view: The file, as its values were read from it.
        values: Its values (:func:`metamri.metadata.extract.read_values`).
        required: The fields the encoder reads (:func:`required_fields`).
        strict: Raise instead of warning.

    Returns:
        The missing fields (``()`` when none).

    Raises:
        DataFileError: ``strict`` and a field is missing; names the file and the fields.
    """
    missing = missing_fields(fmt, view, values, required_fields(required))
    if not missing:
        return ()
    names = tuple(name for name, _, _ in missing)
    listed = ", ".join(f"{name} ({where})" for name, where, _ in missing)
    reasons = sorted({why for _, _, why in missing if why})
    problem = f"missing metadata {listed}" + (f": {'; '.join(reasons)}" if reasons else "")
    if strict:
        raise DataFileError(
            view.path, problem,
            hint="the encoder reads these fields: give the file these values, or set "
                 "data.metadata_strict=false (strict=False) to read them as unknown, with a warning",
        )
    key = (os.path.abspath(view.path) if view.path is not None else "", names)
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s: %s. They are read as unknown; give the file these values, or set "
                    "data.metadata_strict=true to refuse such files", view.path, problem)
    return names
