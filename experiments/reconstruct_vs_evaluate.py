"""``metamri.reconstruct`` and ``metamri.evaluate`` on the same test slices and masks.

    python experiments/reconstruct_vs_evaluate.py --root . [--methods zero_filled cs] \\
        [--split test] [--coil-maps fully_sampled] [override ...]

1. ``metamri.evaluate`` (baselines) on the split of the embedded default (or of the data the
   overrides point at): the measurement is simulated from the cached MVUE, scored against it;
   once with its defaults (the fully sampled maps, the cache's scale) and once with
   reconstruct's protocol (``coil_maps=calibration scaling=measured``);
2. ``metamri.reconstruct`` on the raw files of the same slices (the same mask: both seed it
   from the file name), with coil maps from the calibration region and the measured scale,
   scored per slice against the file's ``reconstruction_rss`` (what a user scores against) and
   against the cached MVUE in file units (the ground truth evaluate uses).

Prints one markdown table (mean PSNR over slices, dB) and writes it to ``--out``. Extra
arguments are Hydra overrides given to both commands (e.g. ``cs.lamda=0.01``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from metamri.utils.hydra import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(name, overrides=overrides, return_hydra_config=False)


def main(argv: list[str] | None = None) -> int:
    from omegaconf import open_dict

    from metamri.evaluate import evaluate
    from metamri.metrics import MetricTable, psnr
    from metamri.reconstruct import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="paths.root_dir (data/phantom, data/cache live there)")
    ap.add_argument("--methods", nargs="+", default=["zero_filled", "cs"])
    ap.add_argument("--split", default="test")
    ap.add_argument("--work", default=None, help="output folder (default <root>/logs/reconstruct_vs_evaluate)")
    ap.add_argument("--out", default=None, help="markdown table written here too")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    work = Path(args.work or root / "logs" / "reconstruct_vs_evaluate")
    common = [f"paths.root_dir={root}", *args.overrides]

    tables = {}
    for name, extra in (("evaluate", []), ("evaluate_protocol", ["coil_maps=calibration", "scaling=measured"])):
        cfg = compose("evaluate", [*common, f"methods=[{','.join(args.methods)}]", f"split={args.split}",
                                   "lpips=false", *extra])
        with open_dict(cfg):
            cfg.paths.output_dir = str(work / name)
            cfg.data.output_dir = str(work / name)
        evaluate(cfg)
        tables[name] = MetricTable.from_csv(work / name / "reconstruction" / f"{args.split}_metrics.csv")
    table, protocol = tables["evaluate"], tables["evaluate_protocol"]
    fnames = sorted({r.fname for r in table})
    raw_dir = Path(cfg.data.sources.brain)
    files = [next(raw_dir.rglob(f)) for f in fnames]
    cached = _cached_images(cfg, fnames)

    rows = {m: {"evaluate": [r.psnr for r in table if r.method == m],
                "protocol": [r.psnr for r in protocol if r.method == m], "rss": [], "mvue": []}
            for m in args.methods}
    for method in args.methods:
        rcfg = compose("reconstruct", [*common, f"method={method}", "inputs=[" + ",".join(map(str, files)) + "]",
                                       f"out_dir={work / method}"])
        with open_dict(rcfg):
            rcfg.paths.output_dir = str(work / method)
        import h5py

        from metamri.data.readers import open_volume

        for path, out in zip(files, reconstruct(rcfg), strict=True):
            with h5py.File(out, "r") as f:
                rec = f["reconstruction"][()]
            for item, image in zip(open_volume(path), rec, strict=True):
                rows[method]["rss"].append(psnr(item.target, image))
                ref = cached.get((path.name, int(item.slice_index)))
                if ref is not None:
                    rows[method]["mvue"].append(psnr(ref, image))
    lines = [f"{len(table) // len(args.methods)} slices of the {args.split} split ({len(files)} volumes); "
             "PSNR mean over slices, dB", "",
             "| method | evaluate (defaults) | evaluate (coil_maps=calibration scaling=measured) | "
             "reconstruct vs reconstruction_rss | reconstruct vs cached MVUE |", "|---|---|---|---|---|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {np.mean(r['evaluate']):.2f} | {np.mean(r['protocol']):.2f} | "
                     f"{np.mean(r['rss']):.2f} | {np.mean(r['mvue']) if r['mvue'] else float('nan'):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _cached_images(cfg, fnames: list[str]) -> dict[tuple[str, int], np.ndarray]:
    """``{(fname, slice): |cached MVUE| in file units}`` of the evaluated volumes."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    ds = dm.eval_dataset(cfg.split, cfg.domain, load_maps=False)
    out = {}
    for i in range(len(ds)):
        s = ds[i]
        if s.fname in fnames:
            out[(s.fname, int(s.slice_index))] = np.abs(s.image[0] + 1j * s.image[1]) * float(s.scale)
    return out


if __name__ == "__main__":
    sys.exit(main())
