"""The GPU figures: the ``contextmri`` UNet at 320 x 320, training and sampling, with FLOP utilisation.

On a CUDA device (``--device cuda``, the default when one is present):

* training: samples per second of a bf16-autocast optimizer step (forward, MSE, backward,
  clipping, AdamW) of ``build_unet('contextmri')`` on a batch of 320 x 320 two-channel
  images with a context of ``ctx_len`` x 1024 tokens; its model FLOP utilisation (MFU) =
  FLOPs of one step (counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real
  shapes, forward and backward) / step time / the device's dense bf16 peak (:data:`PEAK_TFLOPS`,
  or ``--peak-tflops``);
* sampling: seconds per slice of the 100-step DDS at 320 x 320, 16 coils, 4x, bf16, one slice
  and a batch of slices (``bench_sampler.measure``, each in its own process), the share of time
  outside the UNet (from a synchronised ``profile=True`` run), and the allocator's peak memory.

Without a CUDA device the section is written as "not measured", with the machine it would have
run on; no figure is estimated. ``--device cpu --preset tiny --size 32 --steps 3`` runs the same
code on a CPU as a check of the script itself (prints, never ``--write``s).

    python benchmarks/bench_gpu.py --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import DOC, machine, peak_memory_mib, run_in_child, write_section

SECTION = "## GPU (320 x 320, contextmri UNet)"
#: Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets; matched
#: in this order against ``torch.cuda.get_device_name()``.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("A100", 312.0),
    ("L40S", 362.05), ("L4", 121.0), ("A10", 125.0),
)
GOAL_MFU = 0.40
GOAL_OUTSIDE_GPU = 0.10
GOAL_BATCH_SPEEDUP = 3.0


def device_peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return float(override)
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops
    return None


def training_case(case: dict) -> dict:
    """Step time, samples/s, FLOPs per step and peak memory of bf16 training, in this process."""
    from torch.utils.flop_counter import FlopCounterMode

    from metamri.models.performance import Performance
    from metamri.models.unet import build_unet

    device = torch.device(case["device"])
    perf = Performance(precision=case["precision"], channels_last=case.get("channels_last", False))
    torch.manual_seed(0)
    unet = perf.prepare(build_unet(case["preset"], cross_attention_dim=case["ctx_dim"],
                                   sample_size=case["size"]).to(device).train())
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    b = int(case["batch"])
    x = torch.randn(b, 2, case["size"], case["size"], device=device)
    ctx = torch.randn(b, case["ctx_len"], case["ctx_dim"], device=device)
    t = torch.randint(0, 1000, (b,), device=device)

    def step() -> None:
        with perf.autocast(device):
            loss = (unet(x, t, encoder_hidden_states=ctx).sample.float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(case["warmup"]):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(case["steps"]):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {**case, "step_s": step_s, "samples_per_s": b / step_s, "flops": flops,
            "params": sum(p.numel() for p in unet.parameters()), "peak_mib": peak_memory_mib(str(device))}


def not_measured(reason: str) -> str:
    return "\n".join([
        SECTION, "",
        f"**Not measured**: {reason}. This machine: {machine()}.",
        "",
        "What this section reports where a CUDA device is present (`python benchmarks/bench_gpu.py --write`): "
        "bf16 training samples/s of the `contextmri` UNet at 320 x 320 and its model FLOP utilisation "
        "(FLOPs counted with `torch.utils.flop_counter`), DDS sampling seconds per slice for one slice and a "
        "batch, the share of time outside the UNet, and the peak memory of each.",
        "",
        "On a lent GPU machine it is one call, prepared here: `bash benchmarks/gpu/wheels.sh` fetches the "
        "pure-Python wheels that machine's image lacks (diffusers, omegaconf, ismrmrd and their needs) into "
        "`.whl/`; then `bash benchmarks/gpu/run.sh` there, with `.whl` carried, runs the CUDA tests "
        "(`tests/test_performance.py`, the sampler loop's no-sync check among them) and this benchmark, and "
        "returns this section. `GPU_DRY_RUN=1 bash benchmarks/gpu/run.sh` runs the same stages on a CPU at "
        "toy sizes.",
        "",
        f"Goals (issue 13): MFU >= {GOAL_MFU:.0%} in bf16 training; time outside the UNet <= "
        f"{GOAL_OUTSIDE_GPU:.0%} of sampling; batched sampling >= {GOAL_BATCH_SPEEDUP:g}x the slices per second "
        "of one at a time. None of them is measured on this machine.", "",
    ])


def markdown(args, device_name: str, peak: float | None, train: dict, sampling: list[dict]) -> str:
    from bench_sampler import outside_share

    cmd = ("python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:])).strip()
    achieved = train["flops"] / train["step_s"] / 1e12
    mfu = achieved / peak if peak else None
    mfu_text = f"{mfu:.1%}" if mfu is not None else "unknown (no peak for this device: give --peak-tflops)"
    lines = [
        SECTION, "",
        f"Command: `{cmd}`", "",
        f"- Machine: {machine()}; device {device_name}, dense bf16 peak "
        f"{peak if peak else 'unknown'} TFLOP/s.",
        f"- Model: `build_unet('{args.preset}')` (random weights), {train['params'] / 1e6:.1f}M parameters, "
        f"{args.size} x {args.size}, context {args.ctx_len} x {args.ctx_dim}, {args.precision} autocast.",
        "", "### Training", "",
        "| batch | step (s, median) | samples / s | FLOPs / step (counted) | achieved TFLOP/s | MFU | peak memory (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {train['batch']} | {train['step_s']:.3f} | {train['samples_per_s']:.1f} | {train['flops']:.3e} | "
        f"{achieved:.1f} | {mfu_text} | {train['peak_mib']:.0f} |",
        "", f"### Sampling (DDS {args.sample_steps} steps, {args.coils} coils, 4x, CFG 1, K = 1)", "",
        "| slices per call | sampler calls | total (s) | s / slice | slices / s | outside UNet | peak memory (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sampling:
        per_call = r["batch"] if r["mode"] == "batched" else 1
        lines.append(f"| {per_call} | {r['batch'] // per_call} | {r['wall']:.2f} | {r['wall'] / r['batch']:.3f} | "
                     f"{r['batch'] / r['wall']:.2f} | {outside_share(r):.1%} | {r['peak_mib']:.0f} |")
    speedup = sampling[0]["wall"] / sampling[1]["wall"]
    worst = max(outside_share(r) for r in sampling)
    lines += [
        "",
        f"Goals (issue 13): MFU >= {GOAL_MFU:.0%}: **{mfu_text}**; time outside the UNet <= {GOAL_OUTSIDE_GPU:.0%}: "
        f"**{worst:.1%}** at most; batched >= {GOAL_BATCH_SPEEDUP:g}x one at a time: **{speedup:.2f}x**.", "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else None)
    ap.add_argument("--preset", default="contextmri")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--coils", type=int, default=16)
    ap.add_argument("--ctx-len", type=int, default=77)
    ap.add_argument("--ctx-dim", type=int, default=1024)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--sample-batch", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one training figure, in this process
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC}")
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(training_case(json.loads(args.case))))
        return
    if args.device is None:
        text = not_measured("no CUDA device on this machine (`torch.cuda.is_available()` is false)")
        print(text)
        if args.write:
            write_section(SECTION, text)
        return
    here = Path(__file__).resolve().parent
    train = run_in_child(Path(__file__), {
        "device": args.device, "preset": args.preset, "size": args.size, "ctx_len": args.ctx_len,
        "ctx_dim": args.ctx_dim, "precision": args.precision, "batch": args.train_batch,
        "steps": args.train_steps, "warmup": args.warmup})
    base = {"preset": args.preset, "size": args.size, "coils": args.coils, "accel": 4, "steps": args.sample_steps,
            "repeats": 1, "ctx_len": args.ctx_len, "ctx_dim": args.ctx_dim, "device": args.device,
            "precision": args.precision, "scale": 1.0, "k": 1, "batch": args.sample_batch}
    sampling = [run_in_child(here / "bench_sampler.py", {**base, "mode": mode}) for mode in ("one_at_a_time", "batched")]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    text = markdown(args, name, device_peak_tflops(name, args.peak_tflops), train, sampling)
    print(text)
    if args.write:
        if not args.device.startswith("cuda"):
            sys.exit("--write only with a CUDA device: this section holds the GPU figures")
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
