"""Raw volumes -> cache entries: ESPIRiT maps, MVUE, centre crop, p99 normalisation.

Per item (slice, or slice x frame for cine) of a volume read through
:func:`metamri.data.readers.open_volume`:

1. ``S = ESPIRiT(y)`` on the full (readout, phase) grid (:mod:`~metamri.preprocess.espirit`);
2. ``x = MVUE(y, S)`` (:func:`~metamri.preprocess.mvue.mvue`);
3. ``x`` and ``S`` are centre-cropped to the file's recon size (this removes the
   2x readout oversampling of fastMRI brain and its varying phase width:
   640 x 320..396 -> 320 x 320), then, when ``image_size`` is set, zero-padded to it
   (so brain and cardiac, and volumes of different widths, share one size);
4. ``x / s`` with ``s`` the 99th percentile of ``|x|`` is stored as 2 channels. The
   maps ``S`` are not stored: evaluation gets them on first use
   (:func:`compute_entry_maps`, "Coil maps" in :mod:`~metamri.preprocess.cache`).

No silent crop: an ``image_size`` smaller than a file's recon size (in either
axis) would cut the object out of every slice (the 64 px phantom default on real
320 x 320 fastMRI data), so :func:`preprocess_directory` stops with a
:class:`~metamri.errors.ConfigError` naming ``image_size``, its value, the file, its
recon size and what to set, before any ESPIRiT work. Centre-cropping on purpose
(CMRxRecon cine, whose readout of 448-512 samples is brought to 320 for the 1:5 OOD
setting) takes ``allow_crop=True``. ``image_size=None`` keeps each file's recon size.

:func:`preprocess_volume` writes one volume's entry (:mod:`~metamri.preprocess.cache`);
:func:`preprocess_directory` finds raw files, skips up-to-date entries, runs the
rest inline or in worker processes, and returns a :class:`PreprocessSummary`.
The data modules call :func:`preprocess_directory`; the command line is
``python -m metamri.preprocess``.

Only fully sampled data can be preprocessed (the MVUE is the training target):
files holding a sampling mask fail with a clear error, and CMRxRecon
``AccFactor*`` folders are not searched.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from metamri.data.readers import VolumeFile, detect_format, open_volume
from metamri.errors import ConfigError, DataFileError
from metamri.metadata.missing import required_fields
from metamri.preprocess.cache import (
    EntryIndex,
    VolumeEntry,
    canonical_params,
    entry_name,
    entry_path,
    is_up_to_date,
    remove_maps,
    remove_stale_tmp,
    shared_cine_maps,
    source_info,
    source_matches,
    write_entry,
)
from metamri.preprocess.espirit import EspiritEstimator, EspiritParams, make_estimator
from metamri.preprocess.mvue import crop_or_pad, mvue, p99_normalize, to_two_channel

log = logging.getLogger(__name__)

#: Raw files searched for under an input directory.
FASTMRI_GLOB = "*.h5"
CINE_GLOB = "cine_*.mat"
#: Folder names skipped while searching (undersampled CMRxRecon copies).
SKIP_DIR_PREFIXES = ("AccFactor",)


#: Ways of estimating cine coil maps (see ``PreprocessParams.cine_maps``).
CINE_MAPS = ("time_average", "per_frame")


@dataclass(frozen=True)
class PreprocessParams:
    """Everything that decides the content of a cache entry.

    Attributes:
        espirit: ESPIRiT settings (:class:`~metamri.preprocess.espirit.EspiritParams`; a
            mapping of its fields is accepted); its ``backend`` may be ``"auto"``
            (resolve with :meth:`resolved`).
        image_size: (H, W) the images and maps are brought to after cropping to
            the recon size, or ``None`` to keep each file's recon size.
        cardiac_frames: Cine frames to keep: ``"all"``, one index, or a tuple of indices.
        cine_maps: How cine coil maps are estimated: ``"time_average"`` (default: one
            ESPIRiT per slice from the k-space averaged over the kept frames; coils do not
            move over the cardiac cycle, and it is one ESPIRiT call per slice instead of
            one per frame) or ``"per_frame"`` (one per frame and slice).
        allow_crop: Let ``image_size`` be smaller than a file's recon size (the images are
            then centre-cropped); ``False`` refuses such a file (:func:`check_image_size`).
            A guard, not part of an entry's content (left out of :meth:`cache_params`).
    """

    espirit: EspiritParams = EspiritParams()
    image_size: tuple[int, int] | None = None
    cardiac_frames: str | int | tuple[int, ...] = "all"
    cine_maps: str = "time_average"
    allow_crop: bool = False

    def __post_init__(self) -> None:
        if self.cine_maps not in CINE_MAPS:
            raise ConfigError("cine_maps", self.cine_maps, f"choose one of {list(CINE_MAPS)}")
        object.__setattr__(self, "espirit", EspiritParams.from_config(self.espirit))
        object.__setattr__(self, "image_size", _image_size(self.image_size))
        object.__setattr__(self, "cardiac_frames", _frames(self.cardiac_frames))
        object.__setattr__(self, "allow_crop", bool(self.allow_crop))
        self.estimator()  # validates the ESPIRiT parameters (and the backend once resolved)

    def resolved(self) -> PreprocessParams:
        """A copy with ``espirit.backend`` resolved (``"auto"`` -> ``"bart"``/``"sigpy"``)."""
        return replace(self, espirit=self.espirit.resolved())

    def estimator(self) -> EspiritEstimator:
        """The ESPIRiT estimator these parameters describe (``self.espirit.estimator()``)."""
        return make_estimator(self.espirit)

    def cache_params(self, fmt: str) -> dict[str, Any]:
        """The JSON stored in (and compared with) a cache entry of format ``fmt``.

        Only what changes that entry's content: the cine frame choice is left out
        of static formats, so changing it does not recompute the brain cache.
        """
        out: dict[str, Any] = {
            "espirit": self.estimator().params(),
            "image_size": None if self.image_size is None else list(self.image_size),
            "normalization": "p99",
        }
        if fmt == "cmrxrecon_cine":
            frames = self.cardiac_frames
            out["cardiac_frames"] = list(frames) if isinstance(frames, tuple) else frames
            out["cine_maps"] = self.cine_maps
        return out

    @classmethod
    def from_cache_params(cls, fmt: str, params: dict[str, Any]) -> PreprocessParams:
        """The parameters an entry of format ``fmt`` was made with, from its ``params`` record.

        Raises:
            ValueError: The record is incomplete, or this code would not write the same
                record back (other ESPIRiT settings than the ones exposed here).
        """
        try:
            esp = params["espirit"]
            espirit = EspiritParams(
                backend=str(esp["backend"]), calib_size=int(esp["calib_size"]),
                kernel_size=int(esp["kernel_size"]), threshold=float(esp["threshold"]),
                crop=float(esp["crop"]),
            )
            out = cls(
                espirit=espirit, image_size=params["image_size"],
                cardiac_frames=params.get("cardiac_frames", "all"),
                cine_maps=params.get("cine_maps", "time_average"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"incomplete preprocessing parameters (missing {err})") from None
        if canonical_params(out.cache_params(fmt)) != canonical_params(params):
            raise ValueError(f"this code would record {canonical_params(out.cache_params(fmt))}")
        return out

    def reader_kwargs(self, fmt: str) -> dict[str, Any]:
        """Keyword arguments of :func:`open_volume` for a file of format ``fmt``."""
        if fmt == "cmrxrecon_cine":
            frames = self.cardiac_frames
            return {"frames": list(frames) if isinstance(frames, tuple) else frames}
        return {}


@dataclass
class PreprocessSummary:
    """What a :func:`preprocess_directory` run did.

    Attributes:
        processed: Cache entries written.
        skipped: Cache entries found up to date.
        failed: (source file, one-line error) of every volume that failed.
        items: Items (slices x frames) preprocessed, i.e. ESPIRiT calls made.
        removed_tmp: Leftover ``*.tmp`` files of crashed runs that were deleted.
        seconds: Wall-clock time of the run.
    """

    processed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    items: int = 0
    removed_tmp: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No volume failed."""
        return not self.failed

    def format(self) -> str:
        """A human-readable report: counts, then one line per failed file."""
        lines = [
            f"preprocess: {len(self.processed)} processed ({self.items} items), "
            f"{len(self.skipped)} up to date (skipped), {len(self.failed)} failed "
            f"in {self.seconds:.1f} s"
        ]
        if self.removed_tmp:
            lines.append(f"  removed {self.removed_tmp} leftover *.tmp file(s) of an interrupted run")
        lines += [f"  FAILED {src}: {err}" for src, err in self.failed]
        return "\n".join(lines)


