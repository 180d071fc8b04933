"""Raw volumes -> cache entries: ESPIRiT maps, MVUE, centre crop, p99 normalisation.

Per item (slice, or slice x frame for cine) of a volume read through
:func:`metamri.data.readers.open_volume`:

1. ``S = ESPIRiT(y)`` on the full (readout, phase) grid (:mod:`~metamri.preprocess.espirit`);
2. ``x = MVUE(y, S)`` (:func:`~metamri.preprocess.mvue.mvue`);
3. ``x`` and ``S`` are centre-cropped to the file's recon size (this removes the
   2x readout oversampling of fastMRI brain: 640 x W -> 320 x 320), then, when
   ``image_size`` is set, centre-cropped or zero-padded to it (so brain and
   cardiac share one size);
4. ``x / s`` with ``s`` the 99th percentile of ``|x|`` is stored as 2 channels.

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
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from metamri.data.readers import VolumeFile, detect_format, open_volume
from metamri.errors import ConfigError, DataFileError
from metamri.preprocess.cache import (
    VolumeEntry,
    entry_name,
    entry_path,
    is_up_to_date,
    remove_stale_tmp,
    source_info,
    write_entry,
)
from metamri.preprocess.espirit import EspiritEstimator, make_estimator, resolve_backend
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
        espirit_backend: ``"auto"`` | ``"bart"`` | ``"sigpy"`` (resolve with :meth:`resolved`).
        calib_size: ESPIRiT calibration block side, k-space samples.
        threshold: ESPIRiT relative singular-value threshold.
        kernel_size: ESPIRiT kernel side, k-space samples.
        crop: ESPIRiT eigenvalue crop in [0, 1).
        image_size: (H, W) the images and maps are brought to after cropping to
            the recon size, or ``None`` to keep each file's recon size.
        cardiac_frames: Cine frames to keep: ``"all"``, one index, or a tuple of indices.
        cine_maps: How cine coil maps are estimated: ``"time_average"`` (default: one
            ESPIRiT per slice from the k-space averaged over the kept frames; coils do not
            move over the cardiac cycle, and it is one ESPIRiT call per slice instead of
            one per frame) or ``"per_frame"`` (one per frame and slice).
    """

    espirit_backend: str = "auto"
    calib_size: int = 24
    threshold: float = 0.02
    kernel_size: int = 6
    crop: float = 0.95
    image_size: tuple[int, int] | None = None
    cardiac_frames: str | int | tuple[int, ...] = "all"
    cine_maps: str = "time_average"

    def __post_init__(self) -> None:
        if self.cine_maps not in CINE_MAPS:
            raise ConfigError("cine_maps", self.cine_maps, f"choose one of {list(CINE_MAPS)}")
        object.__setattr__(self, "image_size", _image_size(self.image_size))
        object.__setattr__(self, "cardiac_frames", _frames(self.cardiac_frames))
        self.estimator()  # validates the ESPIRiT parameters (and the backend once resolved)

    def resolved(self) -> PreprocessParams:
        """A copy with ``espirit_backend`` resolved (``"auto"`` -> ``"bart"``/``"sigpy"``)."""
        return PreprocessParams(**{**self.__dict__, "espirit_backend": resolve_backend(self.espirit_backend)})

    def estimator(self) -> EspiritEstimator:
        """The ESPIRiT estimator these parameters describe."""
        return make_estimator(
            self.espirit_backend,
            calib_size=int(self.calib_size),
            threshold=float(self.threshold),
            kernel_size=int(self.kernel_size),
            crop=float(self.crop),
        )

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


