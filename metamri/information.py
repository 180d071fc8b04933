"""How much the metadata tells a prior, per noise level: ``python -m metamri.information prior=...``.

Thin on purpose (see ``conf/information.yaml`` for its keys and
:mod:`metamri.analysis.information` for what is measured): load the prior
(:func:`metamri.priors.load_prior`: a ``.ckpt`` of ``metamri.train`` or a diffusers
directory), build the data module from the ``data`` group and take the ``split`` /
``domain`` dataset as evaluation does, then write the denoising loss at each timestep
with true, dropped and shuffled metadata (:func:`~metamri.analysis.information.information_curves`)
to ``out`` (CSV) and ``<out minus .csv>.json`` (what was measured), both atomically.

Example::

    python -m metamri.information prior=logs/train/runs/.../last.ckpt data=study split=val \\
        out=experiments/study/information/finegrained.csv max_items=128

The timestep grid is the key ``timestep_grid``; on the command line ``timesteps=[...]`` is
accepted as its alias (``conf/timesteps/`` is the training noise-range group, and Hydra
reads a plain ``timesteps=`` override as a choice of that group, which this config does
not use: :func:`main` rewrites the argument before Hydra sees it).

Every setting is checked first (:func:`metamri.validation.validate_information`); a bad one
stops the run with one line ``metamri.information: error: config <key> = <value>: ...`` on
stderr and exit status 2 (:mod:`metamri.utils.cli`), before the prior or the data are read.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from metamri.errors import ConfigError
from metamri.utils.cli import hydra_task
from metamri.utils.hydra import plain, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def information(cfg: DictConfig):
    """Measure and write the information curves ``cfg`` describes; return the frame
    (:func:`~metamri.analysis.information.information_curves`)."""
    from metamri.analysis.information import check_timesteps, information_curves, write_information
    from metamri.priors import load_prior
    from metamri.validation import check_device, validate_information

    validate_information(cfg)  # before the prior, the data or any output
    split, domain = cfg.split, cfg.domain
    max_items, batch_size = plain(cfg.get("max_items")), plain(cfg.get("batch_size", 8))
    device = check_device(cfg.get("device", "auto"))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))

    module = load_prior(cfg.prior)
    timesteps = check_timesteps(plain(cfg.get("timestep_grid")), module.num_train_timesteps,
                                key="timestep_grid")
    module = module.to(device)

    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    if cfg.get("prepare_data", True):
        datamodule.prepare_data()
    dataset = datamodule.eval_dataset(split, domain, load_maps=False)
    if len(dataset) == 0:
        raise ConfigError("split", split, f"holds no {domain} slices to measure",
                          hint="check data.split_fractions and the domain")

    frame = information_curves(module, dataset, timesteps, max_items, int(cfg.seed), batch_size)
    info = {
        "prior": str(Path(str(cfg.prior)).expanduser().resolve()),
        "split": split, "domain": domain, "max_items": max_items, "batch_size": batch_size,
        "device": str(device), "split_items": len(dataset),
    }
    csv_path, json_path = write_information(frame, cfg.out, info)
    _log_summary(frame)
    print(f"information: {frame.attrs['n_items']} {domain} items of {split} "
          f"({frame.attrs['n_volumes']} volumes), {len(timesteps)} timesteps -> {csv_path} "
          f"(+ {json_path.name})")
    return frame


def _log_summary(frame) -> None:
    wide = frame.pivot(index="timestep", columns="condition", values="diff_mean")
    lines = [f"t={t:4d}  dropped-true {row['dropped']:+.4g}  shuffled-true {row['shuffled']:+.4g}"
             for t, row in wide.iterrows()]
    log.info("paired loss differences (mean over %d items):\n%s", frame.attrs["n_items"], "\n".join(lines))


def _alias(arg: str) -> str:
    """``timesteps=...`` -> ``timestep_grid=...`` (see the module docstring); others unchanged."""
    return "timestep_grid=" + arg[len("timesteps="):] if arg.startswith("timesteps=") else arg


@hydra.main(config_path="../conf", config_name="information", version_base="1.3")
@hydra_task()
def _hydra_main(cfg: DictConfig) -> None:
    information(cfg)


def main() -> None:
    """The command line: Hydra overrides, ``timesteps=[...]`` as an alias of ``timestep_grid``."""
    sys.argv = [sys.argv[0], *(_alias(a) for a in sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