class PreprocessError(DataFileError):
    """One or more volumes failed to preprocess; ``summary`` has the details."""

    def __init__(self, summary: PreprocessSummary) -> None:
        first_src, first_err = summary.failed[0]
        super().__init__(
            first_src, f"{len(summary.failed)} volume(s) failed to preprocess; first: {first_err}",
            hint="run `python -m metamri.preprocess` for the full list",
        )
        self.summary = summary


# -- one volume ---------------------------------------------------------------------------------


def check_image_size(
    volume: VolumeFile,
    image_size: tuple[int, int] | None,
    *,
    allow_crop: bool = False,
    key: str = "image_size",
) -> None:
    """Refuse an ``image_size`` that would centre-crop ``volume``'s images (no silent crop).

    Args:
        volume: An open raw volume (only its header is read: ``recon_size``).
        image_size: The configured (H, W), or ``None`` (each file's recon size: never a crop).
        allow_crop: Cropping is wanted: never raise.
        key: The configuration key named in the error.

    Raises:
        ConfigError: ``image_size`` is smaller than the recon size in either axis.
    """
    oversized = [] if allow_crop else _oversized([volume], image_size)
    if oversized:
        _raise_oversized(oversized, image_size, key=key, prefix="")


def _oversized(volumes: Sequence[VolumeFile], size: tuple[int, int] | None) -> list[tuple[Path, tuple[int, int]]]:
    if size is None:
        return []
    out = []
    for v in volumes:
        rh, rw = v.recon_size
        if rh > size[0] or rw > size[1]:
            out.append((v.path, (int(rh), int(rw))))
    return out


