"""The preprocessed cache: one HDF5 file per source volume.

Layout::

    <cache_dir>/<domain>/<name>.h5        domain: "brain" | "cardiac"

``<name>`` is the source file's stem for fastMRI (``file_brain_AXFLAIR_200_6002447``)
and ``<patient>_<view>`` for CMRxRecon cine (``P001_sax`` from ``P001/cine_sax.mat``,
whose stems repeat across patients); see :func:`entry_name`.

Datasets (N = items of the volume: slices, or slices x frames for cine, in the
reader's item order):

==============  =====================  ==========================================================
``image``       (N, 2, H, W) float32   normalised MVUE, channels (real, imag): ``mvue / scale``
``maps``        (N, C, H, W) complex64 ESPIRiT maps cropped like the image (h5py compound r/i)
``scale``       (N,) float32           the p99 divisor: ``image_in_file_units = image * scale``
``slice_index`` (N,) int32             index along the source file's slice axis
``frame``       (N,) int32             cine frame, -1 for static data
==============  =====================  ==========================================================

``image`` and ``maps`` are chunked one item per chunk (reading one slice reads
one chunk); ``maps`` are compressed with LZF (zeros outside the object compress).

Attributes (strings; JSON where noted):

* ``metadata``: JSON of the volume's :meth:`Metadata.to_dict` (``slice`` = null;
  the data modules fill it from ``slice_index``).
* ``domain``, ``patient_id``, ``fname`` (source file name, seeds masks), ``format``
  (``"fastmri_brain"`` | ``"cmrxrecon_cine"``).
* ``source``: JSON ``{path, size, mtime_ns, sha256}`` of the source file.
* ``params``: JSON of the preprocessing parameters (ESPIRiT backend and
  parameters, image size, cine frames), see ``metamri.preprocess.pipeline``.
* ``version``: :data:`CACHE_VERSION` (int).

Freshness (:func:`is_up_to_date`): an entry is reused when its version and
``params`` equal the current ones and the source file's size and mtime equal
the recorded ones. When only the mtime differs (a copy or ``touch``), the
SHA-256 decides, so an unchanged file is not recomputed; a different size is
always stale. Contents are not hashed when size and mtime match (a file
rewritten in place with the same size within the same nanosecond would go
unnoticed: use ``overwrite=true`` after editing raw files by hand).

Writes are atomic (:func:`write_entry`): the file is written as
``<name>.h5.tmp`` in the same directory and moved onto ``<name>.h5`` with
:func:`os.replace` only when complete. A crash leaves at most a ``*.tmp``,
which the next run deletes (:func:`remove_stale_tmp`); a ``*.h5`` in the cache
is always complete. Run one preprocessing job per cache at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from metamri.errors import DataFileError, MetadataError
from metamri.metadata.record import Metadata

#: Bumped whenever the layout or the preprocessing maths change (stale entries are recomputed).
CACHE_VERSION = 2
TMP_SUFFIX = ".tmp"
_DATASETS = ("image", "maps", "scale", "slice_index", "frame")
_ATTRS = ("metadata", "domain", "patient_id", "fname", "format", "source", "params", "version")


@dataclass
class VolumeEntry:
    """The content of one cache file.

    Attributes:
        image: float32 (N, 2, H, W) normalised MVUE (real, imag).
        maps: complex64 (N, C, H, W) cropped ESPIRiT maps, or ``None`` when read
            with ``load_maps=False``.
        scale: float32 (N,) p99 divisors (``image * scale`` = file units).
        slice_index: int32 (N,).
        frame: int32 (N,), -1 for static data.
        metadata: Volume metadata (``slice`` is ``None``).
        domain: ``"brain"`` | ``"cardiac"``.
        patient_id: Patient identifier (patient-level splits).
        fname: Source file name.
        format: Source format name.
        source: ``{path, size, mtime_ns, sha256}`` of the source file.
        params: Preprocessing parameters.
        version: Cache format version.
    """

    image: np.ndarray
    maps: np.ndarray | None
    scale: np.ndarray
    slice_index: np.ndarray
    frame: np.ndarray
    metadata: Metadata
    domain: str
    patient_id: str
    fname: str
    format: str
    source: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    version: int = CACHE_VERSION

    def __len__(self) -> int:
        return int(self.image.shape[0])


# -- names --------------------------------------------------------------------------------------


def entry_name(source_path: str | PathLike[str], fmt: str, patient_id: str | None = None) -> str:
    """The cache file stem of a source volume.

    Args:
        source_path: The raw file.
        fmt: Its format (``"fastmri_brain"`` | ``"cmrxrecon_cine"``).
        patient_id: Needed for cine, whose stems (``cine_sax``) repeat across patients.

    Returns:
        ``<stem>`` for fastMRI, ``<patient_id>_<view>`` for cine (``cine_`` dropped).
    """
    stem = Path(source_path).stem
    if fmt == "cmrxrecon_cine":
        if not patient_id:
            raise ValueError(f"{source_path}: a cine cache entry needs the patient id")
        view = stem[len("cine_"):] if stem.startswith("cine_") else stem
        return f"{patient_id}_{view}"
    return stem


def entry_path(cache_dir: str | PathLike[str], domain: str, name: str) -> Path:
    """``<cache_dir>/<domain>/<name>.h5``."""
    return Path(cache_dir) / domain / f"{name}.h5"


# -- source fingerprint -------------------------------------------------------------------------


def file_sha256(path: str | PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_info(path: str | PathLike[str], *, with_hash: bool = True) -> dict[str, Any]:
    """``{path, size, mtime_ns, sha256}`` of a source file (``sha256`` None when not asked)."""
    path = Path(path)
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "sha256": file_sha256(path) if with_hash else None,
    }


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` through a JSON round trip (tuples -> lists), for equality tests."""
    return json.loads(json.dumps(params, sort_keys=True))


