"""The study's tables, intervals and plots from finished evaluation runs.

``python -m metamri.report manifest=experiments/study/tables.yaml out_dir=experiments/study/report``
(``make report``) reads the per-slice metrics of the runs a manifest names
(:mod:`metamri.report.collect`: run directories, or W&B with ``source=wandb``), builds each
table (:mod:`metamri.report.tables`: mean ± std over slices, paired differences to a
reference row with volume-bootstrap intervals, :mod:`metamri.report.bootstrap`) and writes
to ``out_dir``:

* ``tables.md``: every table in order, what its numbers are, and a "Runs not read" section;
* ``<table id>.csv``: one line per row x metric (:data:`~metamri.report.tables.CSV_COLUMNS`);
* ``<table id>.png`` for tables with a ``plot`` (:mod:`metamri.report.plots`), and
  ``information.png`` when the manifest lists ``information`` curves.

A row whose run cannot be read is written as ``missing: <reason>`` and listed at the end;
the command then exits with status 1 after writing everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamri.report.collect import RunCollector, WandbRuns
from metamri.report.tables import (
    Manifest,
    TableResult,
    build_table,
    load_manifest,
    table_csv,
    table_markdown,
)
from metamri.utils.io import write_text_atomic

__all__ = ["Report", "make_report", "load_manifest"]


@dataclass
class Report:
    """What :func:`make_report` did.

    Attributes:
        tables: Every table's result, in manifest order.
        not_read: One line per input that could not be read (runs, information CSVs).
        files: The files written.
    """

    tables: list[TableResult]
    not_read: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.not_read


def make_report(
    manifest: str | Path | Manifest,
    out_dir: str | Path,
    *,
    source: str = "runs",
    wandb_entity: str | None = None,
    wandb_project: str = "metamri",
    wandb_api: Any = None,
) -> Report:
    """Build every table of ``manifest`` and write Markdown, CSV and PNGs to ``out_dir``.

    Args:
        manifest: The manifest's path (or a loaded :class:`~metamri.report.tables.Manifest`).
        out_dir: Output directory (created).
        source: Where rows without their own ``source`` are read: ``runs`` (directories
            under ``runs_root``) or ``wandb``.
        wandb_entity, wandb_project: The W&B project of ``source: wandb`` rows.
        wandb_api: A ``wandb.Api``-like object (tests); ``None``: ``wandb.Api()`` on first use.

    Returns:
        A :class:`Report`; ``report.ok`` is false when an input could not be read.

    Raises:
        ConfigError: a bad manifest or ``source`` (before anything is written).
    """
    from metamri.errors import ConfigError
    from metamri.report import plots
    from metamri.report.tables import SOURCES

    if source not in SOURCES:
        raise ConfigError("source", source, f"choose one of {list(SOURCES)}")
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    collector = RunCollector(
        m.runs_root, m.split,
        wandb=None if wandb_api is None else WandbRuns(wandb_entity, wandb_project, wandb_api),
        wandb_factory=lambda: WandbRuns(wandb_entity, wandb_project),
    )
    report = Report([])
    sections = [
        "# Study tables",
        "",
        f"Written by `python -m metamri.report` from `{m.path}`: split `{m.split}`, run "
        f"directories under `{m.runs_root}`" + (", rows without a `source` read from W&B "
        f"`{collector_path(wandb_entity, wandb_project)}`" if source == "wandb" else "") + ".",
        "",
    ]
    for spec in m.tables:
        table = build_table(spec, m, collector, source)
        report.tables.append(table)
        csv_path = write_text_atomic(out / f"{spec.id}.csv", table_csv(table))
        report.files.append(csv_path)
        png = None
        if spec.plot is not None:
            png_path = plots.table_plot(table, out / f"{spec.id}.png")
            report.files.append(png_path)
            png = png_path.name
        sections.append(table_markdown(table, png))
        report.not_read += _not_read_lines(table)
    if m.information:
        lines, info_png = _information(m, out)
        report.not_read += lines
        if info_png is not None:
            report.files.append(info_png)
            sections += ["## Information curves", "",
                         "Per-timestep denoising loss with true, dropped and shuffled metadata: "
                         + ", ".join(f"{e.label} (`{e.csv}`)" for e in m.information) + ".",
                         "", f"![information]({info_png.name})", ""]
    sections += ["## Runs not read", ""]
    sections += [f"- {line}" for line in report.not_read] or ["All runs were read."]
    md = write_text_atomic(out / "tables.md", "\n".join(sections).rstrip() + "\n")
    report.files.insert(0, md)
    return report


def collector_path(entity: str | None, project: str) -> str:
    return f"{entity}/{project}" if entity else project


def _not_read_lines(table: TableResult) -> list[str]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in table.missing:
        grouped.setdefault((row.spec.run, row.missing), []).append(f"{table.spec.id}/{row.spec.id}")
    return [f"`{run}` (rows {', '.join(rows)}): {reason}" for (run, reason), rows in grouped.items()]


def _information(m: Manifest, out: Path) -> tuple[list[str], Path | None]:
    """Plot the information curves that exist; lines for those that do not."""
    missing = [f"information `{e.label}`: {e.csv}: no such file" for e in m.information
               if not e.csv.is_file()]
    present = [e for e in m.information if e.csv.is_file()]
    if not present:
        return missing, None
    png = out / "information.png"
    from metamri.analysis.information import plot_information

    plot_information([{"label": e.label, "csv": str(e.csv)} for e in present], png)
    return missing, png
