"""Reconstruct a split across processes and write its per-slice metrics.

Shared by :class:`~metamri.evaluation.callback.ReconstructionCallback` (during
training) and ``python -m metamri.evaluate``: each process reconstructs its shard
(:func:`~metamri.evaluation.sharding.shard_indices`), the rows are gathered and
merged (:func:`~metamri.evaluation.sharding.gather_rows`), and rank 0 writes

* ``<out_dir>/<stage>_metrics.csv``: one row per (fname, slice, frame, method)
  (:meth:`metamri.metrics.MetricTable.to_csv`, atomic), and
* ``<out_dir>/<stage>_summary.md``: the setup (mask type and parameters, its effective
  acceleration ``W / sampled columns`` as the mean over the slices, which coil maps,
  the methods' settings: :func:`setup_lines`) and a markdown table of mean ± std over
  slices (sample std, ddof 1) and over volumes per method.

Metrics are computed on magnitudes in normalised units (the slice's p99 divisor
cancels in PSNR/SSIM/NMSE because ``data_range`` is the ground truth's maximum).

A metadata corruption that shuffles headers between volumes
(:class:`~metamri.metadata.corruption.MetadataCorruption`) draws its donors among every
volume of ``dataset`` (:func:`volume_records`), not only the evaluated items, so every rank,
and any ``max_slices`` / ``items_per_volume``, sees the same map.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from metamri.errors import ConfigError
from metamri.evaluation.reconstructor import Reconstructor, SliceResult
from metamri.evaluation.sharding import dist_info, gather_objects, gather_rows, shard_indices
from metamri.metadata import Metadata
from metamri.metrics.table import MetricTable
from metamri.utils.io import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class SplitEvaluation:
    """What :func:`evaluate_split` returns.

    Attributes:
        table: The merged per-slice rows of every process (identical on every rank).
        results: This process's first ``keep_results`` :class:`SliceResult` (for panels).
        n_slices: Slices evaluated over all processes.
        accelerations: ``{slice_id: W / sampled columns}`` of every slice, all processes.
    """

    table: MetricTable
    results: list[SliceResult]
    n_slices: int
    accelerations: dict[str, float] = field(default_factory=dict)

    @property
    def effective_acceleration(self) -> float:
        """Mean over slices of ``W / sampled columns`` (NaN without slices)."""
        values = list(self.accelerations.values())
        return float(sum(values) / len(values)) if values else float("nan")


def evaluate_split(
    reconstructor: Reconstructor,
    dataset,
    max_slices: int | None = None,
    lpips_metric=None,
    keep_results: int = 0,
    items_per_volume: int | None = None,
    batch_size: int = 1,
    progress_dir: str | PathLike[str] | None = None,
    fingerprint: dict | None = None,
    stage: str = "test",
) -> SplitEvaluation:
    """Reconstruct the chosen items of ``dataset``, sharded over the process group, and gather the rows.

    The items are those of :func:`select_items` (all, or the central ``items_per_volume``
    of each volume), then the first ``max_slices`` of them.

    Args:
        reconstructor: Reconstructs and scores one :class:`~metamri.data.sample.ImageSample`.
        dataset: Map-style dataset of samples with maps (``eval_dataset(..., load_maps=True)``).
        max_slices: Evaluate only the first ``max_slices`` chosen items (fixed, the same on every rank).
        lpips_metric: Optional :class:`~metamri.metrics.LPIPSMetric`.
        keep_results: How many of this process's :class:`SliceResult` to keep (images).
        items_per_volume: Evaluate only the central ``items_per_volume`` items (slices, or
            slice-frames of cine) of each volume; ``None``: every item.
        batch_size: Slices per sampler call (:meth:`Reconstructor.reconstruct_batch`),
            within each process's shard. 1 (default): every slice alone, bitwise the same
            for any number of processes; larger batches are faster and agree with 1 up to
            floating-point rounding.
        progress_dir: Record every finished batch there and skip the batches a previous,
            interrupted run of the same ``fingerprint`` recorded
            (:class:`~metamri.evaluation.progress.EvaluationProgress`); ``None``: no record.
        fingerprint: The settings the rows depend on (with ``progress_dir``); the item
            count is added here, and the reconstructor's metadata corruption when one is on.
        stage: Names the progress files (the split).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be a positive integer (slices per sampler call)")
    chosen = select_items(dataset, items_per_volume)
    n = len(chosen) if max_slices is None else min(len(chosen), int(max_slices))
    if reconstructor.corruption.shuffle and reconstructor.corruption.donors is None:
        reconstructor.corruption = reconstructor.corruption.with_volumes(volume_records(dataset))
    rank, world = dist_info()
    local = MetricTable()
    kept: list[SliceResult] = []
    accel: dict[str, float] = {}
    mine = list(shard_indices(n, rank, world))
    progress = None
    if progress_dir is not None:
        from metamri.evaluation.progress import EvaluationProgress

        key = {**(fingerprint or {}), "items": n}
        if reconstructor.corruption.active:  # absent when off: earlier progress files still match
            key["corrupt"] = reconstructor.corruption.to_dict()
        progress = EvaluationProgress(progress_dir, stage, key, rank)
        rows, restored = progress.restored(mine)
        local.extend(rows)  # first: merge_rows keeps the first row of a key
        accel.update(restored)
        if rows:
            log.info("resuming: %d of this process's %d slices were finished before", sum(
                progress.done([j]) for j in mine), len(mine))
    for start in range(0, len(mine), int(batch_size)):
        indices = mine[start:start + int(batch_size)]
        if progress is not None:  # finished slices are never redone (a batch of the same size and
            indices = [j for j in indices if not progress.done([j])]  # world is all done or none)
            if not indices:
                continue
        batch = [dataset[chosen[j]] for j in indices]
        finished = []
        for j, result in zip(indices, reconstructor.reconstruct_batch(batch), strict=True):
            rows = reconstructor.score(result, local, lpips_metric)
            accel[result.key.slice_id] = result.effective_acceleration
            finished.append((j, result.key.slice_id, rows, result.effective_acceleration))
            log.debug("reconstructed %s in %s", result.key, result.timings)
            if len(kept) < keep_results:
                kept.append(result)
        if progress is not None:
            progress.append(finished)
    merged: dict[str, float] = {}
    for part in gather_objects(accel):
        merged.update(part)
    return SplitEvaluation(MetricTable(gather_rows(local.rows)), kept, n, dict(sorted(merged.items())))


