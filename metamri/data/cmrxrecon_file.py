"""CMRxRecon 2023 cine files (MATLAB v7.3): writer, reader and the metadata sidecar table.

Layout (``MultiCoil/Cine/{TrainingSet,ValidationSet}/{FullSample,AccFactor04,..}/P001/``
``cine_sax.mat``):

* A MATLAB v7.3 MAT-file is HDF5 behind a 512-byte user block whose first 128
  bytes are the MATLAB header (text, subsystem offset, version 0x0200, endian ``IM``).
* ``kspace_full`` (or ``kspace_sub04/08/10``): MATLAB dims (kx, ky, coil, slice, t);
  h5py reads the axes reversed, (t, slice, coil, ky, kx), and complex values as a
  compound of ``real``/``imag``, with attribute ``MATLAB_class`` (``single``).
* ``mask04/08/10``: the sampling masks (fully sampled along kx), float64.

Per slice and frame, metamri's canonical layout is (coils, kx, ky): the
phase-encode axis ky last.  The image is not oversampled, so ``recon_size`` is
(kx, ky).

The 2023 files carry no sequence parameters.  They come from a sidecar table
``cine_info.csv`` (one row per patient and view), given explicitly or found by
searching upward from the file's folder.  Its columns are the key columns
``patient_id`` and ``view`` plus the schema's ``"cmrxrecon"``
:class:`~metamri.metadata.sources.Column` sources (:data:`SIDECAR_COLUMNS`, made from
:data:`metamri.metadata.schema.SCHEMA`: a field added there with a column is written,
read and checked here with no change).  The other metadata also come from the schema:
anatomy ``"heart"``, contrast ``"CINE"``, view from the file name.  A file whose
table has no row for it (or no table) is reported (:mod:`metamri.metadata.missing`).
"""

from __future__ import annotations

import csv
import functools
import re
import struct
import time
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from metamri.data.readers import (
    VolumeFile,
    open_hdf5,
    read_dataset,
    require_dataset,
)
from metamri.data.sample import KSpaceSlice
from metamri.errors import DataFileError
from metamri.metadata.extract import read_values
from metamri.metadata.record import Metadata
from metamri.metadata.rules import cine_view
from metamri.metadata.schema import SCHEMA
from metamri.metadata.sources import Column, FileView
from metamri.utils.io import atomic_output

KSPACE_FULL = "kspace_full"
SIDECAR_NAME = "cine_info.csv"
#: How many folders (the file's own included) are searched for ``cine_info.csv``.
SIDECAR_SEARCH_LEVELS = 6
USERBLOCK_SIZE = 512

_FORMAT = "cmrxrecon"  # the format's key in the schema's sources
#: The sidecar's key columns: which file a row describes.
SIDECAR_KEYS: tuple[str, ...] = ("patient_id", "view")
#: Sidecar column -> metadata field (``None``: a key column): the keys, then the schema's
#: ``"cmrxrecon"`` column sources in schema order.
SIDECAR_COLUMNS: dict[str, str | None] = {
    **dict.fromkeys(SIDECAR_KEYS),
    **{spec.source(_FORMAT).column: spec.name for spec in SCHEMA if isinstance(spec.source(_FORMAT), Column)},
}
_VIEWS = ("sax", "lax")
_SUB_KEY = re.compile(r"^kspace_sub(\d+)$")

# numpy dtype -> MATLAB_class
_MATLAB_CLASS = {
    np.dtype(np.float64): b"double",
    np.dtype(np.float32): b"single",
    np.dtype(np.int8): b"int8",
    np.dtype(np.uint8): b"uint8",
    np.dtype(np.int16): b"int16",
    np.dtype(np.uint16): b"uint16",
    np.dtype(np.int32): b"int32",
    np.dtype(np.uint32): b"uint32",
    np.dtype(np.int64): b"int64",
    np.dtype(np.uint64): b"uint64",
}


# -- MATLAB v7.3 writing -------------------------------------------------------------------------


