"""Coil maps from the calibration region vs maps from fully sampled data, by ACS width.

    python experiments/acs_map_quality.py FILE_OR_DIR [...] --acs 4 5 6 8 10 12 16 24 \\
        --backends sigpy bart --slices 0 3 6 --max-files 4

For every fastMRI-format file and slice: the reference is what preprocessing computes
(ESPIRiT with the default :class:`~metamri.preprocess.espirit.EspiritParams` on the fully
sampled k-space, cropped to the recon size, and its MVUE). For each ACS width ``a`` the
k-space keeps only its ``a`` centred columns, the readout oversampling is removed and
ESPIRiT runs on the calibration region as ``metamri.reconstruct`` does
(:func:`metamri.preprocess.measured.calibration_params`). Printed per (backend, ACS), mean
over slices:

* ``agree``: mean over the object of the per-pixel agreement with the reference maps
  (``|<S, S_ref>| / (|S| |S_ref|)``, 1 = equal up to phase); ``p05``: its 5th percentile;
* ``cover``: fraction of the object where the maps are non-zero;
* ``mvue dB``: PSNR of the fully sampled MVUE made with these maps against the reference MVUE
  (magnitudes): what the maps cost an otherwise perfect reconstruction;
* ``chk cover`` / ``chk resid``: :func:`~metamri.preprocess.measured.check_maps`, the
  reference-free check the reconstruction runs (coverage of the calibration image's object,
  SENSE-model residual), and ``ok``: how many slices pass it.

The object is where the reference MVUE exceeds 10% of its 99th percentile and the reference
maps are non-zero. Failures (BART refuses small regions) count as ``failed``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from metamri.data.readers import open_volume
    from metamri.metrics import psnr
    from metamri.preprocess.espirit import EspiritParams, map_agreement
    from metamri.preprocess.measured import calibration_params, check_maps, crop_readout
    from metamri.preprocess.mvue import crop_or_pad, mvue

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--acs", type=int, nargs="+", default=[4, 5, 6, 8, 10, 12, 16, 24])
    ap.add_argument("--backends", nargs="+", default=["sigpy", "bart"])
    ap.add_argument("--slices", type=int, nargs="*", default=None, help="slice indices (default all)")
    ap.add_argument("--max-files", type=int, default=None)
    args = ap.parse_args(argv)

    files: list[Path] = []
    for item in args.inputs:
        p = Path(item)
        files += sorted(p.rglob("*.h5")) if p.is_dir() else [p]
    files = files[: args.max_files]
    stats: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    width = None
    for path in files:
        for item in open_volume(path):
            if args.slices is not None and item.slice_index not in args.slices:
                continue
            k = np.asarray(item.kspace, np.complex64)
            h, w = item.recon_size
            width = k.shape[-1]
            for backend in args.backends:
                ref_params = EspiritParams(backend=backend)
                ref_maps = crop_or_pad(ref_params.estimator()(k), (h, w))
                x_ref = crop_or_pad(mvue(k, ref_params.estimator()(k)), (h, w))
                obj = (np.abs(x_ref) > 0.1 * np.percentile(np.abs(x_ref), 99)) & (
                    np.sum(np.abs(ref_maps) ** 2, 0) > 0.5)
                k_crop = crop_readout(k, h)
                for a in args.acs:
                    s = stats[(backend, a)]
                    mask = np.zeros(width, bool)
                    mask[width // 2 - a // 2: width // 2 - a // 2 + a] = True
                    y = crop_readout(k * mask, h) * mask
                    try:
                        maps = calibration_params(ref_params, a).estimator()(y)
                    except Exception as err:  # noqa: BLE001 - BART refuses small regions
                        s["failed"].append(1.0)
                        s["error"] = [str(err).splitlines()[0][:80]]
                        continue
                    maps_c = crop_or_pad(maps, (h, w))
                    agree = map_agreement(maps_c, ref_maps)[obj]
                    s["agree"].append(float(agree.mean()))
                    s["p05"].append(float(np.percentile(agree, 5)))
                    s["cover"].append(float(np.mean(np.sum(np.abs(maps_c) ** 2, 0)[obj] > 0.5)))
                    x = crop_or_pad(mvue(k_crop, maps), (h, w))
                    s["mvue"].append(psnr(np.abs(x_ref), np.abs(x)))
                    chk = check_maps(maps, y, a)
                    s["chk_cover"].append(chk.coverage)
                    s["chk_resid"].append(chk.residual)
                    s["ok"].append(float(chk.ok))
                    s["failed"].append(0.0)
        print(f"done {path.name}", file=sys.stderr, flush=True)

    print(f"\nW = {width}, {len(files)} file(s)")
    print("| backend | ACS | agree | p05 | cover | mvue dB | chk cover | chk resid | ok | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (backend, a), s in sorted(stats.items()):
        def m(key, fmt=".4f", s=s):
            return "-" if not s.get(key) else format(float(np.mean(s[key])), fmt)
        n_ok = int(np.sum(s["ok"])) if s.get("ok") else 0
        print(f"| {backend} | {a} | {m('agree')} | {m('p05')} | {m('cover')} | {m('mvue', '.1f')} | "
              f"{m('chk_cover')} | {m('chk_resid')} | {n_ok}/{len(s['failed'])} | "
              f"{int(np.sum(s['failed']))}{' (' + s['error'][0] + ')' if s.get('error') else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