# -- writing ------------------------------------------------------------------------------------


def write_entry(path: str | PathLike[str], entry: VolumeEntry) -> Path:
    """Validate ``entry`` and write it atomically to ``path`` (see the module docstring).

    Returns:
        ``path``.

    Raises:
        ValueError: Inconsistent shapes or dtypes (nothing is written).
    """
    path = Path(path)
    problem = _array_problem(entry)
    if problem is not None:
        raise ValueError(f"{path}: {problem[0]}: {problem[1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    n, _, h, w = entry.image.shape
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=entry.image.astype(np.float32), chunks=(1, 2, h, w))
            maps = entry.maps.astype(np.complex64)
            f.create_dataset("maps", data=maps, chunks=(1, *maps.shape[1:]), compression="lzf")
            f.create_dataset("scale", data=np.asarray(entry.scale, np.float32))
            f.create_dataset("slice_index", data=np.asarray(entry.slice_index, np.int32))
            f.create_dataset("frame", data=np.asarray(entry.frame, np.int32))
            f.attrs["metadata"] = json.dumps(entry.metadata.replace(slice=None).to_dict())
            f.attrs["domain"] = entry.domain
            f.attrs["patient_id"] = entry.patient_id
            f.attrs["fname"] = entry.fname
            f.attrs["format"] = entry.format
            f.attrs["source"] = json.dumps(entry.source, sort_keys=True)
            f.attrs["params"] = json.dumps(canonical_params(entry.params), sort_keys=True)
            f.attrs["version"] = int(entry.version)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_tmp(directory: str | PathLike[str]) -> list[Path]:
    """Delete ``*.tmp`` files left by crashed writes under ``directory`` (recursively).

    Returns:
        The deleted paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.rglob(f"*{TMP_SUFFIX}")):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# -- reading ------------------------------------------------------------------------------------


def read_entry(path: str | PathLike[str], *, load_maps: bool = True) -> VolumeEntry:
    """Read and validate one cache file.

    Args:
        path: A ``.h5`` written by :func:`write_entry`.
        load_maps: Also read ``maps`` (the largest dataset).

    Raises:
        DataFileError: Missing file, dataset or attribute, wrong shape or dtype,
            non-finite values, unreadable JSON, or another cache version; the
            message names the field and says to rerun the preprocessing.
    """
    path = Path(path)
    hint = "delete it and rerun `python -m metamri.preprocess`"
    if not path.is_file():
        raise DataFileError(path, "no such cache entry")
    try:
        with h5py.File(path, "r") as f:
            for name in _DATASETS:
                if not isinstance(f.get(name), h5py.Dataset):
                    raise DataFileError(path, "missing dataset in cache entry", field=name, hint=hint)
            for name in _ATTRS:
                if name not in f.attrs:
                    raise DataFileError(path, "missing attribute in cache entry", field=f"attrs/{name}", hint=hint)
            version = int(f.attrs["version"])
            if version != CACHE_VERSION:
                raise DataFileError(
                    path, f"cache version {version}, this code reads version {CACHE_VERSION}",
                    field="attrs/version", value=version, hint="rerun `python -m metamri.preprocess`",
                )
            if f["maps"].dtype != np.complex64:
                raise DataFileError(path, "maps must be complex64", field="maps", value=str(f["maps"].dtype), hint=hint)
            entry = VolumeEntry(
                image=np.asarray(f["image"][()]),
                maps=np.asarray(f["maps"][()]) if load_maps else None,
                scale=np.asarray(f["scale"][()]),
                slice_index=np.asarray(f["slice_index"][()]),
                frame=np.asarray(f["frame"][()]),
                metadata=Metadata.from_dict(_json_attr(f, "metadata", path)),
                domain=_str_attr(f, "domain"),
                patient_id=_str_attr(f, "patient_id"),
                fname=_str_attr(f, "fname"),
                format=_str_attr(f, "format"),
                source=_json_attr(f, "source", path),
                params=_json_attr(f, "params", path),
                version=version,
            )
            maps_shape = tuple(f["maps"].shape)
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, MetadataError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataFileError(path, f"not a valid cache entry ({reason})", hint=hint) from None
    problem = _array_problem(entry, maps_shape)
    if problem is not None:
        raise DataFileError(path, problem[1], field=problem[0], hint=hint)
    return entry


def read_attrs(path: str | PathLike[str]) -> dict[str, Any] | None:
    """The attributes of a cache file (JSON decoded), or ``None`` if it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            out: dict[str, Any] = {}
            for name in _ATTRS:
                value = f.attrs[name]
                out[name] = json.loads(value) if name in ("metadata", "source", "params") else value
            out["version"] = int(out["version"])
            return out
    except (OSError, KeyError, ValueError, TypeError):
        return None


