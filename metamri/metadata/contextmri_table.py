"""ContextMRI's metadata tables (CSV) read into :class:`Metadata` records.

DoHunLee1/ContextMRI ships one row per slice (``assets/fastmri/brain/metadata_val.csv``)::

    anatomy,filename,slice,contrast,pathology,sequence,TR,TE,TI,flip_angle
    brain,file_brain_AXFLAIR_200_6002462,0,FLAIR,"Nonspecific white matter lesion, Nonspecific white matter lesion",TurboSpinEcho,9000,81,2500,150

Its columns map onto the schema as the ``"contextmri"`` sources in
:mod:`metamri.metadata.schema` say (this module names no field; each row goes through
:func:`~metamri.metadata.extract.read_values`, which checks every cell once):

* ``contrast`` is ContextMRI's name (``FLAIR``) and becomes the fastMRI acquisition
  label the other readers give (``AXFLAIR``; :mod:`metamri.metadata.contrast`), so
  records from a table and from the files agree;
* ``pathology`` is a ``", "``-separated list with one entry per annotation (repeats
  kept, in order); an empty cell is no pathology;
* ``TI`` is the header's TI as stored: it goes to ``ti_stored`` always and to ``ti``
  only for inversion-recovery scans (the fastMRI reader's rule);
* ``TR``/``TE``/``TI`` in ms, ``flip_angle`` in degrees, ``slice`` 0-based.

This is how a user brings ContextMRI's tables (which carry pathology, absent from
the fastMRI files) to metamri: ``read_contextmri_table(path).get(fname, slice)``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from metamri.errors import DataFileError
from metamri.metadata.extract import read_values
from metamri.metadata.record import Metadata
from metamri.metadata.schema import SCHEMA
from metamri.metadata.sources import Column, FileView

_FORMAT = "contextmri"  # the format's key in the schema's sources
#: The columns a ContextMRI table must have: the key ``filename``, then the schema's
#: ``"contextmri"`` column sources (ContextMRI's own order is anatomy, filename, slice,
#: contrast, pathology, sequence, TR, TE, TI, flip_angle).
CONTEXTMRI_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(
    ["filename", *(spec.source(_FORMAT).column for spec in SCHEMA if isinstance(spec.source(_FORMAT), Column))]
))


@dataclass(frozen=True)
class ContextMRITable:
    """The records of one table, keyed by (file stem, slice index).

    Attributes:
        path: The CSV read.
        records: ``(filename without .h5, slice) -> Metadata`` (``slice`` filled in).
    """

    path: Path
    records: Mapping[tuple[str, int], Metadata]

    def get(self, filename: str | PathLike[str], slice_index: int) -> Metadata:
        """The record of one slice; ``filename`` may be a path or carry ``.h5``.

        Raises:
            KeyError: The table has no row for that slice.
        """
        key = (_stem(filename), int(slice_index))
        try:
            return self.records[key]
        except KeyError:
            raise KeyError(f"{self.path}: no row for filename {key[0]!r}, slice {key[1]}") from None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.records)


def read_contextmri_table(path: str | PathLike[str]) -> ContextMRITable:
    """Read a ContextMRI metadata CSV (see the module doc).

    Raises:
        DataFileError: Missing columns, a non-numeric or non-finite number, a slice
            index that is not a non-negative integer, or a (filename, slice) listed twice;
            the message names the file, the line, the column and the value.
    """
    path = Path(path)
    records: dict[tuple[str, int], Metadata] = {}
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataFileError(path, f"cannot read the table ({exc.strerror or exc})") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CONTEXTMRI_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataFileError(path, f"missing column(s) {missing}",
                                hint=f"a ContextMRI table has the columns {', '.join(CONTEXTMRI_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            meta = contextmri_row_to_metadata(row, path=path, line=line)
            key = (_stem(row["filename"]), int(meta.slice))  # type: ignore[arg-type]
            if key in records:
                raise DataFileError(path, f"line {line}: filename {key[0]!r}, slice {key[1]} listed twice",
                                    field="filename")
            records[key] = meta
    return ContextMRITable(path, records)


def contextmri_row_to_metadata(row: Mapping[str, str | None], *, path: str | PathLike[str] | None = None,
                               line: int | None = None) -> Metadata:
    """One table row (column -> cell text) as a :class:`Metadata` record.

    >>> contextmri_row_to_metadata({"anatomy": "brain", "filename": "f", "slice": "0",
    ...     "contrast": "T2", "pathology": "", "sequence": "TurboSpinEcho", "TR": "6190",
    ...     "TE": "113", "TI": "100", "flip_angle": "174"}).ti_stored
    100.0
    """
    meta = Metadata(**read_values(_FORMAT, FileView(path, row=row, table=path, line=line)))
    if meta.slice is None or not meta.slice.is_integer():
        where = f"line {line}: " if line is not None else ""
        raise DataFileError(path, f"{where}expected a slice index (0, 1, ...)", field="slice",
                            value=(row.get("slice") or "").strip() or None)
    return meta


def _stem(filename: str | PathLike[str]) -> str:
    name = Path(str(filename)).name
    return name[:-3] if name.endswith(".h5") else name