def _raise_oversized(
    oversized: list[tuple[Path, tuple[int, int]]], size: tuple[int, int] | None, *, key: str, prefix: str,
    total: int | None = None,
) -> None:
    path, (rh, rw) = oversized[0]
    assert size is not None
    need_h = max(max(r[0] for _, r in oversized), size[0])
    need_w = max(max(r[1] for _, r in oversized), size[1])
    more = "" if len(oversized) == 1 else f" (and {len(oversized) - 1} more of {total or len(oversized)} files)"
    suggest = str(need_h) if need_h == need_w else f"[{need_h},{need_w}]"
    raise ConfigError(
        key, list(size),
        f"smaller than the recon size {rh} x {rw} of {path}{more}: every slice would be centre-cropped "
        f"to {size[0]} x {size[1]}",
        hint=f"set {prefix}image_size={suggest} (or null: each file's recon size; 320 for fastMRI brain), "
             f"or {prefix}allow_crop=true to crop on purpose",
    )


def _fit(array: np.ndarray, recon_size: tuple[int, int], size: tuple[int, int] | None) -> np.ndarray:
    """Centre-crop (..., readout, phase) to the recon size, then crop/pad to ``size``."""
    array = crop_or_pad(array, recon_size)
    return array if size is None else crop_or_pad(array, size)


