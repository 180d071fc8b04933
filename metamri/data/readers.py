"""One interface over every raw k-space file format: :class:`VolumeFile` and :func:`open_volume`.

A :class:`VolumeFile` is one file (one volume): it knows its shapes and the
volume's :class:`~metamri.metadata.Metadata` after a cheap look at the file,
and reads one :class:`~metamri.data.sample.KSpaceSlice` per item on demand.
Items are slices for static data and (slice, frame) pairs for cine data.

Files are opened only inside a ``with`` block for each read, never kept open, so
a :class:`VolumeFile` pickles cleanly into DataLoader workers.

Metadata: a reader names no field.  It shows its file to the schema as a
:class:`~metamri.metadata.sources.FileView` (the parsed header, the attributes, the
sidecar row, the file name) and :meth:`VolumeFile._read_metadata` runs the schema's
sources for the reader's :attr:`~VolumeFile.schema_format`
(:func:`metamri.metadata.extract.read_values`: every value checked once, errors naming
the file, where the value is and the value), then reports fields the encoder reads
and the file lacks (:mod:`metamri.metadata.missing`): a warning, or with ``strict=True``
a :class:`~metamri.errors.DataFileError`.

Formats (see ``DESIGN.md``):

========================  ==========  =====================================================
``format``                extension   class
========================  ==========  =====================================================
``"fastmri_brain"``       ``.h5``     :class:`metamri.data.fastmri_file.FastMRIBrainFile`
``"cmrxrecon_cine"``      ``.mat``    :class:`metamri.data.cmrxrecon_file.CMRxReconCineFile`
========================  ==========  =====================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from metamri.data.sample import KSpaceSlice
from metamri.errors import ConfigError, DataFileError
from metamri.metadata.extract import read_values
from metamri.metadata.missing import report_missing, required_fields
from metamri.metadata.record import Metadata
from metamri.metadata.sources import FileView

FORMATS: tuple[str, ...] = ("fastmri_brain", "cmrxrecon_cine")
_EXTENSIONS = {".h5": "fastmri_brain", ".hdf5": "fastmri_brain", ".mat": "cmrxrecon_cine"}


class VolumeFile(ABC):
    """A raw multi-coil k-space file, read one slice (or cine frame) at a time.

    Subclasses fill in the shape properties, :meth:`volume_metadata` and
    :meth:`_read_item`; the base class gives indexing, iteration and
    :meth:`describe`.

    Args:
        path: The file.
        strict: A file that lacks metadata in ``required_fields`` is an error
            (:class:`~metamri.errors.DataFileError` naming the file and the fields) instead
            of a warning.
        required_fields: The fields the encoder reads (a named set such as ``"paper"``, or
            a list); ``None``: the schema's required fields
            (:data:`~metamri.metadata.schema.REQUIRED_FIELDS`); ``()``: check nothing.

    Attributes:
        format: ``"fastmri_brain"`` | ``"cmrxrecon_cine"``.
        domain: ``"brain"`` | ``"cardiac"``.
        schema_format: The format's key in the schema's sources (``"fastmri"`` ...).
    """

    format: ClassVar[str]
    domain: ClassVar[str]
    schema_format: ClassVar[str]
    #: Where ``slice``, ``coil`` (and ``frame`` for cine) lie in the stored k-space array.
    raw_axes: ClassVar[dict[str, int]]

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        strict: bool = False,
        required_fields: str | Sequence[str] | None = None,
    ) -> None:
        self._path = Path(path)
        self._raw_shape: tuple[int, ...] = ()
        #: (slice index, frame index or None) of every item, in item order.
        self._items: list[tuple[int, int | None]] = []
        self._strict = bool(strict)
        self._required = _required(required_fields)
        self._missing: tuple[str, ...] = ()

    # -- what every format knows ------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The file's path."""
        return self._path

    @property
    def fname(self) -> str:
        """The name that identifies the volume in samples, caches, metric tables and mask seeds:
        the file name (fastMRI's names are unique across a dataset)."""
        return self._path.name

    @property
    def item_keys(self) -> list[tuple[int, int | None]]:
        """``(slice index, frame index or None)`` of every item, in item order."""
        return list(self._items)

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """Shape of the k-space dataset as stored in the file (read by the subclass's constructor)."""
        return self._raw_shape

    @property
    def missing_metadata(self) -> tuple[str, ...]:
        """The required fields this file lacks (reported once when it was opened)."""
        return self._missing

    @property
    def num_slices(self) -> int:
        """Number of slices in the volume."""
        return self._raw_shape[self.raw_axes["slice"]]

    @property
    def num_frames(self) -> int:
        """Number of cine frames in the file (1 for static data)."""
        return self._raw_shape[self.raw_axes["frame"]] if "frame" in self.raw_axes else 1

    @property
    def num_coils(self) -> int:
        """Number of receive coils."""
        return self._raw_shape[self.raw_axes["coil"]]

    @property
    @abstractmethod
    def kspace_shape(self) -> tuple[int, int, int]:
        """Per-slice k-space shape in the canonical layout (coils, readout, phase)."""

    @property
    @abstractmethod
    def recon_size(self) -> tuple[int, int]:
        """(H, W) image size after cropping away readout oversampling."""

    @property
    @abstractmethod
    def patient_id(self) -> str:
        """Patient identifier (used for patient-level splits)."""

    @abstractmethod
    def volume_metadata(self) -> Metadata:
        """The volume's metadata (``slice`` is ``None``)."""

    @abstractmethod
    def _read_item(self, slice_index: int, frame: int | None) -> KSpaceSlice:
        """Read one slice (and frame) from the file."""

    # -- items ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> KSpaceSlice:
        n = len(self._items)
        if not isinstance(i, int | np.integer):
            raise TypeError(
                f"{type(self).__name__} indices must be integers, not {type(i).__name__}"
            )
        if not -n <= i < n:
            raise IndexError(f"{self.path}: item {i} out of range for {n} items")
        slice_index, frame = self._items[int(i) % n]
        return self._read_item(slice_index, frame)

    def __iter__(self) -> Iterator[KSpaceSlice]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, items={len(self)})"

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: path, format, shapes, patient and every metadata field.

        ``metadata`` lists every schema field, ``None`` where missing.
        """
        return {
            "path": str(self.path),
            "format": self.format,
            "domain": self.domain,
            "shape": list(self.raw_shape),
            "kspace_shape": list(self.kspace_shape),
            "slices": self.num_slices,
            "frames": self.num_frames,
            "coils": self.num_coils,
            "items": len(self),
            "recon_size": list(self.recon_size),
            "patient_id": self.patient_id,
            "metadata": self.volume_metadata().to_dict(),
        }

    # -- helpers for subclasses -------------------------------------------------------------
    def _read_metadata(self, view: FileView, given: dict[str, Any] | None = None) -> Metadata:
        """The volume's metadata from ``view`` through the schema's sources for
        :attr:`schema_format`; missing required fields are reported (warning or, strict, error).

        Args:
            view: What the file shows (header, attributes, table row, name).
            given: Values read and checked elsewhere (a sidecar row read with its table).

        Raises:
            DataFileError: A value does not fit its field, or (strict) required fields are missing.
        """
        values = read_values(self.schema_format, view, given=given)
        self._missing = report_missing(
            self.schema_format, view, values, required=self._required, strict=self._strict
        )
        return Metadata(**values)

    def _check_finite(self, kspace: np.ndarray, field: str, where: str) -> None:
        """Raise a DataFileError when ``kspace`` holds NaN or inf (one slice: cheap)."""
        if not np.isfinite(kspace).all():
            bad = int(kspace.size - np.count_nonzero(np.isfinite(kspace)))
            raise DataFileError(
                self.path, f"{bad} non-finite value(s) (NaN or inf) in {where}", field=field
            )


def _required(fields: str | Sequence[str] | None) -> tuple[str, ...]:
    try:
        return required_fields(fields)
    except (KeyError, ValueError) as exc:
        raise ConfigError("required_fields", fields, str(exc.args[0]),
                          hint="a named set (paper, contextmri, all) or a list of schema fields") from None


def open_volume(path: str | PathLike[str], **kwargs: Any) -> VolumeFile:
    """Open a raw k-space file as the :class:`VolumeFile` of its format.

    Args:
        path: A fastMRI brain ``.h5`` or CMRxRecon cine ``.mat`` (v7.3) file; other
            extensions are recognised by the datasets they hold.
        **kwargs: Passed to the format's class (e.g. ``sidecar=``, ``frames=`` for cine;
            ``strict=``, ``required_fields=`` for every format).

    Raises:
        DataFileError: Unreadable file, unknown format, or bad content.
    """
    fmt = detect_format(path)
    if fmt == "fastmri_brain":
        from metamri.data.fastmri_file import FastMRIBrainFile

        return FastMRIBrainFile(path, **kwargs)
    from metamri.data.cmrxrecon_file import CMRxReconCineFile

    return CMRxReconCineFile(path, **kwargs)


def detect_format(path: str | PathLike[str]) -> str:
    """The format name of ``path``: by extension, else by the datasets it holds."""
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is not None:
        return fmt
    with open_hdf5(path) as f:
        keys = set(f.keys())
    if "kspace" in keys:
        return "fastmri_brain"
    if "kspace_full" in keys or any(k.startswith("kspace_sub") for k in keys):
        return "cmrxrecon_cine"
    raise DataFileError(
        path,
        f"unknown file format: no 'kspace' or 'kspace_full' dataset (found {sorted(keys)})",
        hint="expected a fastMRI brain .h5 or a CMRxRecon cine .mat (v7.3)",
    )


# -- HDF5 helpers shared by the formats --------------------------------------------------------


@contextmanager
def open_hdf5(path: str | PathLike[str]) -> Iterator[h5py.File]:
    """Open an HDF5 (or MATLAB v7.3) file read-only, turning failures into DataFileError."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(path, _why_not_hdf5(path, exc)) from None
    try:
        yield f
    finally:
        f.close()


