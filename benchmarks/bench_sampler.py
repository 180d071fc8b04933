"""Time the decomposed diffusion sampler: UNet vs data consistency vs the rest, per slice and batched.

The network is ``metamri.models.unet.build_unet(preset)`` with random weights (the time of
a step does not depend on the weights): ``tiny`` is the CPU model the phantom runs train,
``contextmri`` the published architecture. Default problem: 64x64, 8 coils, a 4x mask, ContextMRI's
settings (100 steps, eta 0.8, 5 CG steps, gamma 5). Two tables:

* per slice: CFG s = 1 and 2, K = 1 and 5 samples of one slice run as one batch
  (``metamri.sampling.ensemble``);
* batched: B slices (CFG 1, K = 1) as one sampler call against the same B slices one call at a
  time, in slices per second (what ``metamri.evaluate batch_size=B`` does against ``batch_size=1``).

Each figure runs in a fresh process (``--case``), so its peak memory is its own: the peak
resident set (``ru_maxrss``) on CPU, the CUDA allocator's peak on a GPU, and on CPU also the
part of it added after the model was built. Writes the "## Sampler" section of
docs/benchmarks.md (and only that section).

    python benchmarks/bench_sampler.py --write         # CPU; updates docs/benchmarks.md
    python benchmarks/bench_sampler.py --steps 10      # a quick look, prints only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    DOC,
    current_rss_mib,
    load_average,
    machine,
    peak_memory_mib,
    run_in_child,
    write_section,
)

SECTION = "## Sampler"
#: the goals of issue 13 that this section's figures answer
GOAL_OUTSIDE_CPU = 0.15


def problem(size: int, coils: int, accel: int, seed: int = 0):
    """Smooth maps with sum |S|^2 = 1, a disc-and-ellipse image, every accel-th column + 8% centre.

    Returns ``maps`` complex64 (1, C, H, W), ``mask`` float32 (W,), ``y`` complex64 (1, C, H, W).
    """
    from metamri.physics.sense import SenseOperator

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


def measure(case: dict) -> dict:
    """One figure, in this process: the best of ``repeats`` runs of ``batch`` slices.

    ``case``: preset, size, coils, accel, steps, scale, k, batch, mode ("batched": the B slices
    as one sampler call; "one_at_a_time": B calls of one slice), repeats, ctx_len, ctx_dim,
    device, precision. Returns wall seconds for the B slices, the sampler's timing split
    (summed over calls), the peak memory (MiB) and the parameter count.
    """
    from metamri.models.performance import Performance
    from metamri.models.unet import build_unet
    from metamri.sampling import DecomposedDiffusionSampler, ensemble_sample, ensemble_seeds

    device = torch.device(case["device"])
    perf = Performance(precision=case.get("precision", "fp32"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(case["preset"], cross_attention_dim=case["ctx_dim"], sample_size=case["size"])
    unet = perf.prepare(unet.eval().to(device))
    n_params = sum(p.numel() for p in unet.parameters())

    def unet_eps(x_t, t, context):
        return unet(x_t, t, encoder_hidden_states=context).sample

    eps_fn = perf.wrap(unet_eps)
    b, k = int(case["batch"]), int(case["k"])
    maps, mask, y = problem(case["size"], case["coils"], case["accel"])
    maps, mask, y = maps.to(device), mask.to(device), y.to(device)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, case["ctx_len"], case["ctx_dim"], generator=g).to(device)
    uncond = torch.zeros_like(cond)
    per_call = b if case["mode"] == "batched" else 1
    ys, maps_b = y.expand(per_call, -1, -1, -1).contiguous(), maps.expand(per_call, -1, -1, -1).contiguous()
    seeds = [s for i in range(b) for s in ensemble_seeds(f"bench:{i}", k)]

    def sampler_for(steps: int, profile: bool = False):
        return DecomposedDiffusionSampler(num_steps=steps, guidance_scale=case["scale"], profile=profile)

    def one_pass(sampler) -> tuple[float, dict]:
        t0 = time.perf_counter()
        timings = {"unet": 0.0, "data_consistency": 0.0, "other": 0.0}
        for start in range(0, b, per_call):
            res = ensemble_sample(sampler, eps_fn, ys, maps_b, mask, cond, uncond, k,
                                  seeds[start * k : (start + per_call) * k])
            for name in timings:
                timings[name] += res.timings[name]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, timings

    rss_model = current_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        one_pass(sampler_for(2))  # warm-up (first-call allocations, lazy imports, autotuning), not timed
        best = min((one_pass(sampler_for(case["steps"])) for _ in range(case["repeats"])), key=lambda r: r[0])
        wall, timings = best
        if device.type == "cuda":  # the split needs a synchronised run; the wall time above does not
            timings = one_pass(sampler_for(case["steps"], profile=True))[1]
    peak = peak_memory_mib(str(device))
    return {**case, "wall": wall, **timings, "params": n_params, "peak_mib": peak,
            "added_mib": peak - rss_model if device.type == "cpu" else peak}


def outside_share(row: dict) -> float:
    """The share of the sampler's time not spent in the UNet (data consistency and the rest)."""
    total = row["unet"] + row["data_consistency"] + row["other"]
    return 1.0 - row["unet"] / total