def matlab_header(created: float | None = None) -> bytes:
    """The 128-byte header MATLAB writes at the start of a v7.3 MAT-file's user block.

    116 bytes of text, 8 bytes of subsystem offset, version 0x0200 and the endian
    indicator ``IM`` (little-endian), so ``scipy.io.matlab.matfile_version`` gives (2, 0).
    """
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(created))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {stamp} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"


def _write_matlab_variable(f: h5py.File, name: str, value: np.ndarray) -> None:
    """Store one array the way MATLAB v7.3 does (dims already in h5py = reversed order)."""
    value = np.asarray(value)
    if np.iscomplexobj(value):
        part = np.float32 if value.dtype == np.complex64 else np.float64
        compound = np.empty(value.shape, dtype=[("real", part), ("imag", part)])
        compound["real"], compound["imag"] = value.real, value.imag
        ds = f.create_dataset(name, data=compound)
        ds.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASS[np.dtype(part)])
    elif value.dtype == np.bool_:
        ds = f.create_dataset(name, data=value.astype(np.uint8))
        ds.attrs["MATLAB_class"] = np.bytes_(b"logical")
        ds.attrs["MATLAB_int_decode"] = np.int32(1)
    elif value.dtype in _MATLAB_CLASS:
        ds = f.create_dataset(name, data=value)
        ds.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASS[value.dtype])
    else:
        raise ValueError(f"cannot store {name!r} of dtype {value.dtype} as a MATLAB variable")


def write_cmrxrecon_cine(
    path: str | PathLike[str],
    kspace_full: np.ndarray | None,
    *,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a CMRxRecon cine MAT-file (v7.3), atomically.

    Args:
        path: Destination ``cine_sax.mat`` / ``cine_lax.mat`` (the reader takes the
            view from the name and the patient from the parent folder).
        kspace_full: complex, (frames, slices, coils, ky, kx): h5py order, i.e.
            MATLAB's (kx, ky, coil, slice, t) reversed; stored as single.  ``None``
            writes only ``extra`` (an AccFactor file with ``kspace_sub04`` + ``mask04``).
        extra: More variables in h5py order, e.g. ``{"mask04": (ky, kx) float64}``
            or ``{"kspace_sub04": (frames, slices, coils, ky, kx) complex64}``.

    Returns:
        The path written.

    Raises:
        ValueError: ``kspace_full`` is not complex 5-D, or nothing to write.
    """
    variables: dict[str, np.ndarray] = {}
    if kspace_full is not None:
        kspace_full = np.asarray(kspace_full)
        if kspace_full.ndim != 5 or not np.iscomplexobj(kspace_full):
            raise ValueError(
                "kspace_full must be complex (frames, slices, coils, ky, kx), "
                f"got {kspace_full.dtype} {kspace_full.shape}"
            )
        variables[KSPACE_FULL] = kspace_full.astype(np.complex64, copy=False)
    for name, value in (extra or {}).items():
        value = np.asarray(value)
        if name.startswith("kspace") and np.iscomplexobj(value):
            value = value.astype(np.complex64, copy=False)
        variables[name] = value
    if not variables:
        raise ValueError("nothing to write: give kspace_full or extra variables")

    path = Path(path)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE) as f:
            for name, value in variables.items():
                _write_matlab_variable(f, name, value)
        with open(tmp, "r+b") as fh:
            fh.write(matlab_header())
    return path


# -- sidecar table -------------------------------------------------------------------------------


def write_cine_sidecar(path: str | PathLike[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Write the per-patient cine metadata table (CSV), atomically.

    Args:
        path: Destination, normally ``<dataset root>/cine_info.csv``.
        rows: One dict per (patient, view) with keys from :data:`SIDECAR_COLUMNS`;
            a missing key or ``None`` is an empty cell (missing value); ``pathology``
            may be a list (joined with ``;``).

    Returns:
        The path written.

    Raises:
        ValueError: A row has a key that is not a column, or lacks patient_id/view.
    """
    columns = list(SIDECAR_COLUMNS)
    path = Path(path)
    rows = list(rows)
    for n, row in enumerate(rows):
        unknown = sorted(set(row) - set(columns))
        if unknown:
            raise ValueError(f"sidecar row {n}: unknown column(s) {unknown}; columns are {columns}")
        for key in ("patient_id", "view"):
            if not row.get(key):
                raise ValueError(f"sidecar row {n}: {key} is required")
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: _cell(row.get(c)) for c in columns})
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    return str(value)