def preprocess_volume(
    volume: VolumeFile,
    cache_dir: str | PathLike[str],
    params: PreprocessParams,
    *,
    estimator: EspiritEstimator | None = None,
) -> Path:
    """Preprocess every item of ``volume`` and write its cache entry atomically.

    The entry holds the images, not the coil maps (they are recomputed on first use
    by evaluation, :func:`compute_entry_maps`); maps files of an earlier entry of the
    same name are deleted.

    Args:
        volume: An open raw volume (:func:`metamri.data.readers.open_volume`);
            for cine, open it with ``frames=`` (see :meth:`PreprocessParams.reader_kwargs`).
        cache_dir: Cache root; the entry goes to ``<cache_dir>/<domain>/<name>.h5``.
        params: Preprocessing parameters (``"auto"`` is resolved here).
        estimator: ESPIRiT estimator to use (default: ``params.estimator()``).

    Returns:
        The entry's path.

    Raises:
        ConfigError: ``params.image_size`` would crop the volume and ``params.allow_crop``
            is false (:func:`check_image_size`).
        DataFileError: Undersampled data, an unreadable item, or an item whose
            ESPIRiT/MVUE fails (the message names the file and the item).
    """
    params = params.resolved()
    check_image_size(volume, params.image_size, allow_crop=params.allow_crop)
    estimator = estimator or params.estimator()
    fmt = volume.format
    out = entry_path(cache_dir, volume.domain, entry_name(volume.path, fmt, volume.patient_id))
    source = source_info(volume.path)  # fingerprint before reading
    images, scales, slices, frames = [], [], [], []
    shared_maps = shared_cine_maps(fmt, {"cine_maps": params.cine_maps})
    for item, maps in _items_with_maps(volume, estimator, shared_maps):
        where = f"slice {item.slice_index}" + ("" if item.frame is None else f", frame {item.frame}")
        try:
            image = mvue(item.kspace, maps)
        except (ValueError, RuntimeError) as err:
            raise DataFileError(volume.path, f"{where}: ESPIRiT/MVUE failed ({err})", field="kspace") from err
        image, scale = p99_normalize(_fit(image, item.recon_size, params.image_size))
        images.append(to_two_channel(image))
        scales.append(scale)
        slices.append(item.slice_index)
        frames.append(-1 if item.frame is None else item.frame)
    if not images:
        raise DataFileError(volume.path, "the volume has no items (no slices or no frames)")
    entry = VolumeEntry(
        image=np.stack(images),
        maps=None,
        scale=np.asarray(scales, np.float32),
        slice_index=np.asarray(slices, np.int32),
        frame=np.asarray(frames, np.int32),
        metadata=volume.volume_metadata(),
        domain=volume.domain,
        patient_id=volume.patient_id,
        fname=volume.fname,
        format=fmt,
        source=source,
        params=params.cache_params(fmt),
    )
    written = write_entry(out, entry)
    remove_maps(written)
    return written


def compute_entry_maps(index: EntryIndex, rows: Sequence[int]) -> dict[int, np.ndarray]:
    """ESPIRiT maps of items ``rows`` of a cache entry, recomputed from its raw file.

    The same code path as :func:`preprocess_volume` (reader, frame selection, ESPIRiT
    estimator, time-averaged cine k-space, recon-size crop, ``image_size``), with the
    parameters the entry records, so the maps are the ones its MVUE was made with.
    Items sharing one ESPIRiT call (the frames of a cine slice) are estimated once.

    Args:
        index: The entry (:func:`metamri.preprocess.cache.read_index`).
        rows: Item rows of the entry.

    Returns:
        ``{row: complex64 (C, H, W)}``, H x W the entry's image size.

    Raises:
        DataFileError: The raw file is missing or changed since the entry was made, its
            items do not match the entry, the entry's parameters cannot be reproduced,
            or ESPIRiT fails (the message names the entry and the raw file).
    """
    rows = sorted({int(r) for r in rows})
    if not rows:
        return {}
    raw = index.source.get("path")
    rerun = "rerun `python -m metamri.preprocess` on the raw files (or keep them where the cache expects them)"
    if not raw or not Path(raw).is_file():
        raise DataFileError(
            index.path, f"coil maps are computed from the raw file on first use, and it is missing: {raw}",
            field="attrs/source", value=raw, hint=rerun,
        )
    if not source_matches(index.source, raw):
        raise DataFileError(
            index.path, f"the raw file {raw} changed since this entry was made: its coil maps would not "
            "match the cached images", field="attrs/source", hint=rerun,
        )
    try:
        params = PreprocessParams.from_cache_params(index.format, index.params).resolved()
    except ValueError as err:
        raise DataFileError(index.path, f"cannot reproduce its preprocessing ({err})", field="attrs/params",
                            hint=rerun + " with overwrite=true") from None
    volume = open_volume(raw, **params.reader_kwargs(index.format), required_fields=())  # maps only
    estimator = params.estimator()
    shared = shared_cine_maps(index.format, index.params)
    keys = volume.item_keys
    position = {key: i for i, key in enumerate(keys)}
    out: dict[int, np.ndarray] = {}
    done: dict[tuple[int, ...], np.ndarray] = {}
    for r in rows:
        s, t = int(index.slice_index[r]), int(index.frame[r])
        pos = position.get((s, None if t < 0 else t))
        if pos is None:
            raise DataFileError(index.path, f"item {r} (slice {s}, frame {t}) is not in the raw file {raw}",
                                field="slice_index", hint=rerun)
        group = tuple(i for i, k in enumerate(keys) if k[0] == s) if shared else (pos,)
        if group not in done:
            items = [volume[i] for i in group]
            maps = _estimate_group(volume, items, estimator, shared)
            done[group] = _fit(maps, items[0].recon_size, params.image_size).astype(np.complex64)
        maps = done[group]
        if maps.shape[1:] != index.image_size:
            raise DataFileError(index.path, f"recomputed maps are {maps.shape[1:]}, the images {index.image_size}",
                                field="image", hint=rerun + " with overwrite=true")
        out[r] = maps
    return out


