"""Read the per-slice metrics of finished evaluation runs: from run directories or from W&B.

A run is what one ``python -m metamri.evaluate ... hydra.run.dir=DIR`` wrote:

* ``DIR/.hydra/config.yaml``: the resolved config (``prior``, ``guidance_scale``,
  ``ensemble``, ``drop_fields``, ``keep_fields``, ``corrupt``, ``mask``, ``sampler``, ``split``,
  ``domain``, ``output_subdir``), and
* ``DIR/<output_subdir>/<split>_metrics.csv`` (``output_subdir`` defaults to
  ``reconstruction``): one row per (fname, slice, frame, method) with PSNR (dB), SSIM,
  LPIPS (may be empty) and NMSE (:meth:`metamri.metrics.MetricTable.to_csv`).

or the W&B run the evaluation logged (display name = the study's run path, e.g. ``x4/text``,
``job_type="evaluate"``) with a ``wandb.Table`` under the key ``per_slice`` holding the same
columns; W&B stores such a table as the run's artifact ``run-<run id>-per_slice`` of type
``run_table``.

Both readers return a :class:`RunData` or raise :class:`RunNotRead` whose ``reason`` names
the path (or W&B run) and what was wrong, for the report to print instead of the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metamri.errors import DataFileError
from metamri.metrics.table import COLUMNS, METRICS, MetricTable

#: The W&B key (and artifact entry) of the per-slice table.
WANDB_TABLE_KEY = "per_slice"
#: The columns a per-slice table has (those of :class:`metamri.metrics.MetricRow`).
PER_SLICE_COLUMNS = COLUMNS


class RunNotRead(Exception):
    """A run could not be used; ``reason`` says where and why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RunData:
    """The per-slice metrics of one evaluation run.

    Attributes:
        name: The run as the manifest names it (e.g. ``x4/text``).
        location: Where it was read: a directory, or ``wandb:<entity>/<project>/<run id>``.
        frame: Per-slice rows, columns :data:`PER_SLICE_COLUMNS` (``frame`` is -1 for static
            data so that rows match on it; metrics float, NaN where missing).
        config: The run's resolved config (plain dict; empty when none was found).
        notes: Remarks the report should print (e.g. several W&B runs had the name).
    """

    name: str
    location: str
    frame: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.frame["method"]))

    def method(self, method: str) -> pd.DataFrame:
        """The rows of one method, indexed by ``(fname, slice, frame)``.

        Raises:
            RunNotRead: the method is not in the run, or a slice appears twice.
        """
        sub = self.frame[self.frame["method"] == method]
        if sub.empty:
            raise RunNotRead(f"{self.location}: no rows of method {method!r} (methods there: "
                             f"{', '.join(self.methods) or 'none'}); set the row's `method:`")
        sub = sub.set_index(["fname", "slice", "frame"])
        if sub.index.has_duplicates:
            dup = sub.index[sub.index.duplicated()][0]
            raise RunNotRead(f"{self.location}: method {method!r} has slice {dup} twice; "
                             "were two evaluations written into one run directory?")
        return sub


