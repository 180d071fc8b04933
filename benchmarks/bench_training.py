"""Training-step time against a bare UNet forward/backward of the same shape.

For each encoder (``none``, ``finegrained``, ``additive``, ``concat``, ``text``) it composes the
real ``conf/train.yaml`` (mixed brain + cardiac at 1:5, the ``tiny`` UNet, OOD high-noise
ranges, per-field dropout, full fine-tuning, EMA), runs ``trainer.fit`` on a synthetic cache
(random images with realistic metadata, see ``bench_dataloader.write_cache``) and times every
optimizer step from ``on_train_batch_start`` to ``on_train_batch_end`` (data loading excluded,
EMA update included). The reference is the same UNet with a random context of the same shape:
forward, MSE loss, backward, AdamW step, nothing else. The difference is what metamri adds per
step: the metadata encoder, dropout masks, timestep sampling per domain, logging, EMA,
Lightning's loop.

    python benchmarks/bench_training.py            # print the markdown section
    python benchmarks/bench_training.py --write    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from _common import DOC, REPO, load_average, machine, write_section
from bench_dataloader import write_cache

SECTION = "## Training step"
ENCODERS = ("none", "finegrained", "additive", "concat", "text")


class StepTimer(L.Callback):
    """Wall time of each training step (batch start to batch end, optimizer and EMA included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)


def compose(encoder: str, root: Path, cache: Path, size: int, batch: int):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from metamri.utils.hydra import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[f"encoder={encoder}"])
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(root / encoder)
        cfg.paths.cache_dir = str(cache)
        cfg.data.phantom = None
        cfg.data.sources = {"brain": str(root / "raw"), "cardiac": str(root / "raw")}
        cfg.data.split_fractions = {"train": 1.0, "val": 0.0, "test": 0.0}
        cfg.data.batch_size = batch
        cfg.data.preprocess.image_size = size
    return cfg


def time_module(cfg, steps: int) -> tuple[list[float], int]:
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
                        default_root_dir=cfg.paths.output_dir)
    trainer.fit(module, datamodule=datamodule)
    with torch.no_grad():
        ctx = module.context(datamodule.train_metadata()[:1])
    return timer.times, tuple(ctx.shape[1:]), module


def time_bare_unet(unet: torch.nn.Module, batch: int, size: int, ctx_shape: tuple[int, int],
                   steps: int) -> list[float]:
    """Forward, MSE, backward, clipping, AdamW step of ``unet`` (a copy) with a random context."""
    unet = copy.deepcopy(unet).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-5)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        x = torch.randn(batch, 2, size, size, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        ctx = torch.randn(batch, *ctx_shape, generator=g)
        t0 = time.perf_counter()
        loss = (unet(x, t, encoder_hidden_states=ctx).sample - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def markdown(rows: list[dict], args, command: str, load: tuple[float, float]) -> str:
    lines = [
        SECTION,
        "",
        f"Median wall time of one optimizer step (first {args.warmup} steps dropped, {args.steps} timed), "
        f"`tiny` UNet, batch {args.batch} of {args.size} x {args.size} two-channel images, mixed brain + "
        "cardiac at 1:5, OOD high-noise ranges, per-field dropout, EMA 0.999, full fine-tuning. "
        "Bare UNet = the same network with a random context of the same shape: forward, MSE, "
        "backward, gradient clipping, AdamW.",
        "",
        f"Machine: {machine()}; load average {load[0]:.1f} before, {load[1]:.1f} after.",
        "",
        f"Command: `{command}`",
        "",
        "| encoder | context tokens x width | UNet params | training step (s) | bare UNet fwd+bwd+step (s) "
        "| overhead |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['ctx'][0]} x {r['ctx'][1]} | {r['params'] / 1e6:.2f}M | {r['step']:.3f} "
            f"| {r['bare']:.3f} | {100 * (r['step'] / r['bare'] - 1):+.0f}% |"
        )
    lines += ["", "The `text` encoder runs the frozen MiniLM sentence encoder on every prompt (no gradient).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC}")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_training.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        write_cache(root / "cache", size=args.size, coils=2, slices=8, volumes=6)
        (root / "raw").mkdir()  # no raw files: prepare_data finds nothing to preprocess
        for encoder in args.encoders:
            print(f"running {encoder} ...", file=sys.stderr, flush=True)
            cfg = compose(encoder, root, root / "cache", args.size, args.batch)
            times, ctx, module = time_module(cfg, args.warmup + args.steps)
            bare = time_bare_unet(module.unet, args.batch, args.size, ctx, args.warmup + args.steps)
            params = sum(p.numel() for p in module.unet.parameters())
            rows.append({"encoder": encoder, "ctx": ctx, "params": params,
                         "step": statistics.median(times[args.warmup:]),
                         "bare": statistics.median(bare[args.warmup:])})
            print(rows[-1], file=sys.stderr, flush=True)
    text = markdown(rows, args, command.strip(), (load_before, load_average()))
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
