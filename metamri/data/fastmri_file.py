"""fastMRI brain (multi-coil) HDF5 files: writer and reader.

Layout (as in the fastMRI release, and as ``fastmri.data.SliceDataset`` reads it):

* ``kspace``: complex64, (slices, coils, readout, phase); readout oversampled 2x
  (640 points for a 320-pixel image).  Per slice this is already metamri's
  canonical (coils, readout, phase) layout.
* ``reconstruction_rss``: float32, (slices, H, W): root-sum-of-squares magnitude,
  centre-cropped to the recon size (train/val files).
* ``mask``: (phase,) sampling mask (test files only).
* ``ismrmrd_header``: the ISMRMRD XML header, a string dataset.
* attrs ``acquisition`` (AXT1, AXT1PRE, AXT1POST, AXT2, AXFLAIR), ``max`` (max of
  the rss volume), ``norm`` (l2 norm of the rss volume), ``patient_id``.

Metadata read from it: whatever the schema's ``"fastmri"`` sources say
(:data:`metamri.metadata.schema.SCHEMA`; this module names no field): anatomy
``"brain"``; contrast = ``acquisition``; view ``"AX"`` for axial acquisitions;
sequence, TR, TE, flip angle and field strength from the header; TI only on
inversion-recovery scans (fastMRI stores a placeholder TI on every other scan), the
TI as stored in ``ti_stored`` (ContextMRI's prompts print it, placeholder included).
A file without a header, or without a field the encoder reads, is reported
(:mod:`metamri.metadata.missing`; ``strict=True`` makes it an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from metamri.data.ismrmrd_header import HeaderInfo, header_info, parse_document
from metamri.data.readers import (
    VolumeFile,
    attr_str,
    open_hdf5,
    read_dataset,
    require_dataset,
)
from metamri.data.sample import KSpaceSlice
from metamri.errors import DataFileError
from metamri.metadata.record import Metadata
from metamri.metadata.sources import FileView
from metamri.utils.io import atomic_output

KSPACE = "kspace"
RSS = "reconstruction_rss"
MASK = "mask"
HEADER = "ismrmrd_header"


def write_fastmri_brain(
    path: str | PathLike[str],
    kspace: np.ndarray,
    reconstruction_rss: np.ndarray | None,
    *,
    acquisition: str,
    patient_id: str,
    header_xml: str,
    mask: np.ndarray | None = None,
    extra_attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a fastMRI brain multi-coil file, atomically.

    Args:
        path: Destination ``.h5``; written to a temporary file beside it and moved
            into place, so a failure leaves nothing half-written.
        kspace: complex, (slices, coils, readout, phase); stored as complex64.
        reconstruction_rss: float, (slices, H, W) reference magnitude, or ``None``
            (test files).  Sets attrs ``max`` and ``norm``.
        acquisition: fastMRI acquisition label (``"AXFLAIR"`` ...).
        patient_id: Stored in attrs ``patient_id``.
        header_xml: ISMRMRD XML (:func:`metamri.data.ismrmrd_header.build_header`).
        mask: Optional (phase,) sampling mask, stored as float32 like fastMRI's test files.
        extra_attrs: More root attributes (e.g. ``acceleration``).

    Returns:
        The path written.

    Raises:
        ValueError: Wrong shapes or dtypes.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 4 or not np.iscomplexobj(kspace):
        raise ValueError(
            "kspace must be complex (slices, coils, readout, phase), "
            f"got {kspace.dtype} {kspace.shape}"
        )
    attrs: dict[str, Any] = {"acquisition": str(acquisition), "patient_id": str(patient_id)}
    if reconstruction_rss is not None:
        rss = np.asarray(reconstruction_rss, dtype=np.float32)
        if rss.ndim != 3 or rss.shape[0] != kspace.shape[0]:
            raise ValueError(
                f"reconstruction_rss must be (slices={kspace.shape[0]}, H, W), got {rss.shape}"
            )
        attrs["max"] = float(rss.max())
        attrs["norm"] = float(np.linalg.norm(rss.astype(np.float64)))
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float32).reshape(-1)
        if mask.shape[0] != kspace.shape[-1]:
            raise ValueError(f"mask must have {kspace.shape[-1]} entries (phase), got {mask.shape}")
    attrs.update(extra_attrs or {})

    path = Path(path)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(KSPACE, data=kspace.astype(np.complex64, copy=False))
        if reconstruction_rss is not None:
            f.create_dataset(RSS, data=rss)
        if mask is not None:
            f.create_dataset(MASK, data=mask)
        xml = header_xml.encode("utf-8") if isinstance(header_xml, str) else bytes(header_xml)
        f.create_dataset(HEADER, data=xml, dtype=h5py.string_dtype("utf-8"))
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


class FastMRIBrainFile(VolumeFile):
    """A fastMRI brain multi-coil ``.h5`` file; one item per slice.

    Items are :class:`~metamri.data.sample.KSpaceSlice` with ``kspace`` complex64
    (coils, readout, phase), ``target`` the file's ``reconstruction_rss`` slice
    (float32 (H, W)) when present, ``mask`` the file's (phase,) bool mask when
    present, and ``recon_size`` the header's ``reconSpace`` matrix (x, y), as
    fastMRI uses it (fallback: (readout // 2, phase)).

    Args:
        path: The ``.h5`` file.
        strict: A file lacking metadata in ``required_fields`` (no header, say) is an error,
            not a warning (:class:`~metamri.data.readers.VolumeFile`).
        required_fields: The fields the encoder reads; ``None``: the schema's required fields.

    Raises:
        DataFileError: Not HDF5 / truncated, no ``kspace``, wrong number of
            dimensions, invalid header, non-numeric header value, a metadata value outside
            its field's range, bad mask or rss shape; with ``strict``, missing metadata.
    """

    format = "fastmri_brain"
    domain = "brain"
    schema_format = "fastmri"
    raw_axes = {"slice": 0, "coil": 1}  # (slices, coils, readout, phase)

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        strict: bool = False,
        required_fields: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(path, strict=strict, required_fields=required_fields)
        with open_hdf5(self.path) as f:
            ds = require_dataset(f, KSPACE, self.path)
            if ds.ndim != 4:
                raise DataFileError(
                    self.path,
                    f"expected 4 dimensions (slices, coils, readout, phase), got shape {ds.shape}",
                    field=KSPACE,
                    hint="single-coil files are not supported",
                )
            if ds.dtype.kind != "c":
                raise DataFileError(
                    self.path, f"expected complex data, got {ds.dtype}", field=KSPACE
                )
            self._raw_shape = tuple(int(n) for n in ds.shape)
            document = self._read_header(f)
            self._header = HeaderInfo() if document is None else header_info(document, self.path)
            self._has_target = self._check_rss(f)
            self._mask = self._read_mask(f)
            attrs = {key: attr_str(value) for key, value in f.attrs.items()}
        self._acquisition = attrs.get("acquisition")
        self._patient_id = attrs.get("patient_id") or self.path.stem
        self._metadata = self._read_metadata(FileView(
            self.path, header=document, attrs=attrs, name=self.path.stem,
            protocol=self._header.protocol_name,
            notes={} if document is not None else {"header": f"the file has no {HEADER} dataset"},
        ))
        self._items = [(s, None) for s in range(self._raw_shape[0])]

    # -- reading the volume's description ------------------------------------------------------
    def _read_header(self, f: h5py.File) -> Any:
        """The parsed ISMRMRD document (:func:`parse_document`), ``None`` without a header."""
        if HEADER not in f:
            return None
        raw = read_dataset(f[HEADER], (), self.path, HEADER)
        if isinstance(raw, np.ndarray):
            raw = raw.item() if raw.size == 1 else raw.tobytes()
        if isinstance(raw, np.bytes_):
            raw = bytes(raw)
        return parse_document(raw, self.path)

    def _check_rss(self, f: h5py.File) -> bool:
        if RSS not in f:
            return False
        shape = f[RSS].shape
        if len(shape) != 3 or shape[0] != self._raw_shape[0]:
            raise DataFileError(
                self.path,
                f"expected (slices={self._raw_shape[0]}, H, W), got shape {shape}",
                field=RSS,
            )
        return True

    def _read_mask(self, f: h5py.File) -> np.ndarray | None:
        if MASK not in f:
            return None
        mask = np.asarray(read_dataset(f[MASK], (), self.path, MASK)).reshape(-1)
        if mask.shape[0] != self._raw_shape[-1]:
            raise DataFileError(
                self.path,
                f"expected {self._raw_shape[-1]} entries (one per phase-encode line), "
                f"got {mask.shape[0]}",
                field=MASK,
            )
        return mask != 0

    # -- VolumeFile ------------------------------------------------------------------------------
    @property
    def header(self) -> HeaderInfo:
        """The parsed ISMRMRD header (raw values; TI unfiltered)."""
        return self._header

    @property
    def acquisition(self) -> str | None:
        """The ``acquisition`` attribute, kept as stored (unknown labels are not an error)."""
        return self._acquisition

    @property
    def kspace_shape(self) -> tuple[int, int, int]:
        return self._raw_shape[1:]

    @property
    def recon_size(self) -> tuple[int, int]:
        if self._header.recon_matrix is not None:
            return (self._header.recon_matrix[0], self._header.recon_matrix[1])
        return (self._raw_shape[2] // 2, self._raw_shape[3])

    @property
    def patient_id(self) -> str:
        return self._patient_id

    def volume_metadata(self) -> Metadata:
        return self._metadata

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        h = self._header
        out["header"] = {
            "vendor": h.vendor,
            "model": h.model,
            "receiver_channels": h.receiver_channels,
            "protocol_name": h.protocol_name,
            "ti_raw": h.ti,
            "echo_spacing": h.echo_spacing,
            "encoded_matrix": list(h.encoded_matrix) if h.encoded_matrix else None,
            "recon_matrix": list(h.recon_matrix) if h.recon_matrix else None,
        }
        out["has_target"] = self._has_target
        out["has_mask"] = self._mask is not None
        return out

    def _read_item(self, slice_index: int, frame: int | None) -> KSpaceSlice:
        with open_hdf5(self.path) as f:
            kspace = read_dataset(f[KSPACE], slice_index, self.path, KSPACE)
            target = (
                np.asarray(read_dataset(f[RSS], slice_index, self.path, RSS), dtype=np.float32)
                if self._has_target
                else None
            )
        kspace = np.asarray(kspace, dtype=np.complex64)
        self._check_finite(kspace, KSPACE, f"slice {slice_index}")
        return KSpaceSlice(
            kspace=kspace,
            metadata=self._metadata.replace(slice=slice_index),
            fname=self.fname,
            path=str(self.path),
            slice_index=slice_index,
            frame=None,
            domain=self.domain,
            mask=None if self._mask is None else self._mask.copy(),
            target=target,
            recon_size=self.recon_size,
        )