# -- a directory --------------------------------------------------------------------------------


def _check_fully_sampled(volume: VolumeFile, item) -> None:
    if item.mask is not None and not np.all(item.mask):
        raise DataFileError(
            volume.path, f"undersampled k-space ({int(np.sum(item.mask))}/{item.mask.size} lines)",
            field="mask", hint="preprocess fully sampled files (fastMRI train/val, CMRxRecon FullSample)",
        )


def _estimate_group(volume: VolumeFile, items: list, estimator: EspiritEstimator, shared: bool):
    """ESPIRiT of a group of items: one estimate from the averaged k-space (``shared``, the
    frames of a cine slice) or the single item's own; complex64 (coils, readout, phase)."""
    for item in items:
        _check_fully_sampled(volume, item)
    try:
        if shared:
            mean_k = np.mean([it.kspace for it in items], axis=0, dtype=np.complex128)
            return estimator(mean_k.astype(np.complex64))
        (item,) = items
        return estimator(item.kspace)
    except (ValueError, RuntimeError) as err:
        first = items[0]
        where = f"slice {first.slice_index}" + ("" if first.frame is None or shared else f", frame {first.frame}")
        what = " (time-averaged k-space)" if shared else ""
        raise DataFileError(volume.path, f"{where}: ESPIRiT/MVUE failed{what} ({err})", field="kspace") from err


def _items_with_maps(volume: VolumeFile, estimator: EspiritEstimator, shared_maps: bool):
    """Yield ``(item, coil maps)`` for every item of ``volume``, each item read once.

    With ``shared_maps`` (cine, ``cine_maps="time_average"``) the frames of a slice (consecutive
    items) are read together and share one ESPIRiT estimate from their averaged k-space: the
    coils do not move over the cardiac cycle, and one call per slice replaces one per frame.
    Otherwise every item gets its own estimate.
    """
    keys = volume.item_keys
    for _, group in itertools.groupby(range(len(volume)), key=lambda i: keys[i][0] if shared_maps else i):
        items = [volume[i] for i in group]
        maps = _estimate_group(volume, items, estimator, shared_maps)
        for item in items:
            yield item, maps


