"""One W&B run per ``python -m metamri.evaluate`` run (offline by default).

After the evaluation has written its CSV and summary, rank 0 calls :func:`log_evaluation`,
which opens one W&B run (``job_type="evaluate"``), gives it

* a flat **config** (:func:`run_config`): plain values only (strings, numbers, ``None``;
  lists as comma-joined strings), so that W&B's table of runs sorts and groups by each key;
* a **summary** (:func:`summary_dict`): ``<method>/<metric>_mean`` and ``_std`` over slices
  for every method and metric (psnr, ssim, lpips, nmse; ``None`` where a value is NaN, e.g.
  LPIPS not computed or the std of one slice), ``n_slices`` and ``n_volumes``;
* the per-slice table as a ``wandb.Table`` under ``per_slice`` (the columns of the CSV:
  ``fname, slice, frame, method, psnr, ssim, lpips, nmse``), and
* up to ``wandb.panels`` image panels (:mod:`metamri.evaluation.panels`) under
  ``reconstructions``, as the training callback logs them,

and finishes it, so that every job of an evaluate ``-m`` sweep is its own run.

**Grouping** (:func:`resolve_group`): ``wandb.group`` when set; else, for a checkpoint
``<train_run>/checkpoints/*.ckpt``, the training run's W&B group (``logger.wandb.group``,
else ``wandb_group``, of ``<train_run>/.hydra/config.yaml``; the training run's directory
name when that file is missing); for a diffusers directory, the directory's name; for any
other checkpoint file, its stem; without a prior (baselines only), ``baselines``. The
training run's W&B id, when its ``<train_run>/wandb/`` folder holds one, is recorded as
``train_wandb_id`` in the config.

**Mode** (:func:`resolve_mode`): an explicit ``wandb.mode`` (``offline``, the default;
``online``; ``disabled``) wins over the environment's ``WANDB_MODE`` (what the Makefile
sets); ``wandb.mode=null`` defers to ``WANDB_MODE``, else ``offline``. ``wandb.enabled=false``
skips W&B entirely (nothing of ``wandb`` is imported). An offline run lies in
``<run_dir>/wandb/offline-run-*``; ``wandb sync <that dir>`` uploads it later.

**Failures** never lose the evaluation: the outputs are on disk before W&B is touched, and
any exception in importing ``wandb``, ``wandb.init``, logging or ``finish`` is logged as a
warning naming the step that failed; the evaluation still returns its metric.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from metamri.errors import ConfigError
from metamri.evaluation.wandb_offline import wait_until_complete
from metamri.metrics.table import COLUMNS, METRICS, MetricTable
from metamri.utils.hydra import cfg_get, plain

log = logging.getLogger(__name__)

#: The ``wandb.mode`` values (W&B's own).
MODES = ("offline", "online", "disabled")
#: W&B's legacy spellings of the modes, accepted in ``WANDB_MODE``.
_ENV_ALIASES = {"dryrun": "offline", "run": "online"}
#: The W&B key of the per-slice table (what :mod:`metamri.report.collect` reads).
TABLE_KEY = "per_slice"
#: The W&B key of the image panels.
PANELS_KEY = "reconstructions"
#: The group of a run without a prior (baselines only), unless ``wandb.group`` is set.
BASELINES_GROUP = "baselines"
#: A W&B run folder: ``run-<YYYYMMDD_HHMMSS>-<id>`` or ``offline-run-...``.
_RUN_DIR = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9]+)$")


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WandbSettings:
    """The ``wandb`` block of ``conf/evaluate.yaml``, checked.

    Attributes:
        mode: ``offline`` | ``online`` | ``disabled`` (after :func:`resolve_mode`).
        project: W&B project.
        entity: W&B entity (``None``: the default entity of the login).
        group: An explicit group (``None``: :func:`resolve_group` derives one).
        name: An explicit display name (``None``: :func:`default_name` of the run dir).
        panels: How many image panels to log (rank 0's first slices); 0 none.
    """

    mode: str = "offline"
    project: str = "metamri"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    panels: int = 4

    @classmethod
    def from_config(cls, cfg: Any, environ: Mapping[str, str] | None = None) -> WandbSettings | None:
        """The settings of ``cfg.wandb``, or ``None`` when ``wandb.enabled`` is false.

        A config without a ``wandb`` block gets the defaults (enabled, offline). Cheap and
        free of ``wandb`` imports: call it before the evaluation so that a bad value stops
        the run before any work.

        Raises:
            ConfigError: ``wandb.mode`` (or ``WANDB_MODE`` when the mode is ``null``) is
                not one of :data:`MODES`, or ``wandb.panels`` is not a non-negative integer.
        """
        block = plain(cfg_get(cfg, "wandb")) or {}
        if not isinstance(block, Mapping):
            raise ConfigError("wandb", block, "expected a mapping (enabled, mode, project, entity, "
                                              "group, name, panels)")
        if not bool(block.get("enabled", True)):
            return None
        panels = block.get("panels", 4)
        panels = 0 if panels is None else panels
        if isinstance(panels, bool) or not isinstance(panels, int) or panels < 0:
            raise ConfigError("wandb.panels", block.get("panels"), "must be a non-negative integer")
        return cls(
            mode=resolve_mode(block.get("mode", "offline"), environ),
            project=str(block.get("project") or "metamri"),
            entity=_str_or_none(block.get("entity")),
            group=_str_or_none(block.get("group")),
            name=_str_or_none(block.get("name")),
            panels=panels,
        )


def resolve_mode(value: Any, environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode: an explicit ``value`` wins; ``None`` takes ``WANDB_MODE``, else ``offline``.

    >>> resolve_mode("online", {"WANDB_MODE": "offline"})
    'online'
    >>> resolve_mode(None, {"WANDB_MODE": "disabled"}), resolve_mode(None, {})
    ('disabled', 'offline')

    Raises:
        ConfigError: Not one of :data:`MODES` (naming ``wandb.mode`` or ``WANDB_MODE``).
    """
    environ = os.environ if environ is None else environ
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        env = (environ.get("WANDB_MODE") or "").strip().lower()
        if not env:
            return "offline"
        env = _ENV_ALIASES.get(env, env)
        if env not in MODES:
            raise ConfigError("WANDB_MODE (environment, read since wandb.mode is null)", env,
                              f"choose one of {list(MODES)}")
        return env
    mode = str(value).strip().lower()
    if mode not in MODES:
        raise ConfigError("wandb.mode", value, f"choose one of {list(MODES)}",
                          hint="or wandb.mode=null to take the environment's WANDB_MODE (else offline); "
                               "wandb.enabled=false skips W&B")
    return mode


# -- the training run and the group -----------------------------------------------------------


@dataclass(frozen=True)
class TrainRun:
    """The training run a checkpoint prior came from (all ``None`` when it came from none).

    Attributes:
        path: The training run directory (``<train_run>/checkpoints/*.ckpt``).
        group: Its W&B group (``logger.wandb.group``, else ``wandb_group``, of its
            ``.hydra/config.yaml``), ``None`` when unreadable.
        wandb_id: Its W&B run id (the newest run folder under ``<train_run>/wandb/``).
    """

    path: Path | None = None
    group: str | None = None
    wandb_id: str | None = None

    @classmethod
    def of_prior(cls, prior: str | PathLike[str] | None) -> TrainRun:
        """The training run of ``prior`` (see :func:`train_run_dir`), read; empty for none."""
        run = train_run_dir(prior)
        if run is None:
            return cls.of_export(prior)
        return cls(run, train_wandb_group(run), train_wandb_id(run))

    @classmethod
    def of_export(cls, prior: str | PathLike[str] | None) -> TrainRun:
        """The training run an exported prior directory names in its ``export.json``
        (``train_run``, ``train_wandb_group``, ``train_wandb_id``, recorded at export; the
        run directory itself may be gone); empty for other priors."""
        info_path = Path(str(prior or "")).expanduser() / "export.json"
        if not prior or not info_path.is_file():
            return cls()
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("W&B group: could not read %s (%s)", info_path, exc)
            return cls()
        run = info.get("train_run")
        return cls(None if run is None else Path(run), info.get("train_wandb_group"), info.get("train_wandb_id"))


def train_run_dir(prior: str | PathLike[str] | None) -> Path | None:
    """The training run directory of a checkpoint prior, or ``None``.

    A ``.ckpt`` file in a ``checkpoints/`` folder belongs to the run above that folder (the
    layout ``metamri.train`` writes: ``<run>/checkpoints/last.ckpt``); a ``.ckpt`` file next
    to a ``.hydra/config.yaml`` belongs to its folder. Directories (diffusers priors) and
    other files belong to none.
    """
    if not prior:
        return None
    p = Path(str(prior)).expanduser()
    if p.is_dir() or p.suffix != ".ckpt":
        return None
    if p.parent.name == "checkpoints":
        return p.parent.parent
    if (p.parent / ".hydra" / "config.yaml").is_file():
        return p.parent
    return None


def train_wandb_group(train_run: str | PathLike[str]) -> str | None:
    """The W&B group of a training run, from its ``.hydra/config.yaml``.

    ``logger.wandb.group`` (the group its W&B logger was given) when it resolves to a
    value, else ``wandb_group``; ``None`` when the file is missing, unreadable or has neither.
    """
    from omegaconf import OmegaConf

    path = Path(train_run) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        conf = OmegaConf.load(path)
    except Exception as exc:  # a broken file: group by the directory instead
        log.warning("W&B group: could not read %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    for key in ("logger.wandb.group", "wandb_group"):
        try:
            value = OmegaConf.select(conf, key, default=None, throw_on_resolution_failure=True)
        except Exception:  # an interpolation that needs Hydra's runtime: try the next key
            value = None
        if value is not None and not OmegaConf.is_config(value) and str(value):
            return str(value)
    return None


def train_wandb_id(train_run: str | PathLike[str]) -> str | None:
    """The W&B run id of a training run: its ``wandb/latest-run`` link's, else the newest
    ``wandb/(offline-)run-<time>-<id>`` folder's; ``None`` when there is none."""
    root = Path(train_run) / "wandb"
    if not root.is_dir():
        return None
    latest = root / "latest-run"
    if latest.is_symlink() or latest.is_dir():
        m = _RUN_DIR.match(Path(os.path.realpath(latest)).name)
        if m:
            return m.group(2)
    found = []
    for d in root.iterdir():
        m = _RUN_DIR.match(d.name)
        if m and d.is_dir():
            found.append((m.group(1), d.name, m.group(2)))
    return max(found)[2] if found else None


def resolve_group(explicit: str | None, prior: str | PathLike[str] | None,
                  train: TrainRun | None = None) -> str:
    """The W&B group of an evaluation (see the module doc for the order).

    Args:
        explicit: ``wandb.group`` (wins when set).
        prior: The evaluated prior (``None``: baselines only).
        train: Its :class:`TrainRun` (read from ``prior`` when ``None``).
    """
    if explicit:
        return str(explicit)
    if not prior:
        return BASELINES_GROUP
    train = TrainRun.of_prior(prior) if train is None else train
    if train.path is not None:
        return train.group or train.path.name
    p = Path(str(prior)).expanduser()
    return p.name if p.is_dir() else p.stem


def default_name(run_dir: str | PathLike[str]) -> str:
    """A display name from the run directory: its last two path parts, ``/``-joined.

    >>> default_name("/logs/evaluate/runs/2026-01-02/10-00-00_ab12")
    '2026-01-02/10-00-00_ab12'
    >>> default_name("experiments/study/eval/x4/text")
    'x4/text'
    """
    parts = Path(run_dir).parts
    return "/".join(parts[-2:]) if parts else str(run_dir)


# -- config and summary -----------------------------------------------------------------------


def run_config(cfg: Any, evaluation: Any = None, train: TrainRun | None = None) -> dict[str, Any]:
    """The W&B config of an evaluation: flat keys, plain values (see the module doc).

    Args:
        cfg: The composed ``evaluate`` config.
        evaluation: The :class:`~metamri.evaluation.run.SplitEvaluation` (its measured
            ``effective_acceleration``; ``None`` when not given).
        train: The prior's :class:`TrainRun` (``train_run``, ``train_wandb_id``); read from
            the prior when ``None``.

    Keys, in order: ``prior, train_run, train_wandb_id, split, domain, methods,
    guidance_scale, ensemble, drop_fields, keep_fields, corrupt_missing_rate, corrupt_numeric_scale,
    corrupt_wrong_fields, corrupt_shuffle, corrupt_seed, mask, acceleration,
    effective_acceleration`` (+ ``center_fraction``, ``min_center_lines`` where the mask has
    them), ``sampler, num_steps`` (+ ``eta``), ``items_per_volume, max_slices, batch_size,
    base_seed, coil_maps, scaling, cs_lamda``. Lists (``methods``, ``drop_fields``, ``keep_fields``)
    are comma-joined strings; ``keep_fields`` is ``None`` when unset (every field). The
    ``corrupt_*`` keys are the metadata corruption's settings
    (:class:`~metamri.metadata.corruption.MetadataCorruption`; ``corrupt_wrong_fields``
    comma-joined, ``""`` for none), present, at their off values, in every run.
    """
    from metamri.evaluation.builder import prior_path
    from metamri.metadata.corruption import MetadataCorruption

    with warnings.catch_warnings():  # the deprecated ckpt_path alias warned once already
        warnings.simplefilter("ignore", DeprecationWarning)
        prior = prior_path(cfg)
    train = TrainRun.of_prior(prior) if train is None else train
    mask = plain(cfg_get(cfg, "mask")) or {}
    sampler = plain(cfg_get(cfg, "sampler")) or {}
    cs = plain(cfg_get(cfg, "cs")) or {}
    mask = mask if isinstance(mask, Mapping) else {}
    sampler = sampler if isinstance(sampler, Mapping) else {}
    effective = None if evaluation is None else _float_or_none(evaluation.effective_acceleration)
    out: dict[str, Any] = {
        "prior": prior,
        "train_run": None if train.path is None else str(train.path),
        "train_wandb_id": train.wandb_id,
        "split": _str_or_none(cfg_get(cfg, "split")),
        "domain": _str_or_none(cfg_get(cfg, "domain")),
        "methods": _joined(cfg_get(cfg, "methods")),
        "guidance_scale": _float_or_none(cfg_get(cfg, "guidance_scale")),
        "ensemble": _int_or_none(cfg_get(cfg, "ensemble")),
        "drop_fields": _joined(cfg_get(cfg, "drop_fields")) or "",
        "keep_fields": _joined(cfg_get(cfg, "keep_fields")),
        **{f"corrupt_{k}": (",".join(v) if isinstance(v, list) else v)
           for k, v in MetadataCorruption.from_config(cfg_get(cfg, "corrupt")).to_dict().items()},
        "mask": _short_target(mask),
        "acceleration": _number(mask.get("acceleration")),
        "effective_acceleration": effective,
    }
    for key in ("center_fraction", "min_center_lines"):
        if key in mask:
            out[key] = _number(mask[key])
    out["sampler"] = _short_target(sampler)
    out["num_steps"] = _int_or_none(sampler.get("num_steps"))
    if "eta" in sampler:
        out["eta"] = _float_or_none(sampler["eta"])
    out.update(
        items_per_volume=_int_or_none(cfg_get(cfg, "items_per_volume")),
        max_slices=_int_or_none(cfg_get(cfg, "max_slices")),
        batch_size=_int_or_none(cfg_get(cfg, "batch_size")),
        base_seed=_int_or_none(cfg_get(cfg, "base_seed")),
        coil_maps=_str_or_none(cfg_get(cfg, "coil_maps")),
        scaling=_str_or_none(cfg_get(cfg, "scaling")),
        cs_lamda=_float_or_none(cs.get("lamda") if isinstance(cs, Mapping) else None),
    )
    return out


def summary_dict(table: MetricTable) -> dict[str, Any]:
    """The W&B summary of a per-slice table.

    ``<method>/<metric>_mean`` and ``<method>/<metric>_std`` (over slices, sample std as
    :meth:`MetricTable.summary`; ``None`` where NaN) for every method of the table and every
    metric in :data:`~metamri.metrics.table.METRICS`, then ``n_slices`` (distinct
    ``(fname, slice, frame)``) and ``n_volumes`` (distinct ``fname``).
    """
    out: dict[str, Any] = {}
    if len(table):
        summary = table.summary()
        for method in dict.fromkeys(summary.index.get_level_values(0)):
            for metric in METRICS:
                row = summary.loc[(method, metric)]
                out[f"{method}/{metric}_mean"] = _float_or_none(row["slice_mean"])
                out[f"{method}/{metric}_std"] = _float_or_none(row["slice_std"])
    rows = table.rows
    out["n_slices"] = len({(r.fname, r.slice, r.frame) for r in rows})
    out["n_volumes"] = len({r.fname for r in rows})
    return out


def table_rows(table: MetricTable) -> list[list[Any]]:
    """The rows of ``table`` as lists in :data:`~metamri.metrics.table.COLUMNS` order (the CSV's)."""
    return [[getattr(r, c) for c in COLUMNS] for r in table]


# -- the run ----------------------------------------------------------------------------------


def log_evaluation(settings: WandbSettings, cfg: Any, evaluation: Any, run_dir: str | PathLike[str],
                   primary: str | None = None) -> str | None:
    """Log one evaluation as one W&B run and finish it; never raises.

    Call it on rank 0 only, after the CSV and summary are written.

    Args:
        settings: From :meth:`WandbSettings.from_config`.
        cfg: The composed ``evaluate`` config (:func:`run_config`; ``tags``).
        evaluation: The :class:`~metamri.evaluation.run.SplitEvaluation` (its table, kept
            results for the panels, effective acceleration).
        run_dir: The run's output directory: W&B writes ``<run_dir>/wandb/``; the default
            display name derives from it.
        primary: The method the panels show (default: ``diffusion`` when in the table, else
            the table's last method).

    Returns:
        The W&B run's local directory (``.../wandb/offline-run-*``), or ``None`` when a step
        failed (a warning names it).
    """
    run_dir = Path(run_dir)
    step = "import wandb"
    run = None
    try:
        import wandb

        step = "reading the prior's training run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from metamri.evaluation.builder import prior_path

            prior = prior_path(cfg)
        train = TrainRun.of_prior(prior)
        group = resolve_group(settings.group, prior, train)
        step = "building the config"
        config = run_config(cfg, evaluation, train)
        env_mode = os.environ.get("WANDB_MODE")
        if env_mode and env_mode != settings.mode:
            log.info("W&B mode %s (config wandb.mode) overrides WANDB_MODE=%s", settings.mode, env_mode)
        step = "wandb.init"
        run = wandb.init(
            project=settings.project, entity=settings.entity,
            name=settings.name or default_name(run_dir), group=group, job_type="evaluate",
            tags=[str(t) for t in (plain(cfg_get(cfg, "tags")) or [])], dir=str(run_dir),
            mode=settings.mode, config=config, reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        step = "the summary"
        run.summary.update(summary_dict(evaluation.table))
        step = "the per-slice table"
        payload: dict[str, Any] = {TABLE_KEY: wandb.Table(columns=list(COLUMNS),
                                                          data=table_rows(evaluation.table))}
        step = "the image panels"
        images = panel_images(wandb, evaluation, settings.panels, primary)
        if images:
            payload[PANELS_KEY] = images
        step = "wandb.log"
        run.log(payload)
        local = getattr(run.settings, "sync_dir", None) or str(Path(run.dir).parent)
        step = "wandb.finish"
        run.finish()
        run = None
        if settings.mode == "offline" and not wait_until_complete(local):
            log.warning("W&B: the offline run %s was not closed 30 s after wandb.finish; "
                        "check it with python -m metamri.evaluation.wandb_offline %s", local, local)
        log.info("W&B %s run %s (group %s) -> %s", settings.mode, config.get("prior") or "baselines",
                 group, local)
        return str(local)
    except Exception as exc:
        log.warning("W&B logging failed at %s (%s: %s); the evaluation's CSV and summary are "
                    "written under %s", step, type(exc).__name__, exc, run_dir)
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception as again:
                log.warning("W&B: wandb.finish after the failure also failed (%s: %s)",
                            type(again).__name__, again)
        return None


def panel_images(wandb: Any, evaluation: Any, n: int, primary: str | None = None) -> list[Any]:
    """Up to ``n`` ``wandb.Image`` panels (ground truth | zero-filled | ``primary`` | error |
    std, :func:`~metamri.evaluation.panels.make_panel`) of the evaluation's kept results, with
    captions (:func:`~metamri.evaluation.panels.panel_caption`)."""
    from metamri.evaluation.panels import make_panel, panel_caption, to_uint8

    results = list(getattr(evaluation, "results", []) or [])[: max(0, int(n))]
    if not results:
        return []
    if primary is None:
        methods = list(dict.fromkeys(r.method for r in evaluation.table))
        primary = "diffusion" if "diffusion" in methods else (methods[-1] if methods else "zero_filled")
    return [wandb.Image(to_uint8(make_panel(r, primary)), caption=panel_caption(r, primary))
            for r in results if primary in r.images]


# -- helpers ----------------------------------------------------------------------------------


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _number(value: Any) -> int | float | None:
    """An int stays an int (``acceleration: 4``), anything numeric becomes a float."""
    if value is None or isinstance(value, bool):
        return value
    return value if isinstance(value, int) else _float_or_none(value)


def _joined(value: Any) -> str | None:
    """A list as a comma-joined string (``None`` stays ``None``; a string stays itself)."""
    value = plain(value)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return ",".join(str(v) for v in value)
    return str(value)


def _short_target(node: Mapping[str, Any]) -> str | None:
    """``metamri.physics.masks.Uniform1D`` -> ``Uniform1D`` (``None`` without ``_target_``)."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    return None if target is None else str(target).rsplit(".", 1)[-1]
