"""A table of per-slice metrics, its summary over slices and volumes, and CSV round trips.

One row per (file, slice, frame, method). :meth:`MetricTable.summary` reports, per
method and metric, the mean and sample standard deviation (``ddof = 1``, as
fastMRI's ``runstats``; NaN with a single entry) over slices, and over volumes,
where a volume is a file and its value is the mean of its slices (and frames).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, fields
from os import PathLike

import numpy as np
import pandas as pd

from metamri.errors import DataFileError
from metamri.metrics.image import nmse, psnr, ssim
from metamri.utils.io import atomic_output

#: Metric columns, in order; ``lpips`` may be missing (None).
METRICS = ("psnr", "ssim", "lpips", "nmse")


@dataclass(frozen=True)
class MetricRow:
    """Metrics of one reconstructed slice.

    Attributes:
        fname: source file name (identifies the volume).
        slice: slice index in the file.
        frame: cine frame, ``None`` for static data.
        method: reconstruction method, e.g. ``"zero_filled"``, ``"cs_bart"``.
        psnr: dB. ssim: unitless, <= 1. lpips: unitless (None where unavailable).
        nmse: unitless.
    """

    fname: str
    slice: int
    frame: int | None
    method: str
    psnr: float
    ssim: float
    lpips: float | None
    nmse: float


COLUMNS = tuple(f.name for f in fields(MetricRow))


class MetricTable:
    """Per-slice metric rows with a summary and an atomic CSV writer.

    Example:
        >>> t = MetricTable()
        >>> _ = t.add("a.h5", 0, None, "zf", psnr=30.0, ssim=0.8, nmse=0.01)
        >>> _ = t.add("a.h5", 1, None, "zf", psnr=32.0, ssim=0.9, nmse=0.02)
        >>> float(t.summary().loc[("zf", "psnr"), "slice_mean"])
        31.0
    """

    def __init__(self, rows: Iterable[MetricRow] = ()) -> None:
        self._rows: list[MetricRow] = list(rows)

    # -- collecting ---------------------------------------------------------------------------

    def add(
        self,
        fname: str,
        slice: int,
        frame: int | None,
        method: str,
        *,
        psnr: float,
        ssim: float,
        nmse: float,
        lpips: float | None = None,
    ) -> MetricRow:
        """Append one row of already computed metrics and return it."""
        row = MetricRow(str(fname), int(slice), None if frame is None else int(frame), str(method),
                        float(psnr), float(ssim), None if lpips is None else float(lpips), float(nmse))
        self._rows.append(row)
        return row

    def add_images(
        self, gt, pred, *, fname: str, slice: int, frame: int | None, method: str, lpips_metric=None
    ) -> MetricRow:
        """Compute PSNR, SSIM, NMSE (and LPIPS if ``lpips_metric`` is given) and append them.

        Args:
            gt, pred: ``(H, W)`` images (magnitude is used), see :mod:`metamri.metrics.image`.
            lpips_metric: an :class:`~metamri.metrics.lpips.LPIPSMetric` or ``None``.
        """
        return self.add(
            fname, slice, frame, method, psnr=psnr(gt, pred), ssim=ssim(gt, pred),
            nmse=nmse(gt, pred), lpips=None if lpips_metric is None else lpips_metric(gt, pred),
        )

    def extend(self, rows: Iterable[MetricRow]) -> None:
        self._rows.extend(rows)

    @property
    def rows(self) -> list[MetricRow]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[MetricRow]:
        return iter(self._rows)

    # -- summaries ----------------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """All rows as a DataFrame (``lpips``/``frame`` missing -> NaN / None)."""
        frame = pd.DataFrame([astuple(r) for r in self._rows], columns=list(COLUMNS))
        frame["lpips"] = pd.to_numeric(frame["lpips"], errors="coerce").astype(float)
        return frame

    def summary(self) -> pd.DataFrame:
        """Mean and std over slices and over volumes, per method and metric.

        Returns:
            DataFrame indexed by ``(method, metric)`` with columns ``n_slices``,
            ``slice_mean``, ``slice_std``, ``n_volumes``, ``volume_mean``,
            ``volume_std``. Missing values (LPIPS where unavailable) are left out;
            a metric with no values has counts 0 and NaN statistics.
        """
        frame = self.to_frame()
        records = []
        for method in dict.fromkeys(frame["method"]):
            sub = frame[frame["method"] == method]
            for metric in METRICS:
                values = sub[["fname", metric]].dropna()
                per_volume = values.groupby("fname", sort=False)[metric].mean()
                records.append({
                    "method": method, "metric": metric,
                    "n_slices": len(values),
                    "slice_mean": _mean(values[metric]), "slice_std": _std(values[metric]),
                    "n_volumes": len(per_volume),
                    "volume_mean": _mean(per_volume), "volume_std": _std(per_volume),
                })
        columns = ["method", "metric", "n_slices", "slice_mean", "slice_std",
                   "n_volumes", "volume_mean", "volume_std"]
        return pd.DataFrame.from_records(records, columns=columns).set_index(["method", "metric"])

    def format_summary(self, digits: int = 4) -> str:
        """Lines ``method metric: slices mean ± std (n) | volumes mean ± std (n)``.

        A metric with no values (LPIPS where it cannot load) reads ``not computed``; a std of
        a single slice or volume reads ``n/a``, never ``nan``.
        """

        def stat(mean: float, std: float, n: float) -> str:
            n = int(n)  # iterrows gives the row's common dtype, float
            spread = f"{std:.{digits}g}" if n >= 2 else "n/a"
            return f"{mean:.{digits}g} ± {spread} ({n})"

        lines = []
        for (method, metric), s in self.summary().iterrows():
            if s.n_slices == 0:
                lines.append(f"{method} {metric}: not computed")
                continue
            lines.append(f"{method} {metric}: slices {stat(s.slice_mean, s.slice_std, s.n_slices)} "
                         f"| volumes {stat(s.volume_mean, s.volume_std, s.n_volumes)}")
        return "\n".join(lines)

    # -- CSV ----------------------------------------------------------------------------------

    def to_csv(self, path: str | PathLike[str]) -> None:
        """Write all rows to ``path`` atomically (temporary file, then ``os.replace``).

        Floats are written with ``repr`` so :meth:`from_csv` reads them back exactly;
        ``None`` is an empty cell.
        """
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in self._rows:
                writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                                 for v in astuple(row)])

    @classmethod
    def from_csv(cls, path: str | PathLike[str]) -> MetricTable:
        """Read a table written by :meth:`to_csv`.

        Raises:
            DataFileError: a missing column or a value that is not a number.
        """
        rows = []
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataFileError(path, "missing column", field=missing[0],
                                    hint=f"expected columns {', '.join(COLUMNS)}")
            for line, rec in enumerate(reader, start=2):
                try:
                    rows.append(MetricRow(
                        rec["fname"], int(rec["slice"]), _opt(rec["frame"], int), rec["method"],
                        float(rec["psnr"]), float(rec["ssim"]), _opt(rec["lpips"], float),
                        float(rec["nmse"]),
                    ))
                except (TypeError, ValueError):
                    bad = next(c for c in COLUMNS if not _parses(c, rec.get(c)))
                    raise DataFileError(path, f"line {line}: not a valid value", field=bad,
                                        value=rec.get(bad)) from None
        return cls(rows)


def _opt(text: str, kind):
    return None if text in ("", None) else kind(text)


def _parses(column: str, text) -> bool:
    kind = {"slice": int, "frame": int, "psnr": float, "ssim": float, "lpips": float,
            "nmse": float}.get(column)
    if kind is None:
        return text is not None
    if column in ("frame", "lpips") and text == "":
        return True
    try:
        kind(text)
    except (TypeError, ValueError):
        return False
    return True


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if values.size else math.nan


def _std(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if values.size > 1 else math.nan
