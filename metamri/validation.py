"""Config checks that every entry point runs first, before it creates or prepares anything.

``validate_<tool>(cfg)`` is the first thing :func:`metamri.train.train`,
:func:`metamri.evaluate.evaluate`, :func:`metamri.reconstruct.reconstruct`,
:func:`metamri.information.information`, ``metamri.preprocess`` and ``metamri.phantom`` do:
a bad value stops the run with a :class:`~metamri.errors.ConfigError` naming the key and the
value, before any data preparation, model, W&B run or output file exists (the command line
prints it as one line and removes the run directory Hydra made: :mod:`metamri.utils.cli`).

The checks are cheap: types and ranges of plain values (:mod:`metamri.utils.checks`), paths
that must exist (``prior``, ``ckpt_path``, ``inputs``), and the small objects whose own
constructors check their parameters (mask function, sampler, ESPIRiT and preprocessing
parameters, W&B settings). Nothing is read from the data or a checkpoint here: what only the
files can tell (a truncated checkpoint, an undersampled raw file) is the reader's to say.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from metamri.errors import ConfigError, MetamriError
from metamri.utils import checks
from metamri.utils.hydra import cfg_get, plain

#: ``cs.backend`` values (:func:`metamri.recon.baselines.compressed_sensing`).
CS_BACKENDS = ("auto", "bart", "sigpy")


def _required(cfg: Any, key: str) -> Any:
    """``cfg[key]``: a ``???`` left unset raises OmegaConf's MissingMandatoryValue (one line at the CLI)."""
    return cfg[key]


