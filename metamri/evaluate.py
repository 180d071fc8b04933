"""Evaluate reconstructions on a split: ``python -m metamri.evaluate ckpt_path=...``.

Thin on purpose (see ``conf/evaluate.yaml`` for every key): load the module from its
checkpoint, build the mask, sampler and data from config, and run
:func:`metamri.evaluation.run.evaluate_split` under Lightning Fabric with the
``trainer`` group's ``accelerator`` / ``devices`` / ``strategy`` / ``num_nodes``
(``trainer=ddp``: 2 CPU processes with gloo). Slices are sharded
``range(rank, n, world)`` and every slice's seeds come from its name, so the
per-slice metrics are the same for any number of processes (bit for bit at a
fixed ``num_threads``; otherwise float32 sums differ in the last digits, ~1e-8 relative). Rank 0 writes
``<run_dir>/<output_subdir>/<split>_metrics.csv`` and ``<split>_summary.md``,
prints mean ± std per method, and the function returns the mean PSNR of the
diffusion method (of the last method when diffusion is not run) for sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metamri.errors import ConfigError
from metamri.utils.hydra import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def load_module(ckpt_path: str | None):
    """The :class:`~metamri.training.module.MetaDiffusionModule` of a checkpoint, in eval mode."""
    if not ckpt_path:
        raise ConfigError("ckpt_path", ckpt_path, "the diffusion method needs a checkpoint",
                          hint="pass ckpt_path=/path/to/last.ckpt, or methods=[zero_filled,cs]")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", str(ckpt_path), "no such checkpoint file")
    from metamri.training.module import MetaDiffusionModule

    return MetaDiffusionModule.load_from_checkpoint(str(path), map_location="cpu").eval()


def build_fabric(trainer_cfg: DictConfig):
    """Lightning Fabric with the trainer group's accelerator, devices, strategy and nodes."""
    from lightning.fabric import Fabric

    return Fabric(
        accelerator=trainer_cfg.get("accelerator", "cpu"),
        devices=trainer_cfg.get("devices", 1),
        strategy=trainer_cfg.get("strategy", "auto"),
        num_nodes=trainer_cfg.get("num_nodes", 1),
    )


def evaluate(cfg: DictConfig) -> float | None:
    """Run the evaluation described by ``cfg``; return the diffusion method's mean PSNR (dB)."""
    from metamri.evaluation.reconstructor import Reconstructor
    from metamri.evaluation.run import evaluate_split, method_means, summary_markdown, write_outputs
    from metamri.metrics.lpips import LPIPSMetric

    methods = list(cfg.methods)
    module = load_module(cfg.get("ckpt_path")) if "diffusion" in methods else None

    fabric = build_fabric(cfg.trainer)
    fabric.launch()
    if cfg.get("num_threads"):
        # float32 convolutions sum in a thread-count-dependent order: Lightning gives each of N
        # DDP processes cores/N threads, so fix the count to compare runs bit for bit.
        torch.set_num_threads(int(cfg.num_threads))

    sampler = None
    if module is not None:
        module = module.to(fabric.device)
        extra = {} if cfg.get("guidance_scale") is None else {"guidance_scale": cfg.guidance_scale}
        log.info("Instantiating sampler <%s>", cfg.sampler._target_)
        sampler = instantiate(cfg.sampler, alphas_cumprod=module.noise_scheduler.alphas_cumprod, **extra)

    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    if cfg.get("prepare_data", True):
        if fabric.global_rank == 0:
            datamodule.prepare_data()
        fabric.barrier()
    dataset = datamodule.eval_dataset(cfg.split, cfg.domain, load_maps=True)

    reconstructor = Reconstructor(
        instantiate(cfg.mask), methods, sampler=sampler, module=module, ensemble=cfg.ensemble,
        drop_fields=list(cfg.get("drop_fields") or []),
        keep_fields=None if cfg.get("keep_fields") is None else list(cfg.keep_fields),
        base_seed=cfg.base_seed, cs=OmegaConf.to_container(cfg.cs, resolve=True),
        use_ema=cfg.get("use_ema", True),
    )
    lpips_metric = LPIPSMetric.try_create() if cfg.get("lpips", False) else None
    out = evaluate_split(reconstructor, dataset, cfg.get("max_slices"), lpips_metric)
    if len(out.table) == 0:
        raise ConfigError("split", cfg.split, f"holds no {cfg.domain} slices to evaluate")

    means = method_means(out.table, "psnr")
    primary = "diffusion" if "diffusion" in means else methods[-1]
    if fabric.global_rank == 0:
        out_dir = Path(cfg.paths.output_dir) / cfg.get("output_subdir", "reconstruction")
        csv_path, md_path = write_outputs(out.table, out_dir, cfg.split)
        print(f"{cfg.split}: {out.n_slices} slices, {len(out.table)} rows -> {csv_path}")
        print(summary_markdown(out.table), end="")
        log.info("summary -> %s\n%s", md_path, out.table.format_summary())
    fabric.barrier()
    return means[primary]


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
