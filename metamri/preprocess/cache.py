"""The preprocessed cache: one HDF5 file per source volume, and coil maps kept apart.

Layout::

    <cache_dir>/<domain>/<name>.h5                 the entry (training reads only this)
    <cache_dir>/<domain>/maps/<name>/<key>.h5      coil maps, written on first use (evaluation)

``<name>`` is the source file's stem for fastMRI (``file_brain_AXFLAIR_200_6002447``)
and ``<patient>_<view>`` for CMRxRecon cine (``P001_sax`` from ``P001/cine_sax.mat``,
whose stems repeat across patients); see :func:`entry_name`. The data modules list
``<cache_dir>/<domain>/*.h5`` only, so the ``maps/`` folder is never taken for an entry.

Datasets of an entry (N = items of the volume: slices, or slices x frames for cine,
in the reader's item order):

==============  =====================  ==========================================================
``image``       (N, 2, H, W) float32   normalised MVUE, channels (real, imag): ``mvue / scale``
``scale``       (N,) float32           the p99 divisor: ``image_in_file_units = image * scale``
``slice_index`` (N,) int32             index along the source file's slice axis
``frame``       (N,) int32             cine frame, -1 for static data
``maps``        (N, C, H, W) complex64 *optional*: ESPIRiT maps cropped like the image (h5py
                                       compound r/i, LZF); only in entries written with maps by
                                       other tools (:class:`VolumeEntry` with ``maps``); the
                                       preprocessing pipeline never stores them here
==============  =====================  ==========================================================

``image`` is chunked one item per chunk (reading one slice reads one chunk).

Attributes (strings; JSON where noted):

* ``metadata``: JSON of the volume's :meth:`Metadata.to_dict` (``slice`` = null;
  the data modules fill it from ``slice_index``).
* ``domain``, ``patient_id``, ``fname`` (source file name, seeds masks), ``format``
  (``"fastmri_brain"`` | ``"cmrxrecon_cine"``).
* ``source``: JSON ``{path, size, mtime_ns, sha256}`` of the source file.
* ``params``: JSON of the preprocessing parameters (ESPIRiT backend and
  parameters, image size, cine frames), see ``metamri.preprocess.pipeline``.
* ``version``: :data:`CACHE_VERSION` (int).

Coil maps (version 3)
---------------------
Training never reads coil maps, and at the real size they are most of an entry: 16
slices x 20 coils x 320 x 320 complex64 is 262 MB per volume before compression, 137 MB
after LZF, against 13 MB of images (``docs/benchmarks.md``, "Cache size"). So the pipeline computes the ESPIRiT maps it
needs for the MVUE and drops them; an entry holds the images only. Evaluation asks
for maps (:func:`read_maps`, ``read_entry(load_maps=True)``,
``SliceDataModule.eval_dataset(..., load_maps=True)``) and gets, per item:

1. the entry's own ``maps`` dataset, when it has one; else
2. the maps file ``maps/<name>/<key>.h5`` when it is fresh (below); else
3. maps recomputed from the raw file named in ``source``, with the ESPIRiT settings,
   frames and image size recorded in ``params`` (``metamri.preprocess.pipeline.
   compute_entry_maps``: the same code path as the preprocessing, so the maps are the
   ones the MVUE was made with), then written to the maps file atomically.

So only the items that are evaluated ever get maps on disk (the val slices of the
reconstruction callback, the test split of ``python -m metamri.evaluate``), each
computed once, by whichever process (DDP rank) evaluates it first; a second
process racing on the same item writes the same bytes. ``<key>`` names one ESPIRiT
call: ``s<slice>`` (static data, and cine with ``cine_maps=time_average``, whose
frames share one estimate) or ``s<slice>_f<frame>`` (cine ``per_frame``); see
:func:`maps_key`. A maps file holds ``maps`` (C, H, W) complex64 (LZF) and attrs
``version``, ``entry_source`` and ``entry_params`` (the entry's ``source`` and
``params`` JSON), ``slice_index``, ``frame`` (-1 when shared by the frames). It is
fresh when all three equal the entry's (a recomputed entry invalidates its maps;
:func:`remove_maps` also deletes them when an entry is rewritten).
Recomputing needs the raw file unchanged at its recorded path (same size and mtime,
or same SHA-256): otherwise :func:`read_maps` raises a :class:`DataFileError` that
names the entry, the raw path and what to do. Cost: one ESPIRiT call per evaluated
slice, once (BART, 20 coils, k-space 640 x 368: about 8 s on 2 cores; the maps are
bit-identical to the ones the preprocessing used, ``docs/benchmarks.md``).

Why not store the maps of the val/test volumes at preprocessing time? The split is
the data module's (patients, fractions, seed), decided after the cache exists and
changeable without touching it; maps on first use need no knowledge of it, and cost
disk only for what is actually evaluated.

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
is always complete. Maps files are written through a uniquely named ``*.tmp``
beside them (several processes may write at once). Run one preprocessing job per
cache at a time.

Reading: this module is the only one that knows the layout above. The data modules
find a domain's entries with :func:`list_entries` (:func:`domain_dir`), read the small
per-volume index with :func:`read_index`, an item's metadata with
:meth:`EntryIndex.item_metadata`, open entries with :func:`open_entry`, read one item
with :func:`read_item` and maps with :func:`read_maps`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from metamri.errors import DataFileError, MetadataError
from metamri.metadata.record import Metadata
from metamri.utils.io import atomic_output

log = logging.getLogger(__name__)

#: Bumped whenever the layout or the preprocessing maths change (stale entries are recomputed).
#: 3: coil maps left out of the entries (written on first use under ``maps/``).
CACHE_VERSION = 3
TMP_SUFFIX = ".tmp"
#: Folder (beside the entries of a domain) holding the maps files.
MAPS_DIR = "maps"
_DATASETS = ("image", "scale", "slice_index", "frame")
_ATTRS = ("metadata", "domain", "patient_id", "fname", "format", "source", "params", "version")
_HINT = "delete it and rerun `python -m metamri.preprocess`"


@dataclass
class VolumeEntry:
    """The content of one cache file.

    Attributes:
        image: float32 (N, 2, H, W) normalised MVUE (real, imag).
        maps: complex64 (N, C, H, W) cropped ESPIRiT maps stored in the entry, or ``None``:
            the pipeline's entries (maps are then served by :func:`read_maps`), or read
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