def _built(what: str, value: Any, build: Callable[[], Any]) -> Any:
    """``build()``; a metamri error inside Hydra's ``InstantiationException`` is raised as itself,
    any other failure as a ConfigError naming ``what``."""
    from hydra.errors import InstantiationException

    try:
        return build()
    except MetamriError:
        raise
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, MetamriError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise ConfigError(what, plain(value), f"cannot be built ({_first_line(exc.__cause__ or exc)})") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(what, plain(value), f"cannot be built ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def prefixed(error: ConfigError, prefix: str) -> ConfigError:
    """``error`` with its key named under ``prefix`` (``image_size`` -> ``data.preprocess.image_size``)."""
    key = f"{prefix}{error.key}"
    out = ConfigError(key, error.value, "x")
    out.args = (str(error).replace(f"config {error.key} ", f"config {key} ", 1),)
    return out


# -- shared pieces ---------------------------------------------------------------------------


def check_device(value: Any, key: str = "device"):
    """``value`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a torch device that exists here."""
    import torch

    name = str(value or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(key, name, "not a torch device", hint="auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, name, "CUDA is not available on this machine", hint="device=cpu")
    return device


def check_prior(cfg: Any, needed: bool) -> str | None:
    """The prior path (``prior``, or the deprecated ``ckpt_path``); when ``needed`` it must exist."""
    import warnings

    from metamri.evaluation.builder import prior_path

    with warnings.catch_warnings():  # the deprecation warning is the loader's to give, once
        warnings.simplefilter("ignore", DeprecationWarning)
        path = prior_path(cfg)
    key = "prior" if cfg_get(cfg, "prior") or not cfg_get(cfg, "ckpt_path") else "ckpt_path"
    if needed:
        if not path:
            raise ConfigError(key, None, "the diffusion method needs a prior",
                              hint=f"pass {key}=/path/to/last.ckpt (or an exported prior directory), "
                                   "or leave diffusion out of the methods")
        prior_exists(path, key)
    return path


def prior_exists(path: Any, key: str = "prior") -> None:
    """A prior path names an existing file or directory (what it holds is the loader's to check)."""
    if not isinstance(path, str | os.PathLike) or not Path(str(path)).expanduser().exists():
        raise ConfigError(key, path if not isinstance(path, os.PathLike) else str(path),
                          "no such checkpoint file or directory",
                          hint="a .ckpt of metamri.train, or a directory of metamri.export or ContextMRI")


def check_reconstruction(cfg: Any, *, diffusion: bool, methods: bool = True) -> None:
    """The ``reconstruction`` group (``conf/reconstruction/default.yaml``) at the top of ``cfg``.

    Args:
        cfg: The evaluate / reconstruct config (the group's keys at its top level).
        diffusion: The diffusion method runs (the sampler and its keys are checked).
        methods: Check the ``methods`` key (``metamri.reconstruct`` has ``method`` instead).
    """
    from metamri.evaluation.builder import build_mask, build_sampler, cs_kwargs
    from metamri.evaluation.reconstructor import COIL_MAPS, METHODS, SCALINGS
    from metamri.metadata.corruption import MetadataCorruption
    from metamri.metadata.record import Metadata
    from metamri.preprocess.espirit import EspiritParams

    if methods:
        names = checks.string_list(cfg_get(cfg, "methods"), "methods")
        if not names or any(m not in METHODS for m in names):
            raise ConfigError("methods", names, f"choose a non-empty subset of {list(METHODS)}")
    scale = checks.number(cfg_get(cfg, "guidance_scale", 1.0), "guidance_scale",
                          hint="the CFG scale: 0 unconditional, 1 conditional, > 1 amplified")
    checks.integer(cfg_get(cfg, "ensemble", 1), "ensemble", minimum=1, hint="K samples per slice")
    checks.integer(cfg_get(cfg, "base_seed", 0), "base_seed")
    checks.boolean(cfg_get(cfg, "use_ema", True), "use_ema")
    checks.choice(cfg_get(cfg, "coil_maps", "fully_sampled"), "coil_maps", COIL_MAPS)
    checks.choice(cfg_get(cfg, "scaling", "reference"), "scaling", SCALINGS)
    drop = checks.string_list(cfg_get(cfg, "drop_fields"), "drop_fields", allow_none=True) or []
    keep = checks.string_list(cfg_get(cfg, "keep_fields"), "keep_fields", allow_none=True)
    known = [f.name for f in dataclasses.fields(Metadata)]
    for key, names in (("drop_fields", drop), ("keep_fields", keep or [])):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(key, names, f"unknown metadata field {unknown[0]!r}", hint=f"known: {known}")
    MetadataCorruption.from_config(cfg_get(cfg, "corrupt"))
    cs = cs_kwargs(cfg_get(cfg, "cs"))
    if "lamda" in cs:
        checks.number(cs["lamda"], "cs.lamda", minimum=0.0)
    if "n_iter" in cs:
        checks.integer(cs["n_iter"], "cs.n_iter", minimum=1)
    if "backend" in cs:
        checks.choice(cs["backend"], "cs.backend", CS_BACKENDS)
    if "wavelet" in cs:
        checks.text(cs["wavelet"], "cs.wavelet")
    if "cycle_spinning" in cs:
        checks.boolean(cs["cycle_spinning"], "cs.cycle_spinning")
    mask = cfg_get(cfg, "mask")
    _built("mask", mask, lambda: build_mask(mask))
    EspiritParams.from_config(cfg_get(cfg, "espirit"))
    if diffusion:
        sampler = cfg_get(cfg, "sampler")
        _built("sampler", sampler, lambda: build_sampler(sampler, None, scale))


def check_data(data: Any, key: str = "data") -> None:
    """A data module config (``conf/data/``): counts, the OOD ratio, fractions, preprocessing."""
    from metamri.datamodules.datamodule import DOMAINS
    from metamri.datamodules.splits import SPLITS
    from metamri.preprocess.espirit import EspiritParams
    from metamri.preprocess.pipeline import PreprocessParams

    if data is None:
        raise ConfigError(key, None, "give a data config", hint="choose one of conf/data/")
    sources = plain(cfg_get(data, "sources"))
    if not isinstance(sources, Mapping) or not any(v is not None for v in sources.values()) \
            or set(sources) - set(DOMAINS):
        raise ConfigError(f"{key}.sources", sources, f"a mapping of {list(DOMAINS)} to raw directories")
    ratio = plain(cfg_get(data, "ood_ratio"))
    if ratio is not None:
        checks.int_pair(ratio, f"{key}.ood_ratio", minimum=(0, 1), what="[ood, in_distribution] draws per block",
                        hint="e.g. data.ood_ratio=[1,5] (the paper's 1:5), or null without OOD data")
    checks.integer(cfg_get(data, "batch_size", 4), f"{key}.batch_size", minimum=1)
    for name, minimum in (("eval_batch_size", 1), ("num_workers", 0), ("max_open_files", 1)):
        if cfg_get(data, name) is not None:
            checks.integer(cfg_get(data, name), f"{key}.{name}", minimum=minimum)
    checks.integer(cfg_get(data, "val_max_items"), f"{key}.val_max_items", minimum=1, allow_none=True)
    if cfg_get(data, "metadata_strict") is not None:
        checks.boolean(cfg_get(data, "metadata_strict"), f"{key}.metadata_strict")
    checks.integer(cfg_get(data, "split_seed", 0), f"{key}.split_seed")
    checks.integer(cfg_get(data, "shuffle_seed"), f"{key}.shuffle_seed", allow_none=True)
    fractions = plain(cfg_get(data, "split_fractions"))
    if fractions is not None:
        if not isinstance(fractions, Mapping) or set(fractions) - set(SPLITS):
            raise ConfigError(f"{key}.split_fractions", fractions, f"a mapping of {list(SPLITS)} to fractions")
        for split, value in fractions.items():
            checks.number(value, f"{key}.split_fractions.{split}", minimum=0.0, maximum=1.0)
        if abs(sum(fractions.values()) - 1.0) > 1e-6:
            raise ConfigError(f"{key}.split_fractions", fractions, "fractions must sum to 1")
    pre = dict(plain(cfg_get(data, "preprocess")) or {})
    prefix = f"{key}.preprocess."
    try:
        PreprocessParams(espirit=EspiritParams.from_config(pre.get("espirit")), image_size=pre.get("image_size"),
                         cardiac_frames=pre.get("cardiac_frames", "all"),
                         cine_maps=pre.get("cine_maps", "time_average"))
    except ConfigError as exc:
        raise prefixed(exc, prefix) from None
    if pre.get("workers") is not None:
        checks.integer(pre["workers"], f"{prefix}workers", minimum=0)


# -- one per tool ----------------------------------------------------------------------------


def validate_evaluate(cfg: Any) -> None:
    """``conf/evaluate.yaml``: the prior, the split, counts, the reconstruction group, data, W&B."""
    from metamri.datamodules.datamodule import DOMAINS
    from metamri.datamodules.splits import SPLITS
    from metamri.evaluation.wandb_log import WandbSettings

    methods = checks.string_list(cfg_get(cfg, "methods"), "methods") or []
    check_reconstruction(cfg, diffusion="diffusion" in methods)
    check_prior(cfg, needed="diffusion" in methods)
    checks.choice(cfg_get(cfg, "split"), "split", SPLITS)
    checks.choice(cfg_get(cfg, "domain"), "domain", DOMAINS)
    checks.integer(cfg_get(cfg, "max_slices"), "max_slices", minimum=1, allow_none=True,
                   hint="the first N slices of the split; null for all")
    checks.integer(cfg_get(cfg, "items_per_volume"), "items_per_volume", minimum=1, allow_none=True,
                   hint="the central k slices of each volume; null for all")
    checks.integer(cfg_get(cfg, "batch_size", 1), "batch_size", minimum=1, hint="slices per sampler call")
    checks.integer(cfg_get(cfg, "num_threads"), "num_threads", minimum=1, allow_none=True)
    checks.integer(cfg_get(cfg, "seed", 0), "seed")
    for name in ("lpips", "prepare_data"):
        checks.boolean(cfg_get(cfg, name, True), name)
    checks.text(cfg_get(cfg, "output_subdir", "reconstruction"), "output_subdir")
    check_data(cfg_get(cfg, "data"))
    WandbSettings.from_config(cfg)


def validate_reconstruct(cfg: Any) -> None:
    """``conf/reconstruct.yaml``: inputs, method, prior, device, the reconstruction group."""
    from metamri.reconstruct import METHODS, input_files

    method = checks.choice(cfg_get(cfg, "method"), "method", METHODS)
    if cfg_get(cfg, "coil_maps", "calibration") != "calibration":
        raise ConfigError("coil_maps", cfg.coil_maps, "a measured file has only its calibration region",
                          hint="metamri.reconstruct always uses coil_maps=calibration")
    if cfg_get(cfg, "scaling", "measured") != "measured":
        raise ConfigError("scaling", cfg.scaling, "a measured file has no fully sampled image to take the p99 of",
                          hint="metamri.reconstruct always uses scaling=measured")
    check_reconstruction(cfg, diffusion=method == "diffusion", methods=False)
    if cfg_get(cfg_get(cfg, "corrupt"), "shuffle", False) is True:
        raise ConfigError("corrupt.shuffle", True, "swaps headers between the volumes of an evaluated split",
                          hint="metamri.reconstruct has no split: use metamri.evaluate, or corrupt.shuffle=false")
    check_prior(cfg, needed=method == "diffusion")
    check_device(cfg_get(cfg, "device", "cpu"))
    checks.boolean(cfg_get(cfg, "overwrite", False), "overwrite")
    out = cfg_get(cfg, "out_dir")
    checks.text(None if out is None else str(out), "out_dir")
    input_files(_required(cfg, "inputs"), exclude=str(out))


def validate_train(cfg: Any) -> None:
    """``conf/train.yaml``: the resume checkpoint, seed, optimizer, EMA, trainer counts, data."""
    ckpt = cfg_get(cfg, "ckpt_path")
    if ckpt is not None and ckpt != "":
        checks.existing_path(ckpt, "ckpt_path", kind="file",
                             hint="resume from a file such as <run>/checkpoints/last.ckpt, or ckpt_path=null")
    checks.integer(cfg_get(cfg, "seed", 0), "seed")
    for name in ("train", "test"):
        checks.boolean(cfg_get(cfg, name, name == "train"), name)
    opt = cfg_get(cfg, "optimizer")
    if opt is not None:
        if cfg_get(opt, "lr") is not None:
            checks.number(cfg_get(opt, "lr"), "optimizer.lr", above=0.0)
        if cfg_get(opt, "weight_decay") is not None:
            checks.number(cfg_get(opt, "weight_decay"), "optimizer.weight_decay", minimum=0.0)
    module = cfg_get(cfg, "module")
    if module is not None:
        checks.number(cfg_get(module, "ema_decay"), "module.ema_decay", minimum=0.0, below=1.0, allow_none=True)
    trainer = cfg_get(cfg, "trainer")
    if trainer is not None:
        for name, minimum in (("max_steps", -1), ("max_epochs", -1), ("accumulate_grad_batches", 1),
                              ("log_every_n_steps", 1), ("num_sanity_val_steps", -1)):
            if cfg_get(trainer, name) is not None:
                checks.integer(cfg_get(trainer, name), f"trainer.{name}", minimum=minimum)
        if cfg_get(trainer, "gradient_clip_val") is not None:
            checks.number(cfg_get(trainer, "gradient_clip_val"), "trainer.gradient_clip_val", minimum=0.0)
    for group in ("timesteps", "dropout", "finetune"):  # small objects: built here, thrown away
        node = cfg_get(cfg, group)
        if node is not None and cfg_get(node, "_target_") is not None:
            _built(group, node, lambda node=node: _instantiate(node))
    check_data(cfg_get(cfg, "data"))


def _instantiate(node: Any) -> Any:
    from hydra.utils import instantiate

    return instantiate(plain(node))


def validate_information(cfg: Any) -> None:
    """``conf/information.yaml``: split, prior, out, counts, device, data."""
    from metamri.analysis.information import check_counts
    from metamri.datamodules.datamodule import DOMAINS
    from metamri.datamodules.splits import SPLITS

    split = cfg_get(cfg, "split")
    if split not in SPLITS:
        raise ConfigError("split", split, "unknown split", hint=f"choose one of {list(SPLITS)}")
    checks.choice(cfg_get(cfg, "domain"), "domain", DOMAINS)
    if not cfg_get(cfg, "prior"):
        raise ConfigError("prior", cfg_get(cfg, "prior"), "give the prior to measure",
                          hint="prior=/path/last.ckpt (metamri.train) or a diffusers directory")
    if not cfg_get(cfg, "out"):
        raise ConfigError("out", cfg_get(cfg, "out"), "give the CSV to write", hint="out=information.csv")
    check_counts(plain(cfg_get(cfg, "max_items")), plain(cfg_get(cfg, "batch_size", 8)))
    check_device(cfg_get(cfg, "device", "auto"))
    checks.integer(cfg_get(cfg, "num_threads"), "num_threads", minimum=1, allow_none=True)
    checks.integer(cfg_get(cfg, "seed", 0), "seed")
    prior_exists(cfg_get(cfg, "prior"))
    check_data(cfg_get(cfg, "data"))


def validate_preprocess(cfg: Any) -> None:
    """``conf/preprocess.yaml``: ESPIRiT, image size, frames, workers; the inputs exist."""
    from metamri.preprocess.espirit import EspiritParams
    from metamri.preprocess.pipeline import PreprocessParams, discover_sources

    PreprocessParams(espirit=EspiritParams.from_config(cfg_get(cfg, "espirit")),
                     image_size=plain(cfg_get(cfg, "image_size")),
                     cardiac_frames=plain(cfg_get(cfg, "cardiac_frames", "all")),
                     cine_maps=cfg_get(cfg, "cine_maps", "time_average"))
    checks.integer(cfg_get(cfg, "workers", 0), "workers", minimum=0, hint="0 runs inline")
    for name in ("allow_crop", "overwrite", "progress"):
        checks.boolean(cfg_get(cfg, name, False), name)
    checks.text(None if cfg_get(cfg, "cache_dir") is None else str(cfg_get(cfg, "cache_dir")), "cache_dir")
    discover_sources(plain(_required(cfg, "input_dir")))


def validate_phantom(cfg: Any) -> None:
    """``conf/phantom.yaml``: the preset, seed and every domain's counts (before any file is written)."""
    from metamri.phantom.generate import phantom_configs

    seed = cfg_get(cfg, "seed", 0)
    checks.integer(seed, "seed", minimum=0)
    domains = {d: {k: v for k, v in (plain(cfg_get(cfg, d)) or {}).items() if v is not None}
               for d in ("brain", "cardiac")}
    phantom_configs(brain=domains["brain"], cardiac=domains["cardiac"], noise=plain(cfg_get(cfg, "noise")) or {},
                    preset=cfg_get(cfg, "preset"))
