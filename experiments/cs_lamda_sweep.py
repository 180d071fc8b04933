"""Choose the CS baseline's L1-wavelet weight ``lamda`` on the validation split.

    python experiments/cs_lamda_sweep.py --root . [--split val] \\
        [--lamdas 0 2e-5 5e-5 1e-4 2e-4 5e-4 1e-3 2e-3 5e-3 0.01 0.02 0.05] [--cycle-spinning] [override ...]

Runs ``metamri.evaluate methods=[zero_filled,cs] split=val cs.lamda=<each>`` (the same as
``python -m metamri.evaluate -m split=val 'methods=[zero_filled,cs]' cs.lamda=0,2e-5,...``,
one process), in normalised units (images divided by their p99 magnitude, as the network
sees them), with everything else as configured (mask, coil maps, iterations, backend;
extra arguments are Hydra overrides, e.g. ``data=fastmri_brain data.sources.brain=...`` for
real data). With ``--measured`` each weight also runs ``metamri.reconstruct method=cs`` on the
raw files of the same slices (noisy measured k-space, calibration-region maps, the measured
scale; scored against ``reconstruction_rss``), the setting a user's data is in: evaluate's
noiseless simulation ``y = A x_gt`` rewards small weights (no noise to regularise), which
measured data do not. Prints a markdown table of mean ± std PSNR / SSIM over the slices per
``lamda`` and the ``lamda`` of the best mean PSNR (of the measured column with
``--measured``); ``--out`` also writes the table. The value set in
``conf/reconstruction/default.yaml`` and the table in ``docs/cs_baseline.md`` come from here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from metamri.evaluate import evaluate
    from metamri.metrics import MetricTable
    from metamri.utils.hydra import register_resolvers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="paths.root_dir")
    ap.add_argument("--split", default="val")
    ap.add_argument("--lamdas", type=float, nargs="+",
                    default=[0, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05])
    ap.add_argument("--cycle-spinning", action="store_true",
                    help="sweep without and with cycle spinning (else: as configured, cs.cycle_spinning)")
    ap.add_argument("--measured", action="store_true",
                    help="also reconstruct the raw files of the slices (metamri.reconstruct) per weight")
    ap.add_argument("--work", default=None, help="output folder (default <root>/logs/cs_lamda_sweep)")
    ap.add_argument("--out", default=None, help="markdown table written here too")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    work = Path(args.work or root / "logs" / "cs_lamda_sweep")
    register_resolvers()

    spins: list[bool | None] = [False, True] if args.cycle_spinning else [None]
    results: list[tuple[bool, float, list[float], list[float]]] = []  # (spin, lamda, psnr, ssim)
    measured: dict[tuple[bool, float], list[float]] = {}
    zf: list[float] = []
    for spin in spins:
        for lamda in args.lamdas:
            name = f"lamda_{lamda:g}" + ("_spin" if spin else "")
            overrides = [f"paths.root_dir={root}", f"split={args.split}", "methods=[zero_filled,cs]",
                         "lpips=false", f"cs.lamda={lamda}", *args.overrides]
            if spin is not None:
                overrides.append(f"cs.cycle_spinning={str(spin).lower()}")
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose("evaluate", overrides=overrides)
            with open_dict(cfg):
                cfg.paths.output_dir = str(work / name)
            evaluate(cfg)
            table = MetricTable.from_csv(work / name / "reconstruction" / f"{args.split}_metrics.csv")
            cs = [r for r in table if r.method == "cs"]
            spun = bool(cfg.cs.get("cycle_spinning", False)) if spin is None else spin
            results.append((spun, lamda, [r.psnr for r in cs], [r.ssim for r in cs]))
            if not zf:
                zf = [r.psnr for r in table if r.method == "zero_filled"]
            if args.measured:
                measured[(spun, lamda)] = _measured(cfg, table, work / name, overrides)
                if "zero_filled" not in measured:
                    measured["zero_filled"] = _measured(cfg, table, work / name, overrides, "zero_filled")
            print(f"{name}: CS PSNR {np.mean(results[-1][2]):.3f} dB"
                  + (f", measured {np.mean(measured[(spun, lamda)]):.3f} dB" if args.measured else ""),
                  file=sys.stderr, flush=True)

    score = (lambda r: np.mean(measured[(r[0], r[1])])) if args.measured else (lambda r: np.mean(r[2]))
    best = max(results, key=score)
    head = f"{len(zf)} slices of the {args.split} split; zero-filled PSNR {np.mean(zf):.2f} ± {np.std(zf, ddof=1):.2f} dB"
    if args.measured:
        m0 = measured["zero_filled"]
        head += f" (simulated), {np.mean(m0):.2f} ± {np.std(m0, ddof=1):.2f} dB (measured)"
    lines = [head, "", "| lamda | cycle spinning | CS PSNR (dB), evaluate | CS SSIM, evaluate |"
             + (" CS PSNR (dB), reconstruct (measured) |" if args.measured else ""),
             "|---|---|---|---|" + ("---|" if args.measured else "")]
    for spin, lamda, p, s in results:
        mark = " **best**" if (spin, lamda) == (best[0], best[1]) else ""
        row = (f"| {lamda:g}{mark} | {'yes' if spin else 'no'} | {np.mean(p):.2f} ± {np.std(p, ddof=1):.2f} | "
               f"{np.mean(s):.4f} ± {np.std(s, ddof=1):.4f} |")
        if args.measured:
            q = measured[(spin, lamda)]
            row += f" {np.mean(q):.2f} ± {np.std(q, ddof=1):.2f} |"
        lines.append(row)
    lines += ["", f"best: lamda = {best[1]:g}" + (" with cycle spinning" if best[0] else "")
              + (" (by the measured column)" if args.measured else "")]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _measured(cfg, table, work: Path, overrides: list[str], method: str = "cs") -> list[float]:
    """Per-slice PSNR of ``metamri.reconstruct method=<method>`` on the raw files of ``table``'s slices,
    against each file's ``reconstruction_rss``."""
    import h5py
    from hydra import compose, initialize_config_dir

    from metamri.data.readers import open_volume
    from metamri.metrics import psnr
    from metamri.reconstruct import reconstruct

    raw = Path(str(cfg.data.sources.brain))
    files = [next(raw.rglob(f)) for f in sorted({r.fname for r in table})]
    keep = [o for o in overrides if o.split("=")[0] not in ("split", "methods", "lpips")]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        rcfg = compose("reconstruct", overrides=[*keep, f"method={method}", f"out_dir={work / method}",
                                                 f"paths.output_dir={work / method}",
                                                 "inputs=[" + ",".join(map(str, files)) + "]"])
    out = []
    for path, written in zip(files, reconstruct(rcfg), strict=True):
        with h5py.File(written, "r") as f:
            images = f["reconstruction"][()]
        out += [psnr(item.target, im) for item, im in zip(open_volume(path), images, strict=True)]
    return out


if __name__ == "__main__":
    sys.exit(main())
