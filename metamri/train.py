"""Train a metadata-conditioned diffusion prior: ``python -m metamri.train``.

Thin on purpose: every object is built from ``conf/train.yaml`` and its groups
(``data``, ``model``, ``encoder``, ``finetune``, ``timesteps``, ``dropout``,
``trainer``, ``callbacks``, ``logger``).  Examples::

    python -m metamri.train                                # phantom, CPU, additive + OOD
    python -m metamri.train +experiment=ood_low_noise
    python -m metamri.train -m +experiment=additive,concat seed=0,1
    python -m metamri.train trainer=ddp                    # 2 processes (gloo on CPU)
    python -m metamri.train ckpt_path=/path/last.ckpt      # resume

Returns the value of ``optimized_metric`` for Hydra sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metamri.models.performance import Performance
from metamri.trust import read_checkpoint
from metamri.utils.cli import hydra_task
from metamri.utils.hydra import instantiate_dict, register_resolvers
from metamri.validation import validate_train

log = logging.getLogger(__name__)
register_resolvers()


def train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) the model described by ``cfg``; return the optimised metric.

    Every setting is checked first (:func:`metamri.validation.validate_train`: ``ckpt_path``
    an existing file, counts, the OOD ratio, learning rate ...), so that a bad value stops the
    run before the data module, the model, the loggers or a W&B run exist.

    A resumed checkpoint (``ckpt_path``) is data: it is read with
    ``torch.load(weights_only=True)`` before anything is built (a pickled payload is a
    :class:`~metamri.errors.CheckpointError` at once), and Lightning is passed
    ``weights_only=True`` explicitly when it restores it (its own default, ``None``, leaves
    the choice to torch's default and to ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, and is
    ``False`` for an ``http`` URL).  Its hyper-parameters are not used: the module is built
    from ``cfg``.
    """
    validate_train(cfg)  # every setting, before any data, model, logger or W&B run exists
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        read_checkpoint(Path(str(ckpt_path)).expanduser(), check_config=False)
    L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = instantiate(cfg.data)

    log.info("Instantiating module <%s>", cfg.module._target_)
    module: L.LightningModule = instantiate(cfg.module)
    Performance.from_config(cfg.get("performance")).prepare(module.unet)  # TF32, channels-last, compile

    callbacks = instantiate_dict(cfg.get("callbacks"), "callback")
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(resolved)  # type: ignore[arg-type]

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)

    metric = trainer.callback_metrics.get(cfg.get("optimized_metric", "val/loss"))
    value = None if metric is None else float(metric)
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        log.info("Run directory: %s", out)
        if value is not None:
            log.info("%s = %.6f", cfg.get("optimized_metric"), value)
    return value


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