@dataclass(frozen=True)
class EntryIndex:
    """What the data modules keep of one cache entry: everything but the pixel data (small).

    Attributes:
        path: The entry's ``.h5``.
        domain, patient_id, fname, format: As in the entry's attributes.
        metadata: Volume metadata (``slice`` is ``None``; items fill it from ``slice_index``).
        slice_index: int64 (N,).
        frame: int64 (N,), -1 for static data.
        image_shape: (N, 2, H, W) of the ``image`` dataset.
        has_maps: The entry stores its own ``maps`` dataset.
        source: ``{path, size, mtime_ns, sha256}`` of the raw file.
        params: Preprocessing parameters (JSON object).
    """

    path: Path
    domain: str
    patient_id: str
    fname: str
    format: str
    metadata: Metadata
    slice_index: np.ndarray
    frame: np.ndarray
    image_shape: tuple[int, int, int, int]
    has_maps: bool
    source: dict[str, Any]
    params: dict[str, Any]

    @classmethod
    def read(cls, path: str | PathLike[str]) -> EntryIndex:
        """Same as :func:`read_index`."""
        return read_index(path)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the entry's images (and of its maps)."""
        return (int(self.image_shape[2]), int(self.image_shape[3]))

    def item_metadata(self, row: int) -> Metadata:
        """The metadata of item ``row``: the volume's, with ``slice`` from ``slice_index``
        (the entry stores the volume's metadata once, ``slice`` null)."""
        return self.metadata.replace(slice=float(self.slice_index[row]))

    def __len__(self) -> int:
        return len(self.slice_index)


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


def domain_dir(cache_dir: str | PathLike[str], domain: str) -> Path:
    """``<cache_dir>/<domain>/``: the folder of one domain's entries (and of its ``maps/``)."""
    return Path(cache_dir) / domain


def entry_path(cache_dir: str | PathLike[str], domain: str, name: str) -> Path:
    """``<cache_dir>/<domain>/<name>.h5``."""
    return domain_dir(cache_dir, domain) / f"{name}.h5"


def list_entries(cache_dir: str | PathLike[str], domain: str) -> list[Path]:
    """The entries of one domain, sorted: ``<cache_dir>/<domain>/*.h5`` (never a maps file,
    never a ``*.tmp`` of an interrupted write); ``[]`` when the folder does not exist."""
    return sorted(p for p in domain_dir(cache_dir, domain).glob("*.h5") if p.is_file())


