"""``python -m metamri.interpret attention``: attention per context token while reconstructing a slice.

Thin on purpose (keys in ``conf/interpret_attention.yaml``; what is measured in
:mod:`metamri.interpret.attention`): load the prior, take one slice of the ``split`` /
``domain`` dataset, reconstruct it with the evaluation's posterior sampler
(:class:`~metamri.evaluation.reconstructor.Reconstructor`, the ``reconstruction`` group:
mask, sampler, ``guidance_scale``) inside an
:class:`~metamri.interpret.attention.AttentionRecorder`, and write the shares per block,
call and token group as CSV and PNG. With guidance (s != 1) each UNet call holds the
unconditional and the conditional context (in that order): the conditional one is read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from metamri.errors import ConfigError
from metamri.utils.cli import hydra_task
from metamri.utils.hydra import CONF_DIR, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()



def pick_slice(dataset: Any, fname: str | None, slice_index: int | None) -> int:
    """The dataset index of ``(fname, slice)``; defaults: the first volume, its central slice.

    Raises:
        ConfigError: The file or the slice is not in the dataset (naming what is).
    """
    from metamri.evaluation.run import select_items

    if fname is None:
        centres = select_items(dataset, 1)
        if not centres:
            raise ConfigError("split", None, "the dataset holds no slices")
        if slice_index is None:
            return centres[0]
        fname = str(dataset[centres[0]].fname)
    found = [i for i, (entry, _row) in enumerate(dataset.index) if str(dataset.entries[entry].fname) == str(fname)]
    if not found:
        names = sorted({str(e.fname) for e in dataset.entries})
        raise ConfigError("fname", fname, "is not a volume of the split", hint=f"e.g. {names[:3]}")
    if slice_index is None:
        return found[len(found) // 2]
    for i in found:
        if int(dataset[i].slice_index) == int(slice_index):
            return i
    raise ConfigError("slice", slice_index, f"{fname} has no such slice",
                      hint=f"slices: {[int(dataset[i].slice_index) for i in found]}")


def run(cfg: DictConfig) -> Path:
    """Record, write the CSV and PNG, return the CSV's path."""
    from hydra.utils import instantiate

    from metamri.evaluation.builder import build_reconstructor
    from metamri.interpret.attention import (
        AttentionRecorder,
        attention_table,
        plot_attention,
        token_labels,
    )
    from metamri.priors import load_prior
    from metamri.utils.io import atomic_output
    from metamri.validation import check_device, check_reconstruction

    check_reconstruction(cfg, diffusion=True)
    scale = float(cfg.guidance_scale)
    if scale == 0.0:
        raise ConfigError("guidance_scale", scale, "at s = 0 the UNet reads no metadata: nothing to record",
                          hint="use guidance_scale=1 (the study's setting) or above")
    if int(cfg.ensemble) != 1:
        raise ConfigError("ensemble", cfg.ensemble, "attention is recorded for one sample", hint="ensemble=1")
    device = check_device(cfg.get("device", "cpu"))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    module = load_prior(cfg.prior).to(device)
    datamodule = instantiate(cfg.data)
    if cfg.get("prepare_data", True):
        datamodule.prepare_data()
    dataset = datamodule.eval_dataset(str(cfg.split), str(cfg.domain), load_maps=True)
    sample = dataset[pick_slice(dataset, cfg.get("fname"), cfg.get("slice"))]
    reconstructor = build_reconstructor(cfg, module, methods=["diffusion"])
    meta = reconstructor.ablate(sample.metadata, sample.fname)
    with AttentionRecorder(module.unet) as recorder:
        reconstructor(sample)
    n_tokens = recorder.shares[0][2].shape[1]
    labels = token_labels(module.encoder, meta, n_tokens)
    table = attention_table(recorder, labels, sample=0 if scale == 1.0 else 1)
    out_dir = Path(str(cfg.out_dir))
    csv = out_dir / "attention.csv"
    with atomic_output(csv) as tmp:
        table.to_csv(tmp, index=False)
    title = (f"{cfg.prior}: {sample.fname} slice {sample.slice_index}, s = {scale:g}, "
             f"{len(recorder.timesteps)} UNet calls, {len(recorder.blocks)} blocks")
    plot_attention(table, out_dir / "attention.png", title)
    ctx = table[table["group"] != "image"].groupby("group", sort=False)["share"].mean()
    log.info("mean share per group over blocks and calls:\n%s", ctx.to_string())
    print(f"attention: {len(recorder.blocks)} blocks x {len(recorder.timesteps)} calls -> {csv} (+ attention.png)")
    return csv


@hydra.main(config_path=CONF_DIR, config_name="interpret_attention", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> None:
    run(cfg)