def discover_sources(
    inputs: str | PathLike[str] | Iterable[str | PathLike[str]],
    *,
    exclude: Iterable[str | PathLike[str]] = (),
) -> list[Path]:
    """Raw files under ``inputs``: fastMRI ``*.h5`` and CMRxRecon ``cine_*.mat``.

    Args:
        inputs: A directory or file, or a list of them (files are taken as given).
        exclude: Directories whose contents are never returned (the cache).

    Returns:
        Sorted, de-duplicated paths; hidden files, ``*.tmp`` and anything under an
        ``AccFactor*`` folder are left out.

    Raises:
        ConfigError: An input that does not exist.
    """
    if isinstance(inputs, str | PathLike):
        inputs = [inputs]
    excluded = [Path(e).resolve() for e in exclude]
    found: set[Path] = set()
    for raw in inputs:
        root = Path(raw).expanduser()
        if root.is_file():
            found.add(root.resolve())
            continue
        if not root.is_dir():
            raise ConfigError("input_dir", str(root), "no such file or directory")
        for pattern in (FASTMRI_GLOB, CINE_GLOB):
            for p in root.rglob(pattern):
                rel = p.relative_to(root).parts
                if any(part.startswith(".") for part in rel):
                    continue
                if any(part.startswith(SKIP_DIR_PREFIXES) for part in rel[:-1]):
                    continue
                rp = p.resolve()
                if any(rp.is_relative_to(e) for e in excluded):
                    continue
                if p.is_file():
                    found.add(rp)
    return sorted(found)


def preprocess_directory(
    inputs: str | PathLike[str] | Sequence[str | PathLike[str]],
    cache_dir: str | PathLike[str],
    *,
    espirit: EspiritParams | Mapping[str, Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    cardiac_frames: str | int | Sequence[int] = "all",
    cine_maps: str = "time_average",
    allow_crop: bool = False,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    raise_on_failure: bool = True,
    config_prefix: str = "",
    metadata_fields: str | Sequence[str] | None = None,
    metadata_strict: bool = False,
) -> PreprocessSummary:
    """Bring the cache of every raw file under ``inputs`` up to date.

    Args:
        inputs: Raw data directories or files (see :func:`discover_sources`).
        cache_dir: Cache root (entries go to ``<cache_dir>/<domain>/``).
        espirit: ESPIRiT settings: an :class:`~metamri.preprocess.espirit.EspiritParams`,
            a mapping of some of its fields (a Hydra node; ``_target_`` ignored) or
            ``None`` (the defaults); see :meth:`EspiritParams.from_config`.
        image_size: Final (H, W) (an int for a square), ``None``: each file's recon size.
        cardiac_frames: Cine frames kept: ``"all"``, an index, or a list of indices.
        cine_maps: ``"time_average"`` (one ESPIRiT per cine slice) or ``"per_frame"``.
        allow_crop: Centre-crop files whose recon size exceeds ``image_size``; ``False``
            (default) raises a :class:`ConfigError` before any work (no silent crop).
        workers: Worker processes (over volumes); 0 runs inline.
        overwrite: Recompute entries even when up to date.
        progress: Show a progress bar (tqdm, on stderr).
        raise_on_failure: Raise :class:`PreprocessError` after the run if any
            volume failed (the command line reports instead).
        config_prefix: Prefix of the keys named in configuration errors
            (``"data.preprocess."`` from the data modules).
        metadata_fields: The metadata fields the encoder reads (``data.metadata_fields``):
            every raw file is checked for them when it is planned (up-to-date ones too),
            and one that lacks some is reported once (:mod:`metamri.metadata.missing`);
            ``None``: the schema's required fields; ``()``: no check.
        metadata_strict: A file lacking some of them fails (listed in the summary, then
            :class:`PreprocessError`) instead of a warning.

    Returns:
        The run's :class:`PreprocessSummary`.

    Raises:
        ConfigError: A bad parameter, or ``image_size`` smaller than some file's recon size
            without ``allow_crop`` (names the key, the value, the first such file, its recon
            size, how many files, and what to set).
    """
    start = time.perf_counter()
    if workers < 0:
        raise ConfigError("workers", workers, "must be >= 0 (0 runs inline)")
    try:
        metadata_fields = required_fields(metadata_fields)
    except (KeyError, ValueError) as exc:
        raise ConfigError("metadata_fields", metadata_fields, str(exc.args[0]),
                          hint="a named set (paper, contextmri, all) or a list of schema fields") from None
    params = PreprocessParams(
        espirit=EspiritParams.from_config(espirit), image_size=image_size, cardiac_frames=cardiac_frames,
        cine_maps=cine_maps, allow_crop=allow_crop,
    ).resolved()
    cache_dir = Path(cache_dir).expanduser()
    summary = PreprocessSummary(removed_tmp=len(remove_stale_tmp(cache_dir)))

    # plan: cheap header reads decide the entry name and whether it is up to date
    todo: list[tuple[Path, Path]] = []
    owners: dict[Path, Path] = {}
    oversized: list[tuple[Path, tuple[int, int]]] = []
    sources = discover_sources(inputs, exclude=[cache_dir])
    for src in sources:
        try:
            fmt = detect_format(src)
            volume = open_volume(src, **params.reader_kwargs(fmt), required_fields=metadata_fields,
                                 strict=metadata_strict)
            out = entry_path(cache_dir, volume.domain, entry_name(src, fmt, volume.patient_id))
        except DataFileError as err:
            summary.failed.append((str(src), _one_line(err)))
            continue
        if not params.allow_crop:
            oversized += _oversized([volume], params.image_size)
        if out in owners:
            summary.failed.append((str(src), f"cache entry {out.name} is also made from {owners[out]}"))
            continue
        owners[out] = src
        if not overwrite and is_up_to_date(out, src, params.cache_params(fmt)):
            summary.skipped.append(out)
        else:
            todo.append((src, out))
    if oversized:  # a configuration error: stop before any ESPIRiT work
        _raise_oversized(oversized, params.image_size, key=f"{config_prefix}image_size", prefix=config_prefix,
                         total=len(sources))
    log.info("%d volume(s) to preprocess, %d up to date", len(todo), len(summary.skipped))

    bar = _progress(len(todo), progress)
    if workers == 0:
        for src, _ in todo:
            _record(summary, src, _process_source(str(src), str(cache_dir), params))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork after torch/OpenMP start-up
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_process_source, str(src), str(cache_dir), params): src for src, _ in todo}
            for fut in as_completed(futures):
                _record(summary, futures[fut], fut.result())
                bar.update(1)
    bar.close()
    summary.processed.sort()
    summary.failed.sort()
    summary.seconds = time.perf_counter() - start
    if summary.failed and raise_on_failure:
        raise PreprocessError(summary)
    return summary


