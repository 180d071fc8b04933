"""One way to build a :class:`~metamri.evaluation.reconstructor.Reconstructor` from config.

``python -m metamri.evaluate``, ``python -m metamri.reconstruct`` and the training
:class:`~metamri.evaluation.callback.ReconstructionCallback` all compose the Hydra group
``conf/reconstruction/default.yaml`` and call :func:`build_reconstructor` (also
:meth:`Reconstructor.from_config <metamri.evaluation.reconstructor.Reconstructor.from_config>`)
on it. The group's keys:

============== ===================================================================
``mask``        a mask function config (``conf/mask/``) or object
``sampler``     a sampler config (``conf/sampler/``), a factory or a ready sampler;
                finished here with the module's noise schedule (``alphas_cumprod``)
                and ``guidance_scale``
``methods``     subset of ``[zero_filled, cs, diffusion]``
``guidance_scale`` the CFG scale ``s`` (the one knob: the sampler configs carry none)
``ensemble``    K samples per slice (complex mean)
``drop_fields`` / ``keep_fields``  metadata ablations
``corrupt``     a seeded, per-volume metadata corruption applied before the ablations
                (:class:`~metamri.metadata.corruption.MetadataCorruption`: ``missing_rate``,
                ``numeric_scale``, ``wrong_fields``, ``shuffle``, ``seed``; all off by default)
``base_seed``   mixed into every slice's ensemble seeds
``use_ema``     sample with the EMA weights
``cs``          keyword arguments of :func:`metamri.recon.baselines.compressed_sensing`
``coil_maps``   ``fully_sampled`` (the cached ESPIRiT maps of the fully sampled data, as
                the paper's preprocessing) or ``calibration`` (ESPIRiT from the measured
                calibration region, :mod:`metamri.preprocess.measured`)
``espirit``     :class:`~metamri.preprocess.espirit.EspiritParams` (``conf/espirit/``)
``scaling``     ``reference`` (the cache's true p99 divisor, the retrospective protocol) or
                ``measured`` (the p99 of the zero-filled image, as a measured file allows)
============== ===================================================================

Example::

    from hydra import compose, initialize_config_dir
    from metamri.evaluation import build_reconstructor
    from metamri.priors import load_prior

    with initialize_config_dir(config_dir="/path/to/metamri/conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=["prior=/runs/x/last.ckpt", "guidance_scale=2"])
    rec = build_reconstructor(cfg, load_prior(cfg.prior))
    result = rec(sample)          # an ImageSample of the data module's eval_dataset
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from metamri.errors import ConfigError
from metamri.utils import checks
from metamri.utils.hydra import cfg_get, plain

log = logging.getLogger(__name__)

#: Keys of the ``reconstruction`` group (what :func:`build_reconstructor` reads), the resume
#: fingerprint's (``metamri.evaluate``). ``corrupt`` is read too but is not listed: its settings
#: enter the fingerprint in :func:`~metamri.evaluation.run.evaluate_split`, and only when a
#: corruption is on, so progress recorded before the key existed still resumes.
GROUP_KEYS = ("mask", "sampler", "methods", "guidance_scale", "ensemble", "drop_fields", "keep_fields",
              "base_seed", "use_ema", "cs", "coil_maps", "espirit", "scaling")
#: Keyword arguments :func:`metamri.recon.baselines.compressed_sensing` takes from ``cs``.
CS_KEYS = ("lamda", "n_iter", "backend", "wavelet", "cycle_spinning")


def build_mask(mask: Any) -> Callable:
    """A mask function from a config (``_target_`` mapping) or the function itself."""
    mask = plain(mask)
    if isinstance(mask, Mapping):
        if "_target_" not in mask:
            raise ConfigError("mask", mask, "a mask config needs a _target_ (choose one of conf/mask/)")
        from hydra.utils import instantiate

        return instantiate(dict(mask))
    if mask is None or not callable(mask):
        raise ConfigError("mask", mask, "expected a mask config or a mask function")
    return mask


def build_sampler(sampler: Any, module: Any = None, guidance_scale: float | None = None) -> Any:
    """A ready posterior sampler finished with the module's schedule and the CFG scale.

    Args:
        sampler: A sampler object (has ``sample``: used as it is), a factory (e.g. a
            ``functools.partial``, a Hydra ``_partial_: true`` result) or a config mapping
            with ``_target_`` (``_partial_`` is ignored).
        module: Its ``noise_scheduler.alphas_cumprod`` (the model's own schedule) is passed
            to the sampler; without a module the sampler's default schedule is used.
        guidance_scale: The CFG scale ``s``; ``None`` keeps the sampler's default.

    Raises:
        ConfigError: The sampler config sets its own ``guidance_scale`` (the one knob is the
            group's ``guidance_scale``), or the config is not a sampler.
    """
    if sampler is None or hasattr(sampler, "sample"):
        return sampler
    extra: dict[str, Any] = {}
    sched = getattr(module, "noise_scheduler", None)
    if sched is not None:
        extra["alphas_cumprod"] = sched.alphas_cumprod
    if guidance_scale is not None:
        extra["guidance_scale"] = checks.number(plain(guidance_scale), "guidance_scale",
                                                hint="the CFG scale: 0 unconditional, 1 conditional")
    sampler = plain(sampler)
    if isinstance(sampler, Mapping):
        conf = {k: v for k, v in sampler.items() if k != "_partial_"}
        if "_target_" not in conf:
            raise ConfigError("sampler", sampler, "a sampler config needs a _target_ (conf/sampler/)")
        if conf.get("guidance_scale") is not None and guidance_scale is not None:
            raise ConfigError("sampler.guidance_scale", conf["guidance_scale"],
                              "the CFG scale has one key, guidance_scale (of the reconstruction group)",
                              hint=f"remove sampler.guidance_scale and set guidance_scale={conf['guidance_scale']}")
        if conf.get("alphas_cumprod") is None:
            conf.pop("alphas_cumprod", None)
        from hydra.utils import instantiate

        return instantiate(conf, **extra)
    if callable(sampler):
        return sampler(**extra)
    raise ConfigError("sampler", sampler, "expected a sampler config, factory or object")


def cs_kwargs(cs: Any) -> dict[str, Any]:
    """The ``cs`` mapping checked against :data:`CS_KEYS` (``ConfigError`` names ``cs.<key>``)."""
    cs = dict(plain(cs) or {})
    for key in cs:
        if key not in CS_KEYS:
            raise ConfigError(f"cs.{key}", cs[key], "unknown compressed-sensing option",
                              hint=f"known: {list(CS_KEYS)}")
    return cs


def prior_path(cfg: Any) -> str | None:
    """The ``prior`` key, or the deprecated ``ckpt_path`` (a warning) when only it is set.

    Raises:
        ConfigError: Both are set and differ.
    """
    prior, old = cfg_get(cfg, "prior"), cfg_get(cfg, "ckpt_path")
    if old and prior and str(old) != str(prior):
        raise ConfigError("ckpt_path", old, f"conflicts with prior={prior!r}",
                          hint="ckpt_path is a deprecated alias of prior; pass prior only")
    if old and not prior:
        warnings.warn("the config key ckpt_path is deprecated: pass prior=... instead",
                      DeprecationWarning, stacklevel=2)
        return str(old)
    return None if not prior else str(prior)


def build_reconstructor(cfg: Any, module: Any = None, *, methods: Sequence[str] | None = None):
    """The :class:`~metamri.evaluation.reconstructor.Reconstructor` a ``reconstruction`` group describes.

    Args:
        cfg: The group's keys (:data:`GROUP_KEYS`): a Hydra node (the whole ``evaluate`` /
            ``reconstruct`` config, where the group sits at the top level, or the
            callback's ``reconstruction`` node) or a mapping; ``mask`` and ``sampler``
            may be configs or ready objects. Missing keys take the Reconstructor's defaults.
        module: The prior (:func:`metamri.priors.load_prior`), needed for ``diffusion``.
        methods: Overrides ``cfg.methods`` (``metamri.reconstruct`` runs one method).

    Raises:
        ConfigError: An invalid key or value (named), or ``diffusion`` without a module.
    """
    from metamri.evaluation.reconstructor import Reconstructor
    from metamri.metadata.corruption import MetadataCorruption
    from metamri.models.performance import Performance
    from metamri.preprocess.espirit import EspiritParams

    methods = tuple(str(m) for m in (methods if methods is not None else plain(cfg_get(cfg, "methods"))
                                     or ("zero_filled",)))
    diffusion = "diffusion" in methods
    if diffusion and module is None:
        raise ConfigError("prior", None, "the diffusion method needs a prior",
                          hint="pass prior=/path/to/last.ckpt (or a diffusers directory), "
                               "or methods=[zero_filled,cs]")
    sampler = build_sampler(cfg_get(cfg, "sampler"), module, cfg_get(cfg, "guidance_scale")) if diffusion else None
    keep = plain(cfg_get(cfg, "keep_fields"))
    return Reconstructor(
        build_mask(cfg_get(cfg, "mask")),
        methods,
        sampler=sampler,
        module=module if diffusion else None,
        ensemble=checks.integer(plain(cfg_get(cfg, "ensemble", 1)), "ensemble", minimum=1),
        drop_fields=list(plain(cfg_get(cfg, "drop_fields")) or []),
        keep_fields=None if keep is None else list(keep),
        base_seed=checks.integer(plain(cfg_get(cfg, "base_seed", 0)), "base_seed"),
        cs=cs_kwargs(cfg_get(cfg, "cs")),
        use_ema=bool(cfg_get(cfg, "use_ema", True)),
        coil_maps=str(cfg_get(cfg, "coil_maps", "fully_sampled")),
        espirit=EspiritParams.from_config(cfg_get(cfg, "espirit")),
        scaling=str(cfg_get(cfg, "scaling", "reference")),
        corruption=MetadataCorruption.from_config(cfg_get(cfg, "corrupt")),
        performance=Performance.from_config(plain(cfg_get(cfg, "performance"))),
    )