def read_cine_sidecar(path: str | PathLike[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Read the cine metadata table.

    Args:
        path: The CSV file.

    Returns:
        ``{(patient_id, view): {metadata field: value}}`` with ``view`` lower-case
        (``"sax"``/``"lax"``) and values typed for :class:`Metadata` (floats for
        numeric columns, a tuple for pathology); empty cells are ``None``.

    Raises:
        DataFileError: Missing file or key column, a view other than sax/lax, a
            numeric cell that is not a finite number, a (patient, view) listed twice.
    """
    return {key: dict(values) for key, (_, values) in _sidecar_table(path).items()}


@functools.lru_cache(maxsize=32)
def _read_sidecar_cached(
    path: str, mtime_ns: int, size: int
) -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
    """``{(patient_id, view): (line, {field: value})}``: every cell read and checked once
    (:func:`~metamri.metadata.extract.read_values` over the table's column sources)."""
    del mtime_ns, size  # cache keys only: a rewritten file is read again
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for key in SIDECAR_KEYS:
            if key not in header:
                raise DataFileError(path, f"missing column (columns: {header})", field=key)
        table: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        for line, row in enumerate(reader, start=2):
            pid = (row.get("patient_id") or "").strip()
            view = (row.get("view") or "").strip().lower()
            if view not in _VIEWS:
                raise DataFileError(
                    path, f"line {line}: expected sax or lax", field="view", value=view
                )
            if (pid, view) in table:
                raise DataFileError(
                    path, f"line {line}: ({pid}, {view}) listed twice", field="patient_id"
                )
            cells = FileView(path, row=row, table=path, line=line)
            table[(pid, view)] = (line, read_values(_FORMAT, cells, only=Column))
    return table


def _sidecar_table(path: str | PathLike[str]) -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file", field="sidecar")
    stat = path.stat()
    return _read_sidecar_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def find_sidecar(start: str | PathLike[str], levels: int = SIDECAR_SEARCH_LEVELS) -> Path | None:
    """The nearest ``cine_info.csv`` in ``start`` or one of its ``levels - 1`` parents."""
    folder = Path(start).resolve()
    for _ in range(levels):
        candidate = folder / SIDECAR_NAME
        if candidate.is_file():
            return candidate
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


# -- reader --------------------------------------------------------------------------------------


class CMRxReconCineFile(VolumeFile):
    """A CMRxRecon cine ``.mat`` (v7.3) file; one item per (slice, selected frame).

    Items are :class:`~metamri.data.sample.KSpaceSlice` with ``kspace`` complex64
    (coils, kx, ky), ``frame`` set, ``target`` ``None``, ``mask`` the file's bool
    (ky,) mask for subsampled (AccFactor) files and ``None`` for ``kspace_full``.
    Item ``i`` is slice ``i // F``, frame ``frames[i % F]`` (F selected frames).

    Args:
        path: ``.../P001/cine_sax.mat``: view from the name (``cine_sax``/``cine_lax``),
            patient id from the parent folder.
        sidecar: The metadata table; ``None`` searches upward from the file's folder
            for ``cine_info.csv``; no table (or no row) leaves those fields missing.
        frames: ``"all"``, one frame index, or a list of frame indices.
        acceleration: Which ``kspace_subNN`` to read when the file has no
            ``kspace_full`` (default: the lowest present).
        strict: A file lacking metadata in ``required_fields`` (no sidecar row, say) is an
            error, not a warning (:class:`~metamri.data.readers.VolumeFile`).
        required_fields: The fields the encoder reads; ``None``: the schema's required fields.

    Raises:
        DataFileError: Not HDF5 / truncated, no k-space dataset, wrong number of
            dimensions, bad mask shape, frame index out of range, bad sidecar; with
            ``strict``, missing metadata.
    """

    format = "cmrxrecon_cine"
    domain = "cardiac"
    schema_format = _FORMAT
    raw_axes = {"frame": 0, "slice": 1, "coil": 2}  # h5py order: (frames, slices, coils, ky, kx)

    def __init__(
        self,
        path: str | PathLike[str],
        sidecar: str | PathLike[str] | None = None,
        frames: Literal["all"] | int | Sequence[int] = "all",
        *,
        acceleration: int | None = None,
        strict: bool = False,
        required_fields: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(path, strict=strict, required_fields=required_fields)
        with open_hdf5(self.path) as f:
            self._key, mask_key = self._choose_dataset(f, acceleration)
            ds = require_dataset(f, self._key, self.path)
            if ds.ndim != 5:
                raise DataFileError(
                    self.path,
                    f"expected 5 dimensions (t, slice, coil, ky, kx) as h5py reads MATLAB's "
                    f"(kx, ky, coil, slice, t), got shape {ds.shape}",
                    field=self._key,
                )
            if not _is_complex(ds.dtype):
                raise DataFileError(
                    self.path,
                    f"expected a real/imag compound (complex), got {ds.dtype}",
                    field=self._key,
                )
            self._raw_shape = tuple(int(n) for n in ds.shape)
            self._mask = self._read_mask(f, mask_key) if mask_key else None
        self._frames = self._select_frames(frames)
        self._sidecar = Path(sidecar) if sidecar is not None else find_sidecar(self.path.parent)
        self._metadata = self._build_metadata()
        self._items = [(s, t) for s in range(self.num_slices) for t in self._frames]

    # -- reading the volume's description ------------------------------------------------------
    def _choose_dataset(self, f: h5py.File, acceleration: int | None) -> tuple[str, str | None]:
        subs = {int(m.group(1)): k for k in f.keys() if (m := _SUB_KEY.match(k))}
        if acceleration is None and KSPACE_FULL in f:
            return KSPACE_FULL, None
        if acceleration is not None:
            if acceleration not in subs:
                raise DataFileError(
                    self.path,
                    f"no k-space for acceleration {acceleration} "
                    f"(the file holds {sorted(f.keys())})",
                    field=f"kspace_sub{acceleration:02d}",
                )
            key = subs[acceleration]
        elif subs:
            key = subs[min(subs)]
        else:
            raise DataFileError(
                self.path,
                f"missing dataset (the file holds {sorted(f.keys())})",
                field=KSPACE_FULL,
                hint="a CMRxRecon cine file has kspace_full or kspace_sub04/08/10",
            )
        mask_key = "mask" + _SUB_KEY.match(key).group(1)
        return key, mask_key if mask_key in f else None

    def _read_mask(self, f: h5py.File, key: str) -> np.ndarray:
        """The (ky,) bool mask from a (ky, kx), (kx, ky) or (ky,) stored mask."""
        ky, kx = self._raw_shape[3], self._raw_shape[4]
        mask = np.asarray(read_dataset(f[key], (), self.path, key))
        if mask.ndim == 2 and mask.shape == (ky, kx):
            return (mask != 0).any(axis=1)
        if mask.ndim == 2 and mask.shape == (kx, ky):
            return (mask != 0).any(axis=0)
        if mask.squeeze().shape == (ky,):
            return mask.squeeze() != 0
        raise DataFileError(
            self.path, f"expected shape (ky={ky}, kx={kx}) or ({ky},), got {mask.shape}", field=key
        )

    def _select_frames(self, frames: Literal["all"] | int | Sequence[int]) -> list[int]:
        n = self._raw_shape[0]
        if isinstance(frames, str):
            if frames != "all":
                raise DataFileError(
                    self.path, "expected 'all', an index or a list", field="frames", value=frames
                )
            return list(range(n))
        chosen = [frames] if isinstance(frames, int | np.integer) else list(frames)
        out = []
        for t in chosen:
            if not isinstance(t, int | np.integer) or not -n <= t < n:
                raise DataFileError(
                    self.path, f"frame index out of range for {n} frames", field="frames", value=t
                )
            out.append(int(t) % n)
        if not out:
            raise DataFileError(self.path, "no frames selected", field="frames", value=frames)
        return out

    def _build_metadata(self) -> Metadata:
        """The schema's ``"cmrxrecon"`` sources: the sidecar row's values (read and checked
        with the table) and the file's own (constants, the view from the file name)."""
        view = (cine_view(self.path.stem) or "").lower()
        given: dict[str, Any] = {}
        note = None
        if self._sidecar is None:
            note = (f"no {SIDECAR_NAME} in {self.path.parent} or the {SIDECAR_SEARCH_LEVELS - 1} "
                    "folders above it (pass sidecar=...)")
        else:
            row = _sidecar_table(self._sidecar).get((self.patient_id, view))
            if row is None:
                note = f"{self._sidecar} has no row for patient_id {self.patient_id}, view {view or '?'}"
            else:
                given = row[1]
        return self._read_metadata(
            FileView(self.path, table=self._sidecar, name=self.path.stem, notes={"row": note} if note else {}),
            given=given,
        )

    # -- VolumeFile ------------------------------------------------------------------------------
    @property
    def dataset_key(self) -> str:
        """The k-space variable read (``kspace_full`` or ``kspace_subNN``)."""
        return self._key

    @property
    def frames(self) -> list[int]:
        """The selected frame indices."""
        return list(self._frames)

    @property
    def sidecar(self) -> Path | None:
        """The sidecar table the metadata came from, if any."""
        return self._sidecar

    @property
    def kspace_shape(self) -> tuple[int, int, int]:
        t, s, c, ky, kx = self._raw_shape
        return (c, kx, ky)

    @property
    def recon_size(self) -> tuple[int, int]:
        return (self._raw_shape[4], self._raw_shape[3])

    @property
    def fname(self) -> str:
        """``<patient>/<file>`` (``P001/cine_sax.mat``): CMRxRecon repeats file names across
        patients, so the name alone would merge patients in tables and repeat their masks."""
        return f"{self.patient_id}/{self.path.name}"

    @property
    def patient_id(self) -> str:
        return self.path.resolve().parent.name

    def volume_metadata(self) -> Metadata:
        return self._metadata

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["dataset"] = self._key
        out["selected_frames"] = self.frames
        out["sidecar"] = None if self._sidecar is None else str(self._sidecar)
        out["has_mask"] = self._mask is not None
        return out

    def _read_item(self, slice_index: int, frame: int | None) -> KSpaceSlice:
        with open_hdf5(self.path) as f:
            raw = read_dataset(f[self._key], (frame, slice_index), self.path, self._key)
        kspace = _to_complex64(raw).transpose(0, 2, 1)  # (coil, ky, kx) -> (coil, kx, ky)
        kspace = np.ascontiguousarray(kspace)
        self._check_finite(kspace, self._key, f"slice {slice_index}, frame {frame}")
        return KSpaceSlice(
            kspace=kspace,
            metadata=self._metadata.replace(slice=slice_index),
            fname=self.fname,
            path=str(self.path),
            slice_index=slice_index,
            frame=frame,
            domain=self.domain,
            mask=None if self._mask is None else self._mask.copy(),
            target=None,
            recon_size=self.recon_size,
        )


def _is_complex(dtype: np.dtype) -> bool:
    if dtype.kind == "c":
        return True
    names = dtype.names or ()
    return "real" in names and "imag" in names


def _to_complex64(raw: np.ndarray) -> np.ndarray:
    """MATLAB's real/imag compound (or native complex) -> complex64."""
    if raw.dtype.names:
        out = np.empty(raw.shape, dtype=np.complex64)
        out.real, out.imag = raw["real"], raw["imag"]
        return out
    return raw.astype(np.complex64, copy=False)