def _process_source(src: str, cache_dir: str, params: PreprocessParams) -> tuple[str, Any]:
    """Worker task: ``("ok", (entry path, items))`` or ``("error", one-line message)``.

    Errors travel as text: exceptions with keyword-only constructors
    (``DataFileError``) do not survive pickling between processes.
    """
    try:  # metadata were checked (and reported) when the run was planned
        volume = open_volume(src, **params.reader_kwargs(detect_format(src)), required_fields=())
        out = preprocess_volume(volume, cache_dir, params)
        return "ok", (str(out), len(volume))
    except Exception as err:  # noqa: BLE001 - every failure is reported per file
        log.debug("preprocessing %s failed", src, exc_info=True)
        return "error", _one_line(err)


def _record(summary: PreprocessSummary, src: Path, result: tuple[str, Any]) -> None:
    status, value = result
    if status == "ok":
        summary.processed.append(Path(value[0]))
        summary.items += int(value[1])
    else:
        summary.failed.append((str(src), value))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="preprocess", unit="vol", disable=not enabled or total == 0)


def _image_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError("image_size", value, "expected null, an int or [H, W]") from None
    if h < 1 or w < 1:
        raise ConfigError("image_size", value, "sizes must be positive")
    return (h, w)


def _frames(value: Any) -> str | int | tuple[int, ...]:
    if isinstance(value, str):
        if value != "all":
            raise ConfigError("cardiac_frames", value, "expected 'all', a frame index or a list of indices")
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    try:
        frames = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError("cardiac_frames", value, "expected 'all', a frame index or a list of indices") from None
    if not frames:
        raise ConfigError("cardiac_frames", value, "selects no frame")
    return frames
