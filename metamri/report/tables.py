"""The study's tables: a manifest of rows (run + method), their statistics, Markdown and CSV.

A manifest (YAML) names the tables and, per row, which evaluation run and which method of
it the row shows; see :func:`load_manifest` for its keys. Per row and metric the table
gives the mean ± std over slices (sample std, ``ddof = 1``, as
:meth:`metamri.metrics.MetricTable.summary`), and for each of the table's references (a
row id, or a list of them: ``reference: [all, none]``) and each other row the paired
difference ``row - reference`` over the slices both rows have (matched on
``(fname, slice, frame)``) with a percentile bootstrap interval that resamples volumes
(:func:`metamri.report.bootstrap.paired_volume_bootstrap`): one Δ column group per
reference in the Markdown, one CSV line per row x metric x reference (the ``reference``
column names it; a table without a reference has one line per row x metric). Units: PSNR
in dB, SSIM, LPIPS and NMSE unitless.

Paths in the manifest (``runs_root``, ``information[].csv``) are relative to the current
directory (``make report`` runs from the repository root), not to the manifest's own
directory; absolute paths are taken as they are. A row's ``run`` is relative to
``runs_root`` (or absolute).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metamri.errors import ConfigError
from metamri.metrics.table import METRICS
from metamri.report.bootstrap import Interval, paired_volume_bootstrap, volume_bootstrap
from metamri.report.collect import RunCollector, RunData, RunNotRead, describe_setup

#: Row ``method`` when the manifest gives none.
DEFAULT_METHOD = "diffusion"
#: Where a row's run is read from.
SOURCES = ("runs", "wandb")
PLOT_KINDS = ("line", "bars")
#: Decimals per metric in the Markdown (the CSV keeps full precision).
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "nmse": 4}
TITLES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "nmse": "NMSE"}
#: Columns of ``<table id>.csv``, one line per row x metric x reference (row x metric without one).
CSV_COLUMNS = ("table", "row", "label", "run", "method", "metric", "n_slices", "n_volumes",
               "mean", "std", "diff_mean", "diff_lo", "diff_hi", "reference")

_TOP_KEYS = {"runs_root", "split", "metrics", "bootstrap", "tables", "information"}
_TABLE_KEYS = {"id", "title", "reference", "rows", "plot", "note"}
_ROW_KEYS = {"id", "label", "run", "method", "x", "source"}
_PLOT_KEYS = {"kind", "x_label", "metrics"}
_BOOT_KEYS = {"n", "seed", "level", "units", "unit_label"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# -- the manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapSpec:
    """``n`` draws, generator ``seed`` (the same for every comparison), coverage ``level``,
    and what is resampled: ``units`` are regular expressions whose first group, searched in
    a slice's ``fname``, names its unit (e.g. the patient: volumes of one patient share the
    anatomy); empty: the volume (``fname``) is the unit. ``unit_label`` (plural, e.g.
    ``patients``) is how the tables name the units."""

    n: int = 2000
    seed: int = 0
    level: float = 0.95
    units: tuple[str, ...] = ()
    unit_label: str = ""

    def unit_of(self, fnames: Any) -> np.ndarray:
        """The resampling unit of each ``fname``: the first matching pattern's first group.

        Raises:
            ConfigError: a file name no pattern matches (naming it and the patterns).
        """
        names = [str(f) for f in fnames]
        if not self.units:
            return np.asarray(names, dtype=object)
        compiled = [re.compile(u) for u in self.units]
        out = []
        for name in names:
            match = next((m for m in (c.search(name) for c in compiled) if m), None)
            if match is None:
                raise ConfigError("bootstrap.units", list(self.units), f"no pattern matches the file {name!r}",
                                  hint="add a pattern whose first group is that file's unit (e.g. its patient)")
            out.append(match.group(1))
        return np.asarray(out, dtype=object)

    @property
    def unit_name(self) -> str:
        """How tables name the resampled unit."""
        if not self.units:
            return "volumes (fname)"
        return (self.unit_label or "units") + " (" + " | ".join(f"`{u}`" for u in self.units) + " of fname)"


@dataclass(frozen=True)
class RowSpec:
    """One table row: ``method`` of run ``run`` (a path under ``runs_root``, or a W&B name)."""

    id: str
    label: str
    run: str
    method: str = DEFAULT_METHOD
    x: float | None = None
    source: str | None = None


@dataclass(frozen=True)
class PlotSpec:
    """``kind``: ``line`` (metrics against each row's ``x``) or ``bars`` (paired Δ per row)."""

    kind: str
    x_label: str | None = None
    metrics: tuple[str, ...] = ("psnr", "ssim")


@dataclass(frozen=True)
class TableSpec:
    """One table: its rows, the row ids the differences are taken against (``references``,
    in column order; a bars plot shows the first), an optional plot and note."""

    id: str
    title: str
    rows: tuple[RowSpec, ...]
    references: tuple[str, ...] = ()
    plot: PlotSpec | None = None
    note: str | None = None

    @property
    def reference(self) -> str | None:
        """The first reference (the one a bars plot shows), ``None`` without one."""
        return self.references[0] if self.references else None

    def row(self, row_id: str) -> RowSpec:
        return next(r for r in self.rows if r.id == row_id)


@dataclass(frozen=True)
class InformationSpec:
    """A per-timestep information curve CSV (``timestep,condition,loss_mean,loss_se,n``)."""

    label: str
    csv: Path


@dataclass(frozen=True)
class Manifest:
    path: Path
    runs_root: Path
    split: str
    metrics: tuple[str, ...]
    bootstrap: BootstrapSpec
    tables: tuple[TableSpec, ...]
    information: tuple[InformationSpec, ...] = ()


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest.

    Keys: ``runs_root`` (directory of the run paths, relative to the current directory),
    ``split`` (default ``test``), ``metrics`` (subset of ``psnr, ssim, lpips, nmse``; default
    ``[psnr, ssim, lpips]``), ``bootstrap: {n, seed, level}`` (default 2000, 0, 0.95),
    ``tables`` (each ``id``, ``title``, ``rows``, optional ``reference`` (a row id, or a list
    of row ids: one Δ column group each),
    ``plot: {kind: line|bars, x_label, metrics}``, ``note``; each row ``id``, ``label``, ``run``,
    optional ``method`` (default ``diffusion``), ``x`` (for line plots), ``source``
    (``runs``|``wandb``, default: the command's ``source``)), and optional ``information``
    (list of ``{label, csv}``).

    Raises:
        ConfigError: naming the key, its value and what is wrong (unknown keys too, so a
            typo does not silently drop a setting).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("manifest", str(path), "no such file",
                          hint="pass manifest=<path to the tables YAML>")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("manifest", str(path), f"not valid YAML ({exc})") from None
    where = f"in {path}"
    if not isinstance(raw, dict):
        raise ConfigError("manifest", str(path), "must be a mapping with `runs_root` and `tables`")
    _no_unknown(raw, _TOP_KEYS, "", where)
    if raw.get("runs_root") in (None, ""):
        raise ConfigError("runs_root", raw.get("runs_root"), f"missing {where}",
                          hint="the directory the rows' `run` paths are relative to")
    split = str(raw.get("split", "test"))
    metrics = tuple(raw.get("metrics", ("psnr", "ssim", "lpips")))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ConfigError("metrics", list(metrics), f"choose a non-empty subset of {list(METRICS)} {where}")
    boot = raw.get("bootstrap") or {}
    if not isinstance(boot, dict):
        raise ConfigError("bootstrap", boot, f"must be a mapping {{n, seed, level}} {where}")
    _no_unknown(boot, _BOOT_KEYS, "bootstrap.", where)
    units = boot.get("units") or []
    units = [units] if isinstance(units, str) else units
    if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
        raise ConfigError("bootstrap.units", units, f"must be a list of regular expressions {where}")
    for u in units:
        try:
            if re.compile(u).groups < 1:
                raise ConfigError("bootstrap.units", u, f"needs a group, the unit's name, e.g. `_(\\d+)_` {where}")
        except re.error as exc:
            raise ConfigError("bootstrap.units", u, f"not a regular expression ({exc}) {where}") from None
    bootstrap = BootstrapSpec(int(boot.get("n", 2000)), int(boot.get("seed", 0)),
                              float(boot.get("level", 0.95)), tuple(units), str(boot.get("unit_label") or ""))
    if bootstrap.n < 100:
        raise ConfigError("bootstrap.n", bootstrap.n, f"too few draws for a percentile interval {where}",
                          hint="use at least 1000 (2000 is the default)")
    if not 0 < bootstrap.level < 1:
        raise ConfigError("bootstrap.level", bootstrap.level, f"must be in (0, 1) {where}")
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, list) or not tables_raw:
        raise ConfigError("tables", tables_raw, f"must be a non-empty list {where}")
    tables = tuple(_table(t, i, where) for i, t in enumerate(tables_raw))
    ids = [t.id for t in tables]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError("tables[].id", sorted(dup), f"table ids must be unique {where}")
    info = []
    for i, entry in enumerate(raw.get("information") or []):
        key = f"information[{i}]"
        if not isinstance(entry, dict) or not entry.get("csv") or not entry.get("label"):
            raise ConfigError(key, entry, f"needs `label` and `csv` {where}")
        _no_unknown(entry, {"label", "csv"}, key + ".", where)
        info.append(InformationSpec(str(entry["label"]), Path(entry["csv"])))
    return Manifest(path, Path(raw["runs_root"]), split, metrics, bootstrap, tables, tuple(info))


def _table(raw: Any, i: int, where: str) -> TableSpec:
    key = f"tables[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, f"must be a mapping {where}")
    _no_unknown(raw, _TABLE_KEYS, key + ".", where)
    tid = raw.get("id")
    if not isinstance(tid, str) or not _ID.match(tid):
        raise ConfigError(f"{key}.id", tid, f"must be a file-name-safe string (letters, digits, _ . -) {where}")
    rows_raw = raw.get("rows")
    if not isinstance(rows_raw, list) or not rows_raw:
        raise ConfigError(f"{key}.rows", rows_raw, f"must be a non-empty list {where}")
    rows = []
    for j, r in enumerate(rows_raw):
        rkey = f"{key}.rows[{j}]"
        if not isinstance(r, dict):
            raise ConfigError(rkey, r, f"must be a mapping {where}")
        _no_unknown(r, _ROW_KEYS, rkey + ".", where)
        for need in ("id", "run"):
            if r.get(need) in (None, ""):
                raise ConfigError(f"{rkey}.{need}", r.get(need), f"missing {where}")
        source = r.get("source")
        if source is not None and source not in SOURCES:
            raise ConfigError(f"{rkey}.source", source, f"choose one of {list(SOURCES)} {where}")
        x = r.get("x")
        rows.append(RowSpec(str(r["id"]), str(r.get("label", r["id"])), str(r["run"]),
                            str(r.get("method") or DEFAULT_METHOD),
                            None if x is None else float(x), source))
    ids = [r.id for r in rows]
    dup = {r for r in ids if ids.count(r) > 1}
    if dup:
        raise ConfigError(f"{key}.rows[].id", sorted(dup), f"row ids must be unique within a table {where}")
    reference = raw.get("reference")
    refs = [] if reference is None else reference if isinstance(reference, list) else [reference]
    if reference is not None and (not refs or any(not isinstance(r, str | int) for r in refs)):
        raise ConfigError(f"{key}.reference", reference, f"must be a row id or a non-empty list of row ids {where}")
    refs = [str(r) for r in refs]
    for r in refs:
        if r not in ids:
            raise ConfigError(f"{key}.reference", reference, f"{r!r} is not a row id of table {tid} {where}",
                              hint=f"choose from {ids}")
    if len(set(refs)) != len(refs):
        raise ConfigError(f"{key}.reference", reference, f"names a row twice {where}")
    plot = None
    if raw.get("plot") is not None:
        p = raw["plot"]
        if not isinstance(p, dict) or p.get("kind") not in PLOT_KINDS:
            raise ConfigError(f"{key}.plot.kind", p.get("kind") if isinstance(p, dict) else p,
                              f"choose one of {list(PLOT_KINDS)} {where}")
        _no_unknown(p, _PLOT_KEYS, f"{key}.plot.", where)
        metrics = tuple(p.get("metrics", ("psnr", "ssim")))
        if not metrics or any(m not in METRICS for m in metrics):
            raise ConfigError(f"{key}.plot.metrics", list(metrics), f"choose from {list(METRICS)} {where}")
        plot = PlotSpec(p["kind"], p.get("x_label"), metrics)
        if plot.kind == "line":
            no_x = [r.id for r in rows if r.x is None]
            if no_x:
                raise ConfigError(f"{key}.rows[].x", no_x, f"a line plot needs `x` on every row {where}")
        if plot.kind == "bars" and not refs:
            raise ConfigError(f"{key}.reference", None, f"a bars plot shows differences to the reference {where}",
                              hint="set `reference:` to a row id")
    return TableSpec(tid, str(raw.get("title", tid)), tuple(rows), tuple(refs), plot, raw.get("note"))


def _no_unknown(raw: dict, allowed: set[str], prefix: str, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(prefix + unknown[0], raw[unknown[0]], f"unknown key {where}",
                          hint=f"allowed keys: {', '.join(sorted(allowed))}")


# -- statistics -----------------------------------------------------------------------------


@dataclass
class MetricStats:
    """One metric of one row: over the slices that have a value.

    ``mean_ci`` is the bootstrap interval of the mean (volumes resampled), computed for
    tables with a line plot only.
    """

    n_slices: int
    n_volumes: int
    mean: float
    std: float
    mean_ci: Interval | None = None


@dataclass
class RowResult:
    """A row's statistics, or why it is missing.

    Attributes:
        spec: The manifest's row.
        missing: ``None``, or the reason the row's run or method could not be read.
        data: The method's per-slice rows indexed by ``(fname, slice, frame)``.
        stats: Per metric.
        diffs: Per reference row id, then per metric, the paired ``row - reference``
            :class:`Interval`, or ``None`` (a missing side, no shared slices: see
            ``diff_notes``); a reference row has no entry for itself.
        diff_notes: Per reference row id, then per metric, why there is no difference, or
            how many slices were paired when fewer than either row has.
        location: Where the run was read.
        run_notes: Remarks of the reader (e.g. several W&B runs of that name).
        setup: A line describing the run's config.
    """

    spec: RowSpec
    missing: str | None = None
    data: pd.DataFrame | None = None
    stats: dict[str, MetricStats] = field(default_factory=dict)
    diffs: dict[str, dict[str, Interval | None]] = field(default_factory=dict)
    diff_notes: dict[str, dict[str, str]] = field(default_factory=dict)

    def diff(self, metric: str, reference: str) -> Interval | None:
        """The paired ``row - reference`` interval of ``metric`` (``None`` where there is none)."""
        return self.diffs.get(reference, {}).get(metric)
    location: str | None = None
    run_notes: list[str] = field(default_factory=list)
    setup: str | None = None

    @property
    def n_slices(self) -> int:
        return 0 if self.data is None else len(self.data)

    @property
    def n_volumes(self) -> int:
        return 0 if self.data is None else int(self.data.index.get_level_values("fname").nunique())


@dataclass
class TableResult:
    spec: TableSpec
    rows: list[RowResult]
    bootstrap: BootstrapSpec
    metrics: tuple[str, ...]

    @property
    def references(self) -> list[RowResult]:
        """The reference rows, in the manifest's order."""
        return [next(r for r in self.rows if r.spec.id == ref) for ref in self.spec.references]

    @property
    def reference(self) -> RowResult | None:
        """The first reference row (``None`` without one)."""
        refs = self.references
        return refs[0] if refs else None

    @property
    def missing(self) -> list[RowResult]:
        return [r for r in self.rows if r.missing is not None]


def build_table(spec: TableSpec, manifest: Manifest, collector: RunCollector,
                default_source: str = "runs") -> TableResult:
    """Read every row's run and compute its statistics and paired differences."""
    boot = manifest.bootstrap
    want_ci = spec.plot is not None and spec.plot.kind == "line"
    rows = []
    for r in spec.rows:
        result = RowResult(r)
        try:
            run: RunData = collector.get(r.run, r.source or default_source)
            result.location, result.run_notes = run.location, list(run.notes)
            result.setup = describe_setup(run.config)
            result.data = run.method(r.method)
        except RunNotRead as exc:
            result.missing = exc.reason
        if result.data is not None:
            for m in manifest.metrics:
                result.stats[m] = _stats(result.data, m, boot if want_ci else None)
        rows.append(result)
    table = TableResult(spec, rows, boot, manifest.metrics)
    refs = table.references
    for ref in refs:
        for row in rows:
            if row is ref:
                continue
            diffs, notes = row.diffs.setdefault(ref.spec.id, {}), row.diff_notes.setdefault(ref.spec.id, {})
            for m in manifest.metrics:
                diffs[m], note = _paired(row, ref, m, boot)
                if note:
                    notes[m] = note if len(refs) == 1 else f"vs {ref.spec.label}: {note}"
    return table


def _stats(data: pd.DataFrame, metric: str, boot: BootstrapSpec | None) -> MetricStats:
    values = data[metric].dropna()
    fnames = values.index.get_level_values("fname")
    arr = values.to_numpy(dtype=float)
    mean = float(arr.mean()) if arr.size else math.nan
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    ci = None
    if boot is not None and arr.size:
        ci = volume_bootstrap(arr, boot.unit_of(fnames), n_boot=boot.n, seed=boot.seed, level=boot.level)
    return MetricStats(int(arr.size), int(fnames.nunique()), mean, std, ci)


def _paired(row: RowResult, ref: RowResult, metric: str, boot: BootstrapSpec
            ) -> tuple[Interval | None, str | None]:
    if row.data is None:
        return None, None
    if ref.data is None:
        return None, f"reference {ref.spec.label!r} missing"
    both = pd.concat([row.data[metric].rename("a"), ref.data[metric].rename("b")], axis=1,
                     join="inner").dropna()
    if both.empty:
        return None, f"no slices with {metric} in both this row and the reference"
    iv = paired_volume_bootstrap(both["a"].to_numpy(), both["b"].to_numpy(),
                                 boot.unit_of(both.index.get_level_values("fname")),
                                 n_boot=boot.n, seed=boot.seed, level=boot.level)
    n_row, n_ref = row.stats[metric].n_slices, ref.stats[metric].n_slices
    note = None
    if iv.n_slices < max(n_row, n_ref):
        note = (f"{metric}: Δ over the {iv.n_slices} slices both have ({n_row} in this row, "
                f"{n_ref} in the reference)")
    return iv, note


# -- Markdown -------------------------------------------------------------------------------


def _num(x: float, d: int, sign: str = "") -> str:
    """``x`` to ``d`` decimals (``sign="+"``: always signed); never ``-0.00``."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{round(float(x), d) + 0.0:{sign}.{d}f}"


def format_mean_std(s: MetricStats | None, metric: str, n_row: int) -> str:
    """``31.20 ± 1.53`` (decimals per :data:`DIGITS`); ``(n=K)`` when K < the row's slices."""
    if s is None or s.n_slices == 0:
        return "n/a"
    d = DIGITS[metric]
    text = f"{_num(s.mean, d)} ± {_num(s.std, d)}"
    return text + (f" (n={s.n_slices})" if s.n_slices < n_row else "")


def format_diff(iv: Interval | None, metric: str) -> str:
    """``+0.41 [0.12, 0.70]``: the mean paired difference and its interval."""
    if iv is None:
        return "n/a"
    d = DIGITS[metric]
    if not math.isfinite(iv.lo):
        return f"{_num(iv.estimate, d, '+')} [n/a: a single unit]"
    return f"{_num(iv.estimate, d, '+')} [{_num(iv.lo, d)}, {_num(iv.hi, d)}]"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: TableResult, png: str | None = None) -> str:
    """The table as Markdown: a heading, the table, then what the numbers are."""
    spec, metrics, boot = table.spec, table.metrics, table.bootstrap
    refs = table.references
    # the count of what the bootstrap resamples (volumes, or e.g. patients)
    head = ["row", "n slices", f"n {boot.unit_label or 'units'}" if boot.units else "n volumes"]
    head += [TITLES[m] for m in metrics]
    head += [f"Δ {TITLES[m]} vs {ref.spec.label}" for ref in refs for m in metrics]
    lines = [f"## {spec.title}", ""]
    if spec.note:
        lines += [str(spec.note), ""]
    lines += ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    empty = [m for m in metrics if not any(r.stats.get(m) and r.stats[m].n_slices for r in table.rows)]
    notes: list[str] = [f"{TITLES[m]}: no values in any row (not computed by these runs)" for m in empty]
    for row in table.rows:
        if row.missing is not None:
            cells = [row.spec.label, f"missing: {row.missing}"] + [""] * (len(head) - 2)
        else:
            cells = [row.spec.label, str(row.n_slices), str(_n_units(row, boot))]
            cells += [format_mean_std(row.stats.get(m), m, row.n_slices) for m in metrics]
            cells += ["reference" if row is ref else format_diff(row.diff(m, ref.spec.id), m)
                      for ref in refs for m in metrics]
            notes += [f"{row.spec.label}: {n}" for ref in refs
                      for m, n in row.diff_notes.get(ref.spec.id, {}).items() if m not in empty]
            notes += [f"{row.spec.label}: {n}" for n in row.run_notes]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    pct = f"{100 * boot.level:g}%"
    lines.append(f"Mean ± std over slices (sample std). Methods: {_methods(table)}.")
    if refs:
        against = refs[0].spec.label if len(refs) == 1 else (
            "reference, one column group per reference (" + "; ".join(r.spec.label for r in refs) + ")")
        lines += ["", (
            f"Δ: mean over slices of the paired difference row − {against}, slices matched "
            f"on (fname, slice, frame); [lo, hi]: {pct} percentile bootstrap interval, "
            f"{boot.n} draws resampling {boot.unit_name} with replacement (all slices of a drawn "
            f"unit kept; the statistic is the mean over the drawn slices), seed {boot.seed}.")]
    if spec.plot is not None and spec.plot.kind == "line":
        lines += ["", f"Plot error bars: {pct} bootstrap interval of each row's mean, {boot.unit_name} "
                     f"resampled ({boot.n} draws, seed {boot.seed})."]
    if notes:
        lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
    setups = {}
    for row in table.rows:
        if row.missing is None and row.spec.run not in setups:
            setups[row.spec.run] = f"`{row.spec.run}` ({row.location}): {row.setup}"
    if setups:
        lines += ["", "Runs:"] + [f"- {s}" for s in setups.values()]
    if png:
        lines += ["", f"![{spec.id}]({png})"]
    return "\n".join(lines) + "\n"


def _n_units(row: RowResult, boot: BootstrapSpec) -> int:
    """How many of the bootstrap's units (volumes without ``units``) the row's slices cover."""
    if row.data is None:
        return 0
    return len(set(boot.unit_of(row.data.index.get_level_values("fname"))))


def _methods(table: TableResult) -> str:
    return ", ".join(dict.fromkeys(f"`{r.spec.method}`" for r in table.rows))


# -- CSV ------------------------------------------------------------------------------------


def table_records(table: TableResult) -> list[dict[str, Any]]:
    """One dict per row x metric x reference with :data:`CSV_COLUMNS` (``None`` where not
    defined): ``mean`` and ``std`` repeat on each reference's line, ``diff_*`` are against the
    line's ``reference`` (empty on the reference row's own line). Without a reference, one
    dict per row x metric with ``reference`` ``None``."""
    out = []
    refs = table.spec.references or (None,)
    for row, m, ref_id in ((row, m, r) for row in table.rows for m in table.metrics for r in refs):
        s = row.stats.get(m)
        iv = None if ref_id is None else row.diff(m, ref_id)
        out.append({
            "table": table.spec.id, "row": row.spec.id, "label": row.spec.label,
            "run": row.spec.run, "method": row.spec.method, "metric": m,
            "n_slices": 0 if s is None else s.n_slices,
            "n_volumes": 0 if s is None else s.n_volumes,
            "mean": None if s is None else s.mean, "std": None if s is None else s.std,
            "diff_mean": None if iv is None else iv.estimate,
            "diff_lo": None if iv is None else iv.lo,
            "diff_hi": None if iv is None else iv.hi,
            "reference": ref_id,
        })
    return out


def table_csv(table: TableResult) -> str:
    """The CSV text (floats as ``repr``; empty cells for undefined values and NaN)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in table_records(table):
        writer.writerow([_csv_value(rec[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        return "" if not math.isfinite(v) else repr(float(v))
    return str(v)