def _why_not_hdf5(path: Path, exc: OSError) -> str:
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB 5.0"):
        return "a MATLAB v5 MAT-file, not v7.3 (HDF5); re-save it with save(..., '-v7.3')"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "truncated" in reason:
        return f"truncated HDF5 file ({reason})"
    return f"not a readable HDF5 file ({reason})"


def require_dataset(f: h5py.File, name: str, path: str | PathLike[str]) -> h5py.Dataset:
    """``f[name]`` as a dataset, or a DataFileError naming the missing field."""
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        problem = "missing dataset" if obj is None else "not a dataset"
        raise DataFileError(path, f"{problem} (the file holds {sorted(f.keys())})", field=name)
    return obj


def read_dataset(ds: h5py.Dataset, index: Any, path: str | PathLike[str], field: str) -> np.ndarray:
    """``ds[index]``, turning low-level read failures (truncated data) into DataFileError."""
    try:
        return ds[index]
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(path, f"cannot read data ({reason})", field=field) from None


def attr_str(value: Any) -> str | None:
    """An HDF5 attribute as ``str`` (h5py may return ``str``, ``bytes`` or a 0-d array)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    if isinstance(value, bytes | np.bytes_):
        value = bytes(value).decode("utf-8", errors="replace")
    return str(value)