def shared_cine_maps(fmt: str, params: dict[str, Any]) -> bool:
    """Whether the frames of a slice share one ESPIRiT estimate (cine with
    ``cine_maps="time_average"``, the default), for an entry of format ``fmt`` made with ``params``."""
    return fmt == "cmrxrecon_cine" and params.get("cine_maps", "time_average") == "time_average"


def maps_key(slice_index: int, frame: int, *, shared: bool) -> str:
    """The name of one ESPIRiT call's maps file: ``s0003`` or ``s0003_f0011``.

    Args:
        slice_index: The item's slice.
        frame: Its cine frame, -1 for static data.
        shared: The frames of a slice share one estimate (:func:`shared_cine_maps`).
    """
    return f"s{int(slice_index):04d}" if shared or frame < 0 else f"s{int(slice_index):04d}_f{int(frame):04d}"


def maps_dir(entry: str | PathLike[str]) -> Path:
    """``<cache_dir>/<domain>/maps/<name>/``: where the maps files of entry ``<name>.h5`` go."""
    entry = Path(entry)
    return entry.parent / MAPS_DIR / entry.stem


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


def source_matches(recorded: Any, source_path: str | PathLike[str]) -> bool:
    """Whether the file at ``source_path`` is the one ``recorded`` (a ``source`` attribute)
    describes: same size, and same mtime or, when only the mtime changed, same SHA-256."""
    source_path = Path(source_path)
    if not isinstance(recorded, dict) or not source_path.is_file():
        return False
    st = source_path.stat()
    if recorded.get("size") != st.st_size:
        return False
    if recorded.get("mtime_ns") == st.st_mtime_ns:
        return True
    return recorded.get("sha256") is not None and recorded["sha256"] == file_sha256(source_path)


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` through a JSON round trip (tuples -> lists), for equality tests."""
    return json.loads(json.dumps(params, sort_keys=True))


def _canonical_json(value: Any) -> str:
    return json.dumps(json.loads(json.dumps(value, sort_keys=True)), sort_keys=True)


# -- writing ------------------------------------------------------------------------------------


def write_entry(path: str | PathLike[str], entry: VolumeEntry) -> Path:
    """Validate ``entry`` and write it atomically to ``path`` (see the module docstring).

    ``entry.maps`` is stored only when given (the pipeline gives ``None``).

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
            if entry.maps is not None:
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


def remove_maps(entry: str | PathLike[str]) -> None:
    """Delete the maps files of ``entry`` (when the entry is rewritten they are stale)."""
    shutil.rmtree(maps_dir(entry), ignore_errors=True)


# -- reading ------------------------------------------------------------------------------------


def _check_layout(f: h5py.File, path: Path) -> int:
    """Raise :class:`DataFileError` for a missing dataset/attribute or another version."""
    for name in _DATASETS:
        if not isinstance(f.get(name), h5py.Dataset):
            raise DataFileError(path, "missing dataset in cache entry", field=name, hint=_HINT)
    for name in _ATTRS:
        if name not in f.attrs:
            raise DataFileError(path, "missing attribute in cache entry", field=f"attrs/{name}", hint=_HINT)
    version = int(f.attrs["version"])
    if version != CACHE_VERSION:
        raise DataFileError(
            path, f"cache version {version}, this code reads version {CACHE_VERSION}",
            field="attrs/version", value=version, hint="rerun `python -m metamri.preprocess`",
        )
    if "maps" in f and f["maps"].dtype != np.complex64:
        raise DataFileError(path, "maps must be complex64", field="maps", value=str(f["maps"].dtype), hint=_HINT)
    return version


def _invalid(path: Path, err: BaseException) -> DataFileError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return DataFileError(path, f"not a valid cache entry ({reason})", hint=_HINT)


def read_entry(path: str | PathLike[str], *, load_maps: bool = True) -> VolumeEntry:
    """Read and validate one cache file.

    Args:
        path: A ``.h5`` written by :func:`write_entry`.
        load_maps: Also give the coil maps: the entry's own, else from the maps store,
            computed from the raw file on first use (:func:`read_maps`).

    Raises:
        DataFileError: Missing file, dataset or attribute, wrong shape or dtype,
            non-finite values, unreadable JSON, or another cache version; the
            message names the field and says to rerun the preprocessing. With
            ``load_maps``, also when the maps cannot be had (:func:`read_maps`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such cache entry")
    try:
        with h5py.File(path, "r") as f:
            version = _check_layout(f, path)
            has_maps = "maps" in f
            entry = VolumeEntry(
                image=np.asarray(f["image"][()]),
                maps=np.asarray(f["maps"][()]) if load_maps and has_maps else None,
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
            maps_shape = tuple(f["maps"].shape) if has_maps else None
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, MetadataError) as err:
        raise _invalid(path, err) from None
    problem = _array_problem(entry, maps_shape, maps_required=False)
    if problem is not None:
        raise DataFileError(path, problem[1], field=problem[0], hint=_HINT)
    if load_maps and not has_maps:
        entry.maps = read_maps(read_index(path), range(len(entry)))
    return entry


def read_index(path: str | PathLike[str]) -> EntryIndex:
    """The :class:`EntryIndex` of one cache entry: attributes and the small datasets only.

    Raises:
        DataFileError: Not a readable entry of this cache version (names the file and field).
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            _check_layout(f, path)
            index = EntryIndex(
                path=path,
                domain=_str_attr(f, "domain"),
                patient_id=_str_attr(f, "patient_id"),
                fname=_str_attr(f, "fname"),
                format=_str_attr(f, "format"),
                metadata=Metadata.from_dict(_json_attr(f, "metadata", path)),
                slice_index=np.asarray(f["slice_index"][()], dtype=np.int64),
                frame=np.asarray(f["frame"][()], dtype=np.int64),
                image_shape=tuple(int(v) for v in f["image"].shape),  # type: ignore[arg-type]
                has_maps="maps" in f,
                source=_json_attr(f, "source", path),
                params=_json_attr(f, "params", path),
            )
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, MetadataError) as err:
        raise _invalid(path, err) from None
    n = index.image_shape[0]
    if len(index.image_shape) != 4 or index.image_shape[1] != 2:
        raise DataFileError(path, f"expected (N, 2, H, W), got {index.image_shape}", field="image", hint=_HINT)
    for name in ("slice_index", "frame"):
        if getattr(index, name).shape != (n,):
            raise DataFileError(path, f"expected shape ({n},), got {getattr(index, name).shape}", field=name,
                                hint=_HINT)
    return index


def open_entry(path: str | PathLike[str]) -> h5py.File:
    """An open, read-only handle on a cache entry (the caller closes it).

    Raises:
        DataFileError: The file cannot be opened.
    """
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise _invalid(Path(path), err) from None


def read_item(f: h5py.File, row: int, path: str | PathLike[str] | None = None) -> tuple[np.ndarray, float]:
    """Item ``row`` of an open entry (:func:`open_entry`).

    Returns:
        ``(image, scale)``: float32 (2, H, W) normalised MVUE and its p99 divisor.

    Raises:
        DataFileError: Non-finite values, or a broken file (names the file and the row).
    """
    where = Path(path if path is not None else f.filename)
    try:
        image = np.asarray(f["image"][row], dtype=np.float32)
        scale = float(f["scale"][row])
    except (OSError, KeyError, ValueError) as err:
        raise _invalid(where, err) from None
    if not np.isfinite(image).all():
        raise DataFileError(where, "non-finite values in the cached image", field=f"image[{row}]", hint=_HINT)
    return image, scale


def read_maps(
    index: EntryIndex,
    rows: Sequence[int] | range,
    *,
    handle: h5py.File | None = None,
    compute: bool = True,
) -> np.ndarray:
    """Coil maps of items ``rows`` of an entry (see "Coil maps" in the module docstring).

    Args:
        index: The entry (:func:`read_index`).
        rows: Item rows, any order.
        handle: An open handle on the entry (saves an open when it stores its own maps).
        compute: Recompute missing or stale maps from the raw file (and store them);
            ``False`` raises instead.

    Returns:
        complex64 (len(rows), C, H, W), H x W the entry's image size.

    Raises:
        DataFileError: No maps can be had: the entry stores none and the raw file is
            missing or changed, or ``compute`` is false (names entry, raw file, hint).
    """
    rows = [int(r) for r in rows]
    h, w = index.image_size
    if index.has_maps:
        try:
            if handle is not None:
                maps = [np.asarray(handle["maps"][r]) for r in rows]
            else:
                with h5py.File(index.path, "r") as f:
                    maps = [np.asarray(f["maps"][r]) for r in rows]
        except (OSError, KeyError, ValueError) as err:
            raise _invalid(index.path, err) from None
        return np.stack(maps).astype(np.complex64, copy=False) if maps else np.zeros((0, 0, h, w), np.complex64)
    shared = shared_cine_maps(index.format, index.params)
    keys = [maps_key(index.slice_index[r], index.frame[r], shared=shared) for r in rows]
    found: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(keys):
        maps = _read_maps_file(maps_dir(index.path) / f"{key}.h5", index)
        if maps is not None:
            found[key] = maps
    missing = [r for r, k in zip(rows, keys, strict=True) if k not in found]
    if missing:
        if not compute:
            raise DataFileError(
                index.path, f"no coil maps stored for {len(missing)} item(s)", field="maps",
                hint="read them with compute=True (recomputed from the raw file once)",
            )
        from metamri.preprocess.pipeline import compute_entry_maps  # the maths live there

        computed = compute_entry_maps(index, missing)
        for r, maps in computed.items():
            key = maps_key(index.slice_index[r], index.frame[r], shared=shared)
            if key not in found:
                found[key] = maps
                try:
                    write_maps_file(maps_dir(index.path) / f"{key}.h5", maps, index, r, shared=shared)
                except OSError as err:  # a read-only cache still evaluates, recomputing each time
                    log.warning("%s: could not store coil maps %s (%s)", index.path, key, err)
    if not rows:
        return np.zeros((0, 0, h, w), np.complex64)
    return np.stack([found[k] for k in keys]).astype(np.complex64, copy=False)


def write_maps_file(
    path: str | PathLike[str], maps: np.ndarray, index: EntryIndex, row: int, *, shared: bool
) -> Path:
    """Write one ESPIRiT call's maps (complex64 (C, H, W)) for entry ``index`` atomically.

    The temporary file has a unique name, so processes writing the same maps at once
    do not clobber each other; the last :func:`os.replace` wins (same bytes).
    """
    path = Path(path)
    maps = np.asarray(maps, dtype=np.complex64)
    if maps.ndim != 3 or maps.shape[1:] != index.image_size:
        raise ValueError(f"{path}: maps: expected (C, {index.image_size[0]}, {index.image_size[1]}), got {maps.shape}")
    with atomic_output(path, suffix=TMP_SUFFIX) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("maps", data=maps, compression="lzf")
            f.attrs["version"] = CACHE_VERSION
            f.attrs["entry_source"] = _canonical_json(index.source)
            f.attrs["entry_params"] = _canonical_json(index.params)
            f.attrs["slice_index"] = int(index.slice_index[row])
            f.attrs["frame"] = -1 if shared else int(index.frame[row])
    return path


def _read_maps_file(path: Path, index: EntryIndex) -> np.ndarray | None:
    """The maps in ``path`` if it exists and is fresh for ``index``, else ``None``."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs["version"]) != CACHE_VERSION:
                return None
            if _str_attr(f, "entry_source") != _canonical_json(index.source):
                return None
            if _str_attr(f, "entry_params") != _canonical_json(index.params):
                return None
            ds = f["maps"]
            if ds.dtype != np.complex64 or ds.ndim != 3 or tuple(ds.shape[1:]) != index.image_size:
                return None
            return np.asarray(ds[()])
    except (OSError, KeyError, ValueError, TypeError):
        return None  # unreadable (e.g. truncated): recompute


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
    return source_matches(attrs["source"], source_path)


# -- validation helpers -------------------------------------------------------------------------


def _array_problem(
    entry: VolumeEntry, maps_shape: tuple[int, ...] | None = None, *, maps_required: bool = False
) -> tuple[str, str] | None:
    """The first (field, problem) of an entry's arrays (shapes, dtypes, finiteness), or ``None``.

    Maps are checked when present (``entry.maps`` or ``maps_shape``), required only with
    ``maps_required``.
    """
    image = np.asarray(entry.image)
    if image.ndim != 4 or image.shape[1] != 2 or image.dtype != np.float32:
        return "image", f"expected float32 (N, 2, H, W), got {image.dtype} {image.shape}"
    n, _, h, w = image.shape
    if n == 0:
        return "image", "no items"
    if maps_shape is None and entry.maps is not None:
        if not np.iscomplexobj(entry.maps):
            return "maps", f"expected complex maps, got {entry.maps.dtype}"
        maps_shape = tuple(entry.maps.shape)
    if maps_shape is None and maps_required:
        return "maps", "maps are required"
    if maps_shape is not None and (len(maps_shape) != 4 or maps_shape[0] != n or tuple(maps_shape[2:]) != (h, w)):
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
