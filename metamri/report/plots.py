"""PNG plots of the study's tables and of the information curves (matplotlib, Agg, no pyplot).

* :func:`line_plot`: one panel per metric (PSNR in dB, SSIM), each row's mean against its
  ``x`` with the bootstrap interval of the mean (volumes resampled) as error bars.
* :func:`bars_plot`: one panel per metric, each row's paired difference to the table's
  first reference with its interval as whiskers, and a zero line.

The information curves are plotted by :func:`metamri.analysis.information.plot_information`.

Figures are written atomically (:func:`metamri.utils.io.atomic_output`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from metamri.report.tables import TITLES, TableResult
from metamri.utils.io import atomic_output

_STYLES = {"true": "-", "dropped": "--", "shuffled": ":"}


def _figure(n_panels: int, width: float = 4.2, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return Path(path)


def _yerr(estimate: float, lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 0.0
    return max(estimate - lo, 0.0), max(hi - estimate, 0.0)


def line_plot(table: TableResult, path: str | Path) -> Path:
    """Each metric's mean against the rows' ``x``, with bootstrap-interval error bars.

    Rows that are missing are left out of the plot (the table names them).
    """
    spec = table.spec
    metrics = [m for m in spec.plot.metrics if m in table.metrics]
    fig, axes = _figure(len(metrics))
    rows = sorted((r for r in table.rows if r.missing is None), key=lambda r: r.spec.x)
    for ax, m in zip(axes, metrics, strict=True):
        xs, ys, err = [], [], []
        for r in rows:
            s = r.stats[m]
            if s.n_slices == 0:
                continue
            xs.append(r.spec.x)
            ys.append(s.mean)
            ci = s.mean_ci
            err.append(_yerr(s.mean, ci.lo, ci.hi) if ci is not None else (0.0, 0.0))
        if xs:
            ax.errorbar(xs, ys, yerr=np.array(err).T, marker="o", capsize=3)
        ax.set_xlabel(spec.plot.x_label or "x")
        ax.set_ylabel(TITLES[m])
        ax.grid(alpha=0.3)
    fig.suptitle(spec.title, fontsize=9)
    return _save(fig, path)


def bars_plot(table: TableResult, path: str | Path) -> Path:
    """Paired difference to the (first) reference per row (bars), interval whiskers, zero line."""
    spec = table.spec
    metrics = [m for m in spec.plot.metrics if m in table.metrics]
    ref = table.reference
    rows = [r for r in table.rows if r is not ref]
    fig, axes = _figure(len(metrics), width=max(4.2, 0.6 * len(rows) + 1.5))
    for ax, m in zip(axes, metrics, strict=True):
        labels, ys, err = [], [], []
        for r in rows:
            iv = r.diff(m, ref.spec.id)
            labels.append(r.spec.label)
            if iv is None:
                ys.append(np.nan)
                err.append((0.0, 0.0))
            else:
                ys.append(iv.estimate)
                err.append(_yerr(iv.estimate, iv.lo, iv.hi))
        pos = np.arange(len(rows))
        ax.bar(pos, np.nan_to_num(ys), yerr=np.array(err).T if err else None, capsize=3,
               color="tab:blue", alpha=0.8)
        for p, y in zip(pos, ys, strict=True):
            if not np.isfinite(y):
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"Δ {TITLES[m]} vs {ref.spec.label}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(spec.title, fontsize=9)
    return _save(fig, path)


def table_plot(table: TableResult, path: str | Path) -> Path | None:
    """The table's plot by ``plot.kind``; ``None`` for a table without one."""
    if table.spec.plot is None:
        return None
    return {"line": line_plot, "bars": bars_plot}[table.spec.plot.kind](table, path)
