"""Evaluate reconstructions on a split: ``python -m metamri.evaluate prior=...``.

Thin on purpose (see ``conf/evaluate.yaml`` for its own keys and
``conf/reconstruction/default.yaml`` for the reconstruction setup, shared with
``metamri.reconstruct`` and the training callback): load the prior
(:func:`metamri.priors.load_prior`), build the reconstructor from the group
(:func:`metamri.evaluation.builder.build_reconstructor`) and the data from config, and
run :func:`metamri.evaluation.run.evaluate_split` under Lightning Fabric with the
``trainer`` group's ``accelerator`` / ``devices`` / ``strategy`` / ``num_nodes``
(``trainer=ddp``: 2 CPU processes with gloo). Slices are sharded
``range(rank, n, world)`` and every slice's seeds come from its name, so the
per-slice metrics are the same for any number of processes (bit for bit at a
fixed ``num_threads``; otherwise float32 sums differ in the last digits, ~1e-8 relative).

Each slice's measurement is simulated from the cached, normalised MVUE (``y = M F S x``,
noiseless; the network input is scaled as in training). Coil maps: by default the cached
ESPIRiT maps of the fully sampled k-space (``coil_maps=fully_sampled``, the paper's
preprocessing); ``coil_maps=calibration`` estimates them from the measurement's
calibration region, as ``metamri.reconstruct`` must. Rank 0 writes
``<run_dir>/<output_subdir>/<split>_metrics.csv`` and ``<split>_summary.md`` (the mask,
its effective acceleration, the coil maps, then mean ± std per method), prints the same,
and the function returns the mean PSNR of the diffusion method (of the last method when
diffusion is not run) for sweepers.

Then rank 0 logs the run to W&B (:mod:`metamri.evaluation.wandb_log`; the ``wandb`` block of
``conf/evaluate.yaml``): one run per evaluation (per job of a ``-m`` sweep), offline by
default into ``<run_dir>/wandb/``, grouped with the training run of the prior, with a flat
config, the mean ± std per method and metric as its summary, the per-slice table and a few
image panels. ``wandb.enabled=false`` skips it; a W&B failure is a warning, never a lost
evaluation.

Every setting is checked first (:func:`metamri.validation.validate_evaluate`), before the
prior, the data or any output. While it runs, each process appends its finished batches to
``<output_subdir>/<split>_progress.rank<r>.jsonl`` (:mod:`metamri.evaluation.progress`): an
interrupted evaluation rerun with the same settings into the same run directory
(``hydra.run.dir=<that run>``) skips the finished slices and writes the CSV the
uninterrupted run would have; the progress files are deleted once the CSV is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metamri.errors import ConfigError
from metamri.utils.cli import hydra_task
from metamri.utils.hydra import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def load_prior_of(cfg: DictConfig):
    """The prior named by ``cfg.prior`` (or the deprecated ``cfg.ckpt_path``)."""
    from metamri.evaluation.builder import prior_path
    from metamri.models.performance import Performance
    from metamri.priors import load_prior

    key = "prior" if cfg.get("prior") or not cfg.get("ckpt_path") else "ckpt_path"
    module = load_prior(prior_path(cfg), key=key)
    Performance.from_config(cfg.get("performance")).prepare(module.unet)
    return module


#: Data keys that do not change an evaluation's rows (left out of its fingerprint).
_VOLATILE_DATA_KEYS = ("output_dir", "num_workers", "max_open_files", "batch_size", "eval_batch_size")


def evaluation_fingerprint(cfg: DictConfig) -> dict:
    """The settings an evaluation's per-slice rows depend on (checked when a run resumes).

    The reconstruction group, the prior file (path, size, modification time), split, domain,
    ``max_slices``, ``items_per_volume``, ``lpips`` and the data config; not the process count,
    ``batch_size`` or the paths of the run itself.
    """
    import warnings

    from metamri.evaluation.builder import GROUP_KEYS, prior_path
    from metamri.utils.io import file_fingerprint

    def plain(value):
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    out = {k: plain(cfg.get(k)) for k in (*GROUP_KEYS, "split", "domain", "max_slices", "items_per_volume",
                                          "lpips")}
    data = dict(plain(cfg.get("data")) or {})
    for key in _VOLATILE_DATA_KEYS:
        data.pop(key, None)
    pre = dict(data.get("preprocess") or {})
    for key in ("workers", "progress"):
        pre.pop(key, None)
    data["preprocess"] = pre
    out["data"] = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        prior = prior_path(cfg) if "diffusion" in (out.get("methods") or []) else None
    out["prior"] = file_fingerprint(prior)
    precision = (plain(cfg.get("performance")) or {}).get("precision", "fp32")
    if precision != "fp32":  # changes the numbers; fp32 is left out so older progress still resumes
        out["precision"] = precision
    return out


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
    from metamri.evaluation import progress, wandb_log
    from metamri.evaluation.builder import build_reconstructor
    from metamri.evaluation.run import (
        evaluate_split,
        method_means,
        setup_lines,
        summary_markdown,
        write_outputs,
    )
    from metamri.metrics.lpips import LPIPSMetric
    from metamri.validation import validate_evaluate

    validate_evaluate(cfg)
    methods = list(cfg.methods)
    wandb_settings = wandb_log.WandbSettings.from_config(cfg)  # checked before any work; None: off
    module = load_prior_of(cfg) if "diffusion" in methods else None

    fabric = build_fabric(cfg.trainer)
    fabric.launch()
    if cfg.get("num_threads"):
        # float32 convolutions sum in a thread-count-dependent order: Lightning gives each of N
        # DDP processes cores/N threads, so fix the count to compare runs bit for bit.
        torch.set_num_threads(int(cfg.num_threads))
    if module is not None:
        module = module.to(fabric.device)
    reconstructor = build_reconstructor(cfg, module)

    log.info("Instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    if cfg.get("prepare_data", True):
        if fabric.global_rank == 0:
            datamodule.prepare_data()
        fabric.barrier()
    dataset = datamodule.eval_dataset(cfg.split, cfg.domain, load_maps=True)

    lpips_metric = LPIPSMetric.try_create() if cfg.get("lpips", False) else None
    out_dir = Path(cfg.paths.output_dir) / cfg.get("output_subdir", "reconstruction")
    out = evaluate_split(reconstructor, dataset, cfg.get("max_slices"), lpips_metric,
                         items_per_volume=cfg.get("items_per_volume"),
                         batch_size=cfg.get("batch_size", 1),
                         keep_results=wandb_settings.panels if wandb_settings else 0,
                         progress_dir=out_dir, fingerprint=evaluation_fingerprint(cfg), stage=cfg.split)
    if len(out.table) == 0:
        raise ConfigError("split", cfg.split, f"holds no {cfg.domain} slices to evaluate",
                          hint="check data.split_fractions, the domain and data.sources")

    means = method_means(out.table, "psnr")
    primary = "diffusion" if "diffusion" in means else methods[-1]
    if fabric.global_rank == 0:
        notes = setup_lines(reconstructor, out)
        csv_path, md_path = write_outputs(out.table, out_dir, cfg.split, notes)
        progress.discard(out_dir, cfg.split)
        print(f"{cfg.split}: {out.n_slices} slices, {len(out.table)} rows -> {csv_path}")
        print(summary_markdown(out.table, notes=notes), end="")
        log.info("summary -> %s\n%s", md_path, out.table.format_summary())
    fabric.barrier()
    if wandb_settings is not None and fabric.global_rank == 0:
        wandb_log.log_evaluation(wandb_settings, cfg, out, cfg.paths.output_dir, primary)
    return means[primary]


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