def is_up_to_date(entry: str | PathLike[str], source_path: str | PathLike[str], params: dict[str, Any]) -> bool:
    """Whether the cache file ``entry`` was made from ``source_path`` as it is now, with ``params``.

    Rule (module docstring): same version and params, same source size, and
    same mtime or, when only the mtime changed, same SHA-256. A missing or
    unreadable entry is not up to date.
    """
    entry, source_path = Path(entry), Path(source_path)
    if not entry.is_file() or not source_path.is_file():
        return False
    attrs = read_attrs(entry)
    if attrs is None or attrs["version"] != CACHE_VERSION:
        return False
    if attrs["params"] != canonical_params(params):
        return False
    recorded = attrs["source"]
    if not isinstance(recorded, dict):
        return False
    st = source_path.stat()
    if recorded.get("size") != st.st_size:
        return False
    if recorded.get("mtime_ns") == st.st_mtime_ns:
        return True
    return recorded.get("sha256") is not None and recorded["sha256"] == file_sha256(source_path)


# -- validation helpers -------------------------------------------------------------------------


def _array_problem(entry: VolumeEntry, maps_shape: tuple[int, ...] | None = None) -> tuple[str, str] | None:
    """The first (field, problem) of an entry's arrays (shapes, dtypes, finiteness), or ``None``."""
    image = np.asarray(entry.image)
    if image.ndim != 4 or image.shape[1] != 2 or image.dtype != np.float32:
        return "image", f"expected float32 (N, 2, H, W), got {image.dtype} {image.shape}"
    n, _, h, w = image.shape
    if n == 0:
        return "image", "no items"
    if maps_shape is None:
        if entry.maps is None:
            return "maps", "maps are required"
        if not np.iscomplexobj(entry.maps):
            return "maps", f"expected complex maps, got {entry.maps.dtype}"
        maps_shape = tuple(entry.maps.shape)
    if len(maps_shape) != 4 or maps_shape[0] != n or tuple(maps_shape[2:]) != (h, w):
        return "maps", f"expected shape (N={n}, C, {h}, {w}), got {maps_shape}"
    for name in ("scale", "slice_index", "frame"):
        shape = np.shape(getattr(entry, name))
        if shape != (n,):
            return name, f"expected shape ({n},), got {shape}"
    if not np.isfinite(image).all():
        return "image", "non-finite values"
    scale = np.asarray(entry.scale, dtype=np.float64)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        return "scale", f"scales must be finite and > 0, got {scale.min()}..{scale.max()}"
    return None


def _str_attr(f: h5py.File, name: str) -> str:
    value = f.attrs[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_attr(f: h5py.File, name: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_str_attr(f, name))
    except json.JSONDecodeError as err:
        raise DataFileError(path, f"attribute is not valid JSON ({err})", field=f"attrs/{name}") from None
    if not isinstance(value, dict):
        raise DataFileError(path, "attribute must be a JSON object", field=f"attrs/{name}", value=value)
    return value
