"""Time the decomposed diffusion sampler per slice: UNet vs data consistency vs the rest.

The network is ``metamri.models.unet.build_unet(preset)`` with random weights (the time of
a step does not depend on the weights): ``tiny`` is the CPU model the phantom runs train,
``contextmri`` the published architecture. Default problem: 64x64, 8 coils, a 4x mask, ContextMRI's
settings (100 steps, eta 0.8, 5 CG steps, gamma 5), and K = 1 and K = 5 samples per slice
run as one batch (metamri.sampling.ensemble).  Writes the "## Sampler" section of
docs/benchmarks.md (and only that section).

    python benchmarks/bench_sampler.py --write         # CPU; updates docs/benchmarks.md
    python benchmarks/bench_sampler.py --steps 10      # a quick look, prints only
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _common import DOC, load_average, machine, write_section

from metamri.models.unet import build_unet
from metamri.physics.sense import SenseOperator
from metamri.sampling import DecomposedDiffusionSampler, ensemble_sample, ensemble_seeds

SECTION = "## Sampler"




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
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(args.preset, cross_attention_dim=args.ctx_dim, sample_size=args.size).eval()
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


def markdown(args, rows, n_params, load_before, load_after) -> str:
    cmd = "python benchmarks/bench_sampler.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        "Decomposed diffusion sampler, one slice, wall-clock seconds per slice.",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"- Model: `build_unet('{args.preset}')` (random weights), {n_params / 1e6:.2f}M parameters, "
        f"context {args.ctx_len} tokens x {args.ctx_dim}.",
        f"- Problem: {args.size}x{args.size}, {args.coils} coils, {args.accel}x mask (+8% centre), "
        f"{args.steps} steps, eta 0.8, 5 CG steps, gamma 5; K samples of the slice run as one batch "
        "of K (`ensemble_sample`); CFG s = 1 runs one network half, other s run both as one batch of 2K.",
        f"- Machine: {machine()}; load average {load_before:.1f} before, {load_after:.1f} after. "
        f"Best of {args.repeats} run(s).",
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--accel", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--preset", default="tiny", help="UNet preset of metamri.models.unet")
    ap.add_argument("--ctx-len", type=int, default=8)
    ap.add_argument("--ctx-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    with torch.no_grad():
        rows, n_params = run(args)
    text = markdown(args, rows, n_params, load_before, load_average())
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