def preprocess_volume(
    volume: VolumeFile,
    cache_dir: str | PathLike[str],
    params: PreprocessParams,
    *,
    estimator: EspiritEstimator | None = None,
) -> Path:
    """Preprocess every item of ``volume`` and write its cache entry atomically.

    Args:
        volume: An open raw volume (:func:`metamri.data.readers.open_volume`);
            for cine, open it with ``frames=`` (see :meth:`PreprocessParams.reader_kwargs`).
        cache_dir: Cache root; the entry goes to ``<cache_dir>/<domain>/<name>.h5``.
        params: Preprocessing parameters (``"auto"`` is resolved here).
        estimator: ESPIRiT estimator to use (default: ``params.estimator()``).

    Returns:
        The entry's path.

    Raises:
        DataFileError: Undersampled data, an unreadable item, or an item whose
            ESPIRiT/MVUE fails (the message names the file and the item).
    """
    params = params.resolved()
    estimator = estimator or params.estimator()
    fmt = volume.format
    out = entry_path(cache_dir, volume.domain, entry_name(volume.path, fmt, volume.patient_id))
    source = source_info(volume.path)  # fingerprint before reading
    size = params.image_size
    images, maps_out, scales, slices, frames = [], [], [], [], []
    shared_maps = fmt == "cmrxrecon_cine" and params.cine_maps == "time_average"
    for item, maps in _items_with_maps(volume, estimator, shared_maps):
        where = f"slice {item.slice_index}" + ("" if item.frame is None else f", frame {item.frame}")
        try:
            image = mvue(item.kspace, maps)
        except (ValueError, RuntimeError) as err:
            raise DataFileError(volume.path, f"{where}: ESPIRiT/MVUE failed ({err})", field="kspace") from err
        image, maps = crop_or_pad(image, item.recon_size), crop_or_pad(maps, item.recon_size)
        if size is not None:
            image, maps = crop_or_pad(image, size), crop_or_pad(maps, size)
        image, scale = p99_normalize(image)
        images.append(to_two_channel(image))
        maps_out.append(maps.astype(np.complex64))
        scales.append(scale)
        slices.append(item.slice_index)
        frames.append(-1 if item.frame is None else item.frame)
    if not images:
        raise DataFileError(volume.path, "the volume has no items (no slices or no frames)")
    entry = VolumeEntry(
        image=np.stack(images),
        maps=np.stack(maps_out),
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
    return write_entry(out, entry)


# -- a directory --------------------------------------------------------------------------------


def _check_fully_sampled(volume: VolumeFile, item) -> None:
    if item.mask is not None and not np.all(item.mask):
        raise DataFileError(
            volume.path, f"undersampled k-space ({int(np.sum(item.mask))}/{item.mask.size} lines)",
            field="mask", hint="preprocess fully sampled files (fastMRI train/val, CMRxRecon FullSample)",
        )


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
        for item in items:
            _check_fully_sampled(volume, item)
        try:
            if shared_maps:
                mean_k = np.mean([it.kspace for it in items], axis=0, dtype=np.complex128)
                maps = [estimator(mean_k.astype(np.complex64))] * len(items)
            else:
                maps = [estimator(it.kspace) for it in items]
        except (ValueError, RuntimeError) as err:
            first = items[0]
            where = f"slice {first.slice_index}" + ("" if first.frame is None or shared_maps else f", frame {first.frame}")
            what = " (time-averaged k-space)" if shared_maps else ""
            raise DataFileError(volume.path, f"{where}: ESPIRiT/MVUE failed{what} ({err})", field="kspace") from err
        yield from zip(items, maps, strict=True)


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
    espirit_backend: str = "auto",
    calib_size: int = 24,
    threshold: float = 0.02,
    kernel_size: int = 6,
    crop: float = 0.95,
    image_size: int | Sequence[int] | None = None,
    cardiac_frames: str | int | Sequence[int] = "all",
    cine_maps: str = "time_average",
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    raise_on_failure: bool = True,
) -> PreprocessSummary:
    """Bring the cache of every raw file under ``inputs`` up to date.

    Args:
        inputs: Raw data directories or files (see :func:`discover_sources`).
        cache_dir: Cache root (entries go to ``<cache_dir>/<domain>/``).
        espirit_backend, calib_size, threshold, kernel_size, crop: ESPIRiT
            (see :mod:`metamri.preprocess.espirit`).
        image_size: Final (H, W) (an int for a square), ``None``: each file's recon size.
        cardiac_frames: Cine frames kept: ``"all"``, an index, or a list of indices.
        cine_maps: ``"time_average"`` (one ESPIRiT per cine slice) or ``"per_frame"``.
        workers: Worker processes (over volumes); 0 runs inline.
        overwrite: Recompute entries even when up to date.
        progress: Show a progress bar (tqdm, on stderr).
        raise_on_failure: Raise :class:`PreprocessError` after the run if any
            volume failed (the command line reports instead).

    Returns:
        The run's :class:`PreprocessSummary`.
    """
    start = time.perf_counter()
    if workers < 0:
        raise ConfigError("workers", workers, "must be >= 0 (0 runs inline)")
    params = PreprocessParams(
        espirit_backend=espirit_backend, calib_size=calib_size, threshold=threshold,
        kernel_size=kernel_size, crop=crop, image_size=image_size, cardiac_frames=cardiac_frames,
        cine_maps=cine_maps,
    ).resolved()
    cache_dir = Path(cache_dir).expanduser()
    summary = PreprocessSummary(removed_tmp=len(remove_stale_tmp(cache_dir)))

    # plan: cheap header reads decide the entry name and whether it is up to date
    todo: list[tuple[Path, Path]] = []
    owners: dict[Path, Path] = {}
    for src in discover_sources(inputs, exclude=[cache_dir]):
        try:
            fmt = detect_format(src)
            volume = open_volume(src, **params.reader_kwargs(fmt))
            out = entry_path(cache_dir, volume.domain, entry_name(src, fmt, volume.patient_id))
        except DataFileError as err:
            summary.failed.append((str(src), _one_line(err)))
            continue
        if out in owners:
            summary.failed.append((str(src), f"cache entry {out.name} is also made from {owners[out]}"))
            continue
        owners[out] = src
        if not overwrite and is_up_to_date(out, src, params.cache_params(fmt)):
            summary.skipped.append(out)
        else:
            todo.append((src, out))
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
    try:
        volume = open_volume(src, **params.reader_kwargs(detect_format(src)))
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
