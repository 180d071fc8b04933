"""ContextMRI's metadata tables (CSV) read into :class:`Metadata` records.

DoHunLee1/ContextMRI ships one row per slice (``assets/fastmri/brain/metadata_val.csv``)::

    anatomy,filename,slice,contrast,pathology,sequence,TR,TE,TI,flip_angle
    brain,file_brain_AXFLAIR_200_6002462,0,FLAIR,"Nonspecific white matter lesion, Nonspecific white matter lesion",TurboSpinEcho,9000,81,2500,150

Its columns map onto the schema as the ``"contextmri"`` sources in
:mod:`metamri.metadata.schema` say:

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

from metamri.errors import DataFileError, MetadataError
from metamri.metadata.contrast import acquisition_from_contextmri
from metamri.metadata.record import Metadata
from metamri.metadata.rules import is_inversion_recovery
from metamri.utils.parse import finite_number

#: The columns of ContextMRI's tables, in its order.
CONTEXTMRI_COLUMNS: tuple[str, ...] = (
    "anatomy", "filename", "slice", "contrast", "pathology", "sequence", "TR", "TE", "TI", "flip_angle",
)
_NUMBERS = {"TR": "tr", "TE": "te", "flip_angle": "flip_angle"}


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
    where = f"line {line}: " if line is not None else ""

    def cell(column: str) -> str | None:
        text = (row.get(column) or "").strip()
        return text or None

    def number(column: str) -> float | None:
        text = cell(column)
        if text is None:
            return None
        return finite_number(text, path, column, where)

    slice_index = number("slice")
    if slice_index is None or slice_index < 0 or not slice_index.is_integer():
        raise DataFileError(path, f"{where}expected a slice index (0, 1, ...)", field="slice",
                            value=cell("slice"))
    name = cell("contrast")
    acquisition = None if name is None else acquisition_from_contextmri(name)
    sequence = cell("sequence")
    ti_stored = number("TI")
    pathology = cell("pathology")
    try:
        return Metadata(
            anatomy=cell("anatomy"),
            contrast=acquisition,
            sequence=sequence,
            slice=slice_index,
            **{field: number(column) for column, field in _NUMBERS.items()},
            ti=ti_stored if is_inversion_recovery(acquisition, sequence) else None,
            ti_stored=ti_stored,
            view="AX" if acquisition and acquisition.upper().startswith("AX") else None,
            pathology=None if pathology is None else tuple(pathology.split(", ")),
        )
    except MetadataError as exc:  # pragma: no cover - every value is typed above
        raise DataFileError(path, f"{where}{exc}") from None


def _stem(filename: str | PathLike[str]) -> str:
    name = Path(str(filename)).name
    return name[:-3] if name.endswith(".h5") else name
