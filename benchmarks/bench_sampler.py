"""Time the decomposed diffusion sampler per slice: UNet vs data consistency vs the rest.

Until the trained model exists this uses a small random diffusers UNet2DConditionModel
(cross-attention at the two coarser levels) at 64x64, 8 coils, a 4x mask, ContextMRI's
settings (100 steps, eta 0.8, 5 CG steps, gamma 5), and K = 1 and K = 5 samples per slice
run as one batch (metamri.sampling.ensemble).  Writes the "## Sampler" section of
docs/benchmarks.md (and only that section).

    python benchmarks/bench_sampler.py                 # CPU, writes docs/benchmarks.md
    python benchmarks/bench_sampler.py --no-write --steps 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metamri.physics.sense import SenseOperator
from metamri.sampling import DecomposedDiffusionSampler, ensemble_sample, ensemble_seeds

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Sampler"


def tiny_unet(size: int, ctx_dim: int, seed: int = 0):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=2,
            out_channels=2,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=ctx_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    return unet.eval()


def problem(size: int, coils: int, accel: int, seed: int = 0):
    """Smooth maps with sum |S|^2 = 1, a disc-and-ellipse image, every accel-th column + 8% centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    centres = rng.uniform(-1.2, 1.2, size=(coils, 2))
    maps = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) + 1j * rng.uniform(0, 6.3)) for cy, cx in centres])
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    img = (xx**2 / 0.6 + yy**2 / 0.8 < 1) * (1.0 - 0.5 * ((xx - 0.2) ** 2 + yy**2 < 0.1))
    mask = np.zeros(size, dtype=np.float32)
    mask[::accel] = 1
    c = max(1, round(0.08 * size))
    mask[size // 2 - c // 2 : size // 2 - c // 2 + c] = 1
    maps_t = torch.from_numpy(maps.astype(np.complex64))[None]
    mask_t = torch.from_numpy(mask)
    x = torch.from_numpy((img * np.exp(0.5j * xx)).astype(np.complex64))[None]
    return maps_t, mask_t, SenseOperator(maps_t, mask_t).A(x)


def run(args) -> list[dict]:
    unet = tiny_unet(args.size, args.ctx_dim)
    n_params = sum(p.numel() for p in unet.parameters())

    def eps_fn(x_t, t, context):
        return unet(x_t, t, encoder_hidden_states=context).sample

    maps, mask, y = problem(args.size, args.coils, args.accel)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, args.ctx_len, args.ctx_dim, generator=g)
    uncond = torch.zeros(1, args.ctx_len, args.ctx_dim)
    # warm-up (first-call allocations, lazy imports), not timed
    ensemble_sample(DecomposedDiffusionSampler(num_steps=2), eps_fn, y, maps, mask, cond, uncond, 1, [0])
    rows = []
    for scale in args.scales:
        sampler = DecomposedDiffusionSampler(num_steps=args.steps, guidance_scale=scale)
        for k in args.k:
            seeds = ensemble_seeds("bench:0", k)
            best = None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = ensemble_sample(sampler, eps_fn, y, maps, mask, cond, uncond, k, seeds)
                wall = time.perf_counter() - t0
                if best is None or wall < best[0]:
                    best = (wall, res.timings)
            wall, tm = best
            row = dict(scale=scale, k=k, wall=wall, **{n: tm[n] for n in ("unet", "data_consistency", "other")})
            rows.append(row)
            print(
                f"s={scale:g} K={k}: {wall:.2f} s/slice  unet {tm['unet']:.2f}  "
                f"dc {tm['data_consistency']:.2f}  other {tm['other']:.2f}",
                flush=True,
            )
    return rows, n_params


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(args, rows, n_params, load_before, load_after) -> str:
    cmd = "python benchmarks/bench_sampler.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"Decomposed diffusion sampler, one slice, wall-clock seconds per slice ({dt.date.today()}).",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"- Model: random diffusers `UNet2DConditionModel`, {n_params / 1e6:.2f}M parameters, "
        f"blocks (32, 64, 64), cross-attention at 32x32 and 16x16, context {args.ctx_len}x{args.ctx_dim} "
        "(a stand-in until the trained model exists).",
        f"- Problem: {args.size}x{args.size}, {args.coils} coils, {args.accel}x mask (+8% centre), "
        f"{args.steps} steps, eta 0.8, 5 CG steps, gamma 5; K samples of the slice run as one batch "
        "of K (`ensemble_sample`); CFG s = 1 runs one network half, other s run both as one batch of 2K.",
        f"- Machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{args.device}; load average {load_before:.1f} before, {load_after:.1f} after "
        "(the box is shared, so treat the numbers as rough). Best of "
        f"{args.repeats} run(s).",
        "",
        "| CFG s | K | total (s) | UNet (s) | data consistency (s) | other (s) | per sample (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']:g} | {r['k']} | {r['wall']:.2f} | {r['unet']:.2f} | "
            f"{r['data_consistency']:.2f} | {r['other']:.2f} | {r['wall'] / r['k']:.2f} |"
        )
    lines += [
        "",
        "UNet = network calls incl. the CFG combination; data consistency = A^H y and the CG "
        "solves (each step: 5 CG iterations, i.e. 6 normal-operator applications); other = "
        "Tweedie, re-noising and the per-sample noise draws.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path = DOC) -> None:
    """Replace (or append) the '## Sampler' section, leaving the rest of the file alone."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--accel", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--ctx-len", type=int, default=8)
    ap.add_argument("--ctx-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="CPU only for now")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        rows, n_params = run(args)
    text = markdown(args, rows, n_params, load_before, os.getloadavg()[0])
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote the '{SECTION}' section of {DOC}")


if __name__ == "__main__":
    main()