def select_items(dataset, items_per_volume: int | None = None) -> list[int]:
    """Indices of ``dataset`` to evaluate: all, or the central ``items_per_volume`` of each volume.

    Volumes are the dataset's cache entries (``dataset.index`` holds ``(entry, row)``
    pairs, rows in slice order); of a volume with N items, rows
    ``(N - k) // 2 ... (N - k) // 2 + k - 1`` are kept (the centre slice for k = 1).
    A dataset without ``index`` (a plain sequence of samples) is taken whole.

    >>> class D: index = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    >>> select_items(D(), 1), select_items(D(), None)
    ([1, 3], [0, 1, 2, 3, 4])
    """
    index = getattr(dataset, "index", None)
    index = index if isinstance(index, list) else None  # a list's own .index is a method
    n = len(dataset) if index is None else len(index)
    if items_per_volume is None:
        return list(range(n))
    k = int(items_per_volume)
    if k < 1:
        raise ConfigError("items_per_volume", items_per_volume, "must be a positive integer or null")
    if index is None:
        return list(range(n))
    rows: dict[int, list[int]] = {}
    for i, (entry, _row) in enumerate(index):
        rows.setdefault(entry, []).append(i)
    out: list[int] = []
    for entry in sorted(rows):
        items = rows[entry]
        start = max(0, (len(items) - k) // 2)
        out.extend(items[start:start + k])
    return out


def volume_records(dataset) -> dict[str, Metadata]:
    """``fname -> metadata`` of every volume of ``dataset`` (its first item's record).

    Reads no pixels from a :class:`~metamri.datamodules.dataset.CachedSliceDataset` (its
    ``entries``, ``index`` and ``metadata(i)``); a plain sequence of samples is read item by item.
    """
    out: dict[str, Metadata] = {}
    index = getattr(dataset, "index", None)
    if isinstance(index, list) and hasattr(dataset, "entries") and hasattr(dataset, "metadata"):
        for i, (entry, _row) in enumerate(index):
            fname = str(dataset.entries[entry].fname)
            if fname not in out:
                out[fname] = dataset.metadata(i)
        return out
    for i in range(len(dataset)):
        sample = dataset[i]
        out.setdefault(str(sample.fname), sample.metadata)
    return out


def setup_lines(reconstructor: Reconstructor, evaluation: SplitEvaluation | None = None) -> list[str]:
    """What a summary states about its setup, one line each (markdown).

    The mask (type and parameters) with its effective acceleration (``W / sampled
    columns``, mean over the evaluated slices), the coil maps, and the methods' settings.
    """
    info = reconstructor.describe()
    mask = f"mask: `{info['mask']}`"
    if evaluation is not None and evaluation.accelerations:
        mask += (f"; effective acceleration {evaluation.effective_acceleration:.3f}x "
                 f"(W / sampled columns, mean over {len(evaluation.accelerations)} slices)")
    maps = {"fully_sampled": "ESPIRiT from the fully sampled k-space with the preprocessing's "
                             "settings (computed on first use, then cached)",
            "calibration": "ESPIRiT from the calibration region of the measurement"}[info["coil_maps"]]
    lines = [mask, f"coil maps: {info['coil_maps']}: {maps}"
             + (f" ({info['espirit']})" if "espirit" in info else "")]
    lines.append("scaling: " + {"measured": "measured (y / p99 of the zero-filled image, as for a measured file)",
                                "reference": "reference (the cached p99 of the fully sampled MVUE)"}[info["scaling"]])
    if "cs" in info:
        lines.append(f"cs: {info['cs']}")
    if "sampler" in info:
        extra = "".join(f", {k}={info[k]}" for k in ("drop_fields", "keep_fields") if k in info)
        lines.append(f"diffusion: {info['sampler']}, {info['num_steps']} steps, guidance_scale="
                     f"{info['guidance_scale']}, ensemble K={info['ensemble']}{extra}")
        if "corrupt" in info:
            lines.append(f"metadata corruption: {reconstructor.corruption.summary()} (drawn per volume, "
                         "applied before drop_fields / keep_fields)")
    return lines


def summary_markdown(table: MetricTable, digits: int = 4, notes: list[str] | tuple[str, ...] = ()) -> str:
    """A markdown table: per method, mean ± std over slices of PSNR (dB), SSIM, NMSE, LPIPS.

    ``notes`` (e.g. :func:`setup_lines`) come first, one ``- `` bullet each.
    """
    summary = table.summary()
    metrics = ("psnr", "ssim", "nmse", "lpips")
    head = [f"- {n}" for n in notes] + ([""] if notes else [])
    lines = head + ["| method | slices | volumes | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for method in dict.fromkeys(summary.index.get_level_values(0)):
        cells = []
        for m in metrics:
            s = summary.loc[(method, m)]
            cells.append("n/a" if s.n_slices == 0 else
                         f"{s.slice_mean:.{digits}g} ± {_fmt(s.slice_std, digits)}")
        first = summary.loc[(method, "psnr")]
        lines.append(f"| {method} | {int(first.n_slices)} | {int(first.n_volumes)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float, digits: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}g}"


def write_outputs(table: MetricTable, out_dir: str | PathLike[str], stage: str,
                  notes: list[str] | tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write ``<stage>_metrics.csv`` and ``<stage>_summary.md`` (with ``notes``) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{stage}_metrics.csv"
    table.to_csv(csv_path)
    md_path = out_dir / f"{stage}_summary.md"
    write_text_atomic(md_path, f"# {stage} metrics (mean ± std over slices)\n\n"
                               f"{summary_markdown(table, notes=notes)}")
    return csv_path, md_path


def method_means(table: MetricTable, metric: str = "psnr") -> dict[str, float]:
    """Mean of ``metric`` over slices, per method."""
    summary = table.summary()
    return {method: float(summary.loc[(method, metric), "slice_mean"])
            for method in dict.fromkeys(summary.index.get_level_values(0))}