def cases(args) -> tuple[list[dict], list[dict]]:
    base = {"preset": args.preset, "size": args.size, "coils": args.coils, "accel": args.accel,
            "steps": args.steps, "repeats": args.repeats, "ctx_len": args.ctx_len, "ctx_dim": args.ctx_dim,
            "device": args.device, "precision": args.precision}
    per_slice = [{**base, "scale": s, "k": k, "batch": 1, "mode": "batched"} for s in args.scales for k in args.k]
    batched = [{**base, "scale": 1.0, "k": 1, "batch": args.batch, "mode": mode}
               for mode in ("one_at_a_time", "batched")]
    return per_slice, batched


def markdown(args, per_slice, batched, load_before, load_after) -> str:
    cmd = ("python benchmarks/bench_sampler.py " + " ".join(sys.argv[1:])).strip()
    n_params = per_slice[0]["params"]
    lines = [
        SECTION,
        "",
        "Decomposed diffusion sampler, wall-clock seconds.",
        "",
        f"Command: `{cmd}`",
        "",
        f"- Model: `build_unet('{args.preset}')` (random weights), {n_params / 1e6:.2f}M parameters, "
        f"context {args.ctx_len} tokens x {args.ctx_dim}, {args.precision}.",
        f"- Problem: {args.size}x{args.size}, {args.coils} coils, {args.accel}x mask (+8% centre), "
        f"{args.steps} steps, eta 0.8, 5 CG steps, gamma 5; K samples of a slice run as one batch "
        "of K (`ensemble_sample`); CFG s = 1 runs one network half, other s run both as one batch of 2K.",
        f"- Machine: {machine()} on {args.device}; load average {load_before:.1f} before, {load_after:.1f} after. "
        f"Best of {args.repeats} run(s); each row in its own process.",
        "- Peak memory: the process's peak resident set (`ru_maxrss`, Python and torch included); "
        "\"added\" is the part of it above the resident set once the model was built.",
        "",
        "### One slice",
        "",
        "| CFG s | K | total (s) | UNet (s) | data consistency (s) | other (s) | per sample (s) | outside UNet "
        "| peak memory (MiB) | added (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in per_slice:
        lines.append(
            f"| {r['scale']:g} | {r['k']} | {r['wall']:.2f} | {r['unet']:.2f} | {r['data_consistency']:.2f} | "
            f"{r['other']:.2f} | {r['wall'] / r['k']:.2f} | {outside_share(r):.1%} | {r['peak_mib']:.0f} | "
            f"{r['added_mib']:.0f} |"
        )
    one, many = batched
    speedup = one["wall"] / many["wall"]
    lines += [
        "",
        "UNet = network calls incl. the CFG combination; data consistency = A^H y and the CG "
        "solves (each step: 5 CG iterations, i.e. 6 normal-operator applications); other = "
        "Tweedie, re-noising and the per-sample noise draws; outside UNet = (data consistency + "
        "other) / (UNet + data consistency + other).",
        "",
        f"### {args.batch} slices: batched against one at a time (CFG 1, K = 1)",
        "",
        "| mode | sampler calls | total (s) | slices / s | outside UNet | peak memory (MiB) | added (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in batched:
        calls = 1 if r["mode"] == "batched" else r["batch"]
        lines.append(f"| {r['mode'].replace('_', ' ')} | {calls} | {r['wall']:.2f} | {r['batch'] / r['wall']:.2f} | "
                     f"{outside_share(r):.1%} | {r['peak_mib']:.0f} | {r['added_mib']:.0f} |")
    worst = max(outside_share(r) for r in [*per_slice, *batched])
    lines += [
        "",
        f"Goals (issue 13) on this machine: time outside the UNet at most {GOAL_OUTSIDE_CPU:.0%} at 64 x 64 on "
        f"CPU: **{worst:.1%} at most** over the rows above ({'met' if worst <= GOAL_OUTSIDE_CPU else 'not met'}); "
        f"batched sampling no slower than one at a time on CPU: **{speedup:.2f}x** the slices per second "
        f"({'met' if speedup >= 1.0 else 'not met'}).",
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
    ap.add_argument("--batch", type=int, default=8, help="slices of the batched table")
    ap.add_argument("--preset", default="tiny", help="UNet preset of metamri.models.unet")
    ap.add_argument("--ctx-len", type=int, default=8)
    ap.add_argument("--ctx-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one figure, in this process (JSON)
    ap.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(measure(json.loads(args.case))))
        return
    load_before = load_average()
    per_slice, batched = ([run_in_child(Path(__file__), c, args.threads) for c in group] for group in cases(args))
    for r in [*per_slice, *batched]:
        print(f"s={r['scale']:g} K={r['k']} B={r['batch']} {r['mode']}: {r['wall']:.2f} s  unet {r['unet']:.2f}  "
              f"dc {r['data_consistency']:.2f}  other {r['other']:.2f}  peak {r['peak_mib']:.0f} MiB", flush=True)
    text = markdown(args, per_slice, batched, load_before, load_average())
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