def normalise_frame(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Per-slice rows with the standard columns and dtypes (see :attr:`RunData.frame`).

    Raises:
        RunNotRead: a column is missing or a metric is not a number.
    """
    missing = [c for c in PER_SLICE_COLUMNS if c not in frame.columns]
    if missing:
        raise RunNotRead(f"{where}: per-slice table lacks column(s) {', '.join(missing)} "
                         f"(expected {', '.join(PER_SLICE_COLUMNS)})")
    out = frame[list(PER_SLICE_COLUMNS)].copy()
    out["fname"] = out["fname"].astype(str)
    out["method"] = out["method"].astype(str)
    try:
        out["slice"] = pd.to_numeric(out["slice"]).astype(int)
        out["frame"] = pd.to_numeric(out["frame"].replace({"": None})).fillna(-1).astype(int)
        for metric in METRICS:
            out[metric] = pd.to_numeric(out[metric].replace({"": None})).astype(float)
    except (TypeError, ValueError) as exc:
        raise RunNotRead(f"{where}: per-slice table has a value that is not a number ({exc})") from None
    return out.reset_index(drop=True)


# -- run directories -------------------------------------------------------------------------


def read_run_dir(path: str | Path, split: str, name: str | None = None) -> RunData:
    """Read ``path/.hydra/config.yaml`` and ``path/<output_subdir>/<split>_metrics.csv``.

    Args:
        path: The evaluation's run directory (``hydra.run.dir``).
        split: Which ``<split>_metrics.csv`` to read (``train``, ``val`` or ``test``).
        name: The manifest's name of the run (defaults to ``path``).

    Raises:
        RunNotRead: the directory, its config or its metrics are missing or unreadable;
            the reason names the path and what to check.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_dir():
        raise RunNotRead(f"{path}: no such run directory (has `python -m metamri.evaluate ... "
                         f"hydra.run.dir={path}` run? is runs_root right?)")
    cfg_path = path / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise RunNotRead(f"{cfg_path}: missing; {path} is not a Hydra run directory of "
                         "metamri.evaluate")
    try:
        config = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    except Exception as exc:  # a YAML or OmegaConf error: report it as this run's problem
        raise RunNotRead(f"{cfg_path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise RunNotRead(f"{cfg_path}: not a mapping")
    subdir = config.get("output_subdir") or "reconstruction"
    csv_path = path / subdir / f"{split}_metrics.csv"
    if not csv_path.is_file():
        found = sorted(p.name for p in (path / subdir).glob("*_metrics.csv"))
        ran = config.get("split")
        what = f"found {', '.join(found)}" if found else "no *_metrics.csv there"
        raise RunNotRead(f"{csv_path}: missing ({what}; the run's config has split={ran!r}); "
                         "the evaluation may not have finished")
    try:
        table = MetricTable.from_csv(csv_path)
    except (DataFileError, OSError) as exc:
        raise RunNotRead(f"{csv_path}: {exc}") from None
    if len(table) == 0:
        raise RunNotRead(f"{csv_path}: no rows")
    return RunData(name, str(path), normalise_frame(table.to_frame(), str(csv_path)), config)


# -- W&B ------------------------------------------------------------------------------------


class WandbRuns:
    """Reads evaluation runs from W&B by display name.

    For a name it queries ``api.runs("<entity>/<project>", filters={"display_name": name})``,
    keeps runs with ``job_type == "evaluate"`` whose state is ``finished`` (newest first),
    and reads the ``per_slice`` table from the newest one's logged artifact
    ``run-<id>-per_slice`` (type ``run_table``): ``artifact.get("per_slice")``, a
    ``wandb.Table`` with ``columns`` and ``data``.

    Args:
        entity: W&B entity (``None``: the API's default entity).
        project: W&B project.
        api: A ``wandb.Api``-like object (tests pass a fake); ``None`` makes a ``wandb.Api()``
            on first use.
    """

    def __init__(self, entity: str | None, project: str, api: Any = None) -> None:
        self.entity, self.project = entity, project
        self._api = api

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}" if self.entity else str(self.project)

    @property
    def api(self):
        if self._api is None:
            import wandb

            self._api = wandb.Api()
        return self._api

    def read(self, name: str, split: str) -> RunData:
        """The per-slice rows of the newest finished evaluate run named ``name``.

        Raises:
            RunNotRead: no such run, none finished, the run evaluated another split, or it
                has no ``per_slice`` table; the reason names the run and the project.
        """
        where = f"wandb:{self.path} run {name!r}"
        try:
            runs = list(self.api.runs(self.path, filters={"display_name": name}, order="-created_at"))
        except Exception as exc:  # network, auth, unknown project: this run is not readable
            raise RunNotRead(f"{where}: the W&B query failed ({type(exc).__name__}: {exc})") from None
        runs = [r for r in runs if getattr(r, "name", None) == name]
        evals = [r for r in runs if getattr(r, "job_type", None) in ("evaluate", None)]
        if not evals:
            other = f" ({len(runs)} with another job_type)" if runs else ""
            raise RunNotRead(f"{where}: no evaluate run with that name{other}; was the evaluation "
                             "logged online (logger.wandb.offline=false) or synced (wandb sync)?")
        finished = [r for r in evals if getattr(r, "state", "finished") == "finished"]
        if not finished:
            states = ", ".join(sorted({str(getattr(r, "state", "?")) for r in evals}))
            raise RunNotRead(f"{where}: {len(evals)} run(s) with that name, none finished "
                             f"(states: {states})")
        run = finished[0]
        config = dict(getattr(run, "config", {}) or {})
        location = f"wandb:{self.path}/{run.id}"
        if config.get("split") not in (None, split):
            raise RunNotRead(f"{location} ({name}): evaluated split {config['split']!r}, the "
                             f"manifest asks for {split!r}")
        frame = normalise_frame(self._table(run, location), location)
        notes = []
        if len(finished) > 1:
            notes.append(f"{len(finished)} finished W&B runs are named {name!r}; used the newest "
                         f"({run.id})")
        return RunData(name, location, frame, config, notes)

    def _table(self, run, location: str) -> pd.DataFrame:
        wanted = f"run-{run.id}-{WANDB_TABLE_KEY}"
        arts = [a for a in run.logged_artifacts()
                if getattr(a, "type", "run_table") == "run_table"
                and str(a.name).split(":")[0] == wanted]
        if not arts:
            raise RunNotRead(f"{location}: no `{WANDB_TABLE_KEY}` table logged (artifact {wanted})")
        table = arts[-1].get(WANDB_TABLE_KEY)
        if table is None:
            raise RunNotRead(f"{location}: artifact {wanted} has no entry `{WANDB_TABLE_KEY}`")
        return pd.DataFrame(list(table.data), columns=list(table.columns))


# -- both -----------------------------------------------------------------------------------


class RunCollector:
    """Reads each run once, from a directory under ``runs_root`` or from W&B.

    Args:
        runs_root: Directory the manifest's run paths are relative to.
        split: Which split's metrics to read.
        wandb: The :class:`WandbRuns` for rows with ``source: wandb`` (made on first use by
            ``wandb_factory`` when ``None``).
        wandb_factory: Builds the :class:`WandbRuns` on first use.
    """

    def __init__(self, runs_root: Path, split: str, wandb: WandbRuns | None = None,
                 wandb_factory: Callable[[], WandbRuns] | None = None) -> None:
        self.runs_root, self.split = Path(runs_root), split
        self._wandb, self._factory = wandb, wandb_factory
        self._cache: dict[tuple[str, str], RunData | RunNotRead] = {}

    def get(self, run: str, source: str = "runs") -> RunData:
        """The run's data; raises :class:`RunNotRead` (the same one on every call)."""
        key = (source, run)
        if key not in self._cache:
            try:
                self._cache[key] = self._read(run, source)
            except RunNotRead as exc:
                self._cache[key] = exc
        got = self._cache[key]
        if isinstance(got, RunNotRead):
            raise got
        return got

    def _read(self, run: str, source: str) -> RunData:
        if source == "wandb":
            if self._wandb is None:
                if self._factory is None:
                    raise RunNotRead(f"wandb run {run!r}: no W&B reader configured")
                self._wandb = self._factory()
            return self._wandb.read(run, self.split)
        path = Path(run)
        return read_run_dir(path if path.is_absolute() else self.runs_root / path, self.split, run)


def describe_setup(config: dict[str, Any]) -> str:
    """One line of what a run's config says about its reconstruction setup.

    Reads both the nested Hydra config of a run directory (``mask: {_target_, acceleration}``,
    lists) and the flat W&B config of :mod:`metamri.evaluation.wandb_log` (``mask:
    Uniform1D``, ``acceleration: 4``, comma-joined ``drop_fields``, ``corrupt_<key>``). A metadata
    corruption that is on shows as ``corrupt(<its settings that are on>, seed=N)``.

    >>> describe_setup({"prior": "ckpt/last.ckpt", "guidance_scale": 1.0, "ensemble": 1,
    ...                 "drop_fields": ["te"], "mask": {"_target_": "a.Uniform1D", "acceleration": 4}})
    'prior=ckpt/last.ckpt, guidance_scale=1.0, ensemble=1, drop_fields=[te], mask=Uniform1D 4x'
    >>> describe_setup({"drop_fields": "te,ti", "mask": "Uniform1D", "acceleration": 8})
    'drop_fields=[te, ti], mask=Uniform1D 8x'
    >>> describe_setup({"corrupt": {"missing_rate": 0.5, "numeric_scale": 0.0, "wrong_fields": [],
    ...                             "shuffle": False, "seed": 0}})
    'corrupt(missing_rate=0.5, seed=0)'
    >>> describe_setup({"corrupt_wrong_fields": "contrast", "corrupt_shuffle": True, "corrupt_seed": 1})
    'corrupt(wrong_fields=[contrast], shuffle, seed=1)'
    """
    parts = []
    for key in ("prior", "guidance_scale", "ensemble"):
        if config.get(key) is not None:
            parts.append(f"{key}={config[key]}")
    for key in ("drop_fields", "keep_fields"):
        value = config.get(key)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if value:
            parts.append(f"{key}=[{', '.join(map(str, value))}]")
    corrupt = _corruption(config)
    if corrupt:
        parts.append(f"corrupt({corrupt})")
    mask, accel = _target_and(config.get("mask"), "acceleration", config.get("acceleration"))
    if mask is not None:
        parts.append(f"mask={mask}" + (f" {accel}x" if accel is not None else ""))
    sampler, steps = _target_and(config.get("sampler"), "num_steps", config.get("num_steps"))
    if sampler is not None and config.get("prior"):
        parts.append(f"sampler={sampler}" + (f" {steps} steps" if steps is not None else ""))
    if config.get("domain") is not None:
        parts.append(f"domain={config['domain']}")
    return ", ".join(parts) or "(no config)"


def _corruption(config: dict[str, Any]) -> str:
    """The metadata corruption's summary from nested or flat keys (``""`` when off)."""
    from metamri.errors import ConfigError
    from metamri.metadata.corruption import KEYS, MetadataCorruption

    node = config.get("corrupt")
    if not isinstance(node, dict):
        node = {k: config[f"corrupt_{k}"] for k in KEYS if config.get(f"corrupt_{k}") is not None}
        if isinstance(node.get("wrong_fields"), str):
            node["wrong_fields"] = [f for f in node["wrong_fields"].split(",") if f]
    try:
        corruption = MetadataCorruption.from_config(node)
    except ConfigError:
        return f"unreadable: {node}"
    return corruption.summary() if corruption.active else ""


def _target_and(node: Any, key: str, flat: Any) -> tuple[str | None, Any]:
    """``(short class name, node[key])`` of a ``_target_`` dict, or ``(node, flat)`` of a name."""
    if isinstance(node, dict):
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1], node.get(key)
    if node is None:
        return None, None
    return str(node).rsplit(".", 1)[-1], flat


def volume_count(frame: pd.DataFrame) -> int:
    """Distinct volumes (``fname``) in per-slice rows."""
    return int(np.unique(frame.reset_index()["fname"].to_numpy()).size)
