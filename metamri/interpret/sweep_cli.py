"""``python -m metamri.interpret sweep prior=... field=te``: one metadata field swept from one seed.

Thin on purpose (keys: ``conf/interpret_sweep.yaml``; what is measured:
:mod:`metamri.interpret.sweep`): check every setting (:func:`validate_sweep`), load the prior
(:func:`metamri.priors.load_prior`), run :func:`~metamri.interpret.sweep.run_sweep` and write
``sweep_<field>.png`` / ``.csv`` / ``.json`` under ``out_dir``
(:func:`~metamri.interpret.sweep.write_sweep`, atomically).

Example::

    python -m metamri.interpret sweep prior=experiments/study/priors/ood_additive field=ti \\
        out_dir=experiments/study/interpret

A bad setting stops the run before the prior is read, with one line
``error: config <key> = <value>: ...`` on stderr and exit status 2 (:mod:`metamri.utils.cli`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from metamri.errors import ConfigError
from metamri.utils.cli import hydra_task
from metamri.utils.hydra import CONF_DIR, plain, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()




def _number(cfg: DictConfig, key: str, *, low: float | None = None, high: float | None = None,
            integer: bool = False, what: str = "") -> Any:
    value = cfg.get(key)
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (low is None or value > low) and (high is None or value < high)
    if not ok:
        raise ConfigError(key, value, f"must be {what}")
    return value


def validate_sweep(cfg: DictConfig) -> None:
    """Every setting of ``cfg`` (before the prior is read); a bad one raises :class:`ConfigError`."""
    from metamri.interpret.sweep import check_settings
    from metamri.phantom.presets import get_preset
    from metamri.validation import check_device

    prior = cfg.get("prior")
    if not prior:
        raise ConfigError("prior", prior, "give the prior to sweep",
                          hint="prior=experiments/study/priors/ood_additive (a .ckpt, a metamri.export "
                               "or a diffusers directory)")
    if not Path(str(prior)).expanduser().exists():
        raise ConfigError("prior", str(prior), "no such checkpoint file or directory")
    values = plain(cfg.get("values"))
    check_settings(cfg.get("field"), values, cfg.get("t_start"), cfg.get("steps"), cfg.get("base_contrast"))
    get_preset(cfg.get("preset"), "preset")
    _number(cfg, "base_field_strength", low=0.0, what="a positive number (tesla)")
    _number(cfg, "seed", low=-1, integer=True, what="an integer >= 0")
    _number(cfg, "purity", low=0.0, high=1.0, what="a fraction in (0, 1)")
    _number(cfg, "image_size", low=7, integer=True, what="an integer >= 8")
    _number(cfg, "slice_z_mm", low=0.0, what="a positive number (template z, mm)")
    threads = cfg.get("num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError("num_threads", threads, "must be a positive integer or null")
    if not cfg.get("out_dir"):
        raise ConfigError("out_dir", cfg.get("out_dir"), "give the output directory")
    check_device(cfg.get("device", "auto"))


def sweep(cfg: DictConfig):
    """Validate, load the prior, run the sweep ``cfg`` describes and write its files.

    Returns:
        ``(result, paths)``: the :class:`~metamri.interpret.sweep.SweepResult` and
        ``{"png", "csv", "json"}`` paths.
    """
    from metamri.interpret.sweep import check_settings, run_sweep, write_sweep
    from metamri.priors import load_prior
    from metamri.validation import check_device

    validate_sweep(cfg)  # before the prior or any output
    device = check_device(cfg.get("device", "auto"))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    values = plain(cfg.get("values"))
    module = load_prior(cfg.prior)
    t_total = int(getattr(module, "num_train_timesteps", None)
                  or module.noise_scheduler.config.num_train_timesteps)
    check_settings(cfg.field, values, cfg.t_start, cfg.steps, cfg.base_contrast, t_total)
    module = module.to(device)
    result = run_sweep(
        module, cfg.field, values, seed=int(cfg.seed), t_start=int(cfg.t_start), steps=int(cfg.steps),
        base_contrast=cfg.base_contrast, base_field_strength=float(cfg.base_field_strength),
        preset=cfg.preset, slice_z_mm=float(cfg.slice_z_mm), purity=float(cfg.purity),
        image_size=int(cfg.image_size),
    )
    paths = write_sweep(result, cfg.out_dir, cfg.prior, extra={"device": str(device)})
    c, u = result.correlations["prior"], result.correlations["uncond"]
    print(f"sweep {cfg.field}: {len(result.values)} values; r(prior, equation) gm_wm {c['gm_wm']}, "
          f"csf_wm {c['csf_wm']}, pooled {c['pooled']}; dropped metadata: gm_wm {u['gm_wm']}, "
          f"csf_wm {u['csf_wm']}, pooled {u['pooled']} -> {paths['png']} (+ .csv, .json)")
    return result, paths


@hydra.main(config_path=CONF_DIR, config_name="interpret_sweep", version_base="1.3")
@hydra_task()
def _hydra_main(cfg: DictConfig) -> None:
    sweep(cfg)


def main() -> None:
    """The command line (Hydra overrides; see ``conf/interpret_sweep.yaml``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
