"""Benchmark of the preprocessing: seconds per volume with BART vs sigpy ESPIRiT.

Two cases, on phantom brain volumes written by :mod:`metamri.phantom` (fastMRI format):

* ``phantom``: the phantom's default size: 8 coils, 128 x 64 k-space (64 x 64 image), 8 slices.
* ``fastmri``: fastMRI brain size: 16 coils, 640 x 320 k-space (320 x 320 image); a few
  slices are timed and the per-slice time is scaled to a 16-slice volume.

For each backend it times :func:`metamri.preprocess.preprocess_volume` (read, ESPIRiT, MVUE,
crop, p99, write) on the whole volume (best of ``--repeats``), and the ESPIRiT call
alone per slice, and it reports how well the two backends' maps agree
(per-pixel |<S_bart, S_sigpy>| / (||S_bart|| ||S_sigpy||) inside the object).

    python benchmarks/bench_preprocess.py                   # print the markdown section
    python benchmarks/bench_preprocess.py --write           # also update docs/benchmarks.md
    python benchmarks/bench_preprocess.py --cases phantom   # only the small case

``--write`` replaces the ``## Preprocessing`` section of ``docs/benchmarks.md`` (or
appends it) and leaves every other section as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DOC, load_average, machine, write_section

from metamri.bart import bart_executable
from metamri.data.readers import open_volume
from metamri.phantom.generate import generate_domain
from metamri.physics.fft import ifft2c_np, rss
from metamri.preprocess.espirit import EspiritParams, make_estimator, map_agreement
from metamri.preprocess.pipeline import PreprocessParams, preprocess_volume

SECTION = "## Preprocessing"

CASES = {
    "phantom": {"coils": 8, "image_size": 64, "slices": 8, "volume_slices": 8},
    "fastmri": {"coils": 16, "image_size": 320, "slices": 2, "volume_slices": 16},
}




def tools() -> str:
    bart = subprocess.run([bart_executable() or "bart", "version"], capture_output=True, text=True).stdout.strip()
    import sigpy

    return f"NumPy {np.__version__}, BART {bart}, sigpy {sigpy.__version__}"


def run_case(name: str, spec: dict, repeats: int, work: Path) -> dict:
    raw = work / name
    generate_domain("brain", raw, seed=0, patients=1, volumes_per_patient=1, slices=spec["slices"],
                    coils=spec["coils"], image_size=spec["image_size"])
    (path,) = sorted(raw.rglob("*.h5"))
    volume = open_volume(path)
    out: dict = {"name": name, "kspace": volume.kspace_shape, "slices": len(volume), **spec}
    maps = {}
    for backend in ("bart", "sigpy"):
        params = PreprocessParams(espirit=EspiritParams(backend=backend))
        vol_times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            preprocess_volume(volume, work / f"cache_{backend}_{r}", params)
            vol_times.append(time.perf_counter() - t0)
        est = make_estimator(backend)
        slice_times = []
        for item in volume:
            t0 = time.perf_counter()
            maps.setdefault(backend, []).append(est(item.kspace))
            slice_times.append(time.perf_counter() - t0)
        per_slice = min(vol_times) / len(volume)
        out[backend] = {
            "volume_s": min(vol_times),
            "per_slice_s": per_slice,
            "espirit_per_slice_s": float(np.min(slice_times)),
            "volume_scaled_s": per_slice * spec["volume_slices"],
        }
    agree = []
    for item, mb, ms in zip(volume, maps["bart"], maps["sigpy"], strict=True):
        r = rss(ifft2c_np(item.kspace))
        mask = (r > 0.1 * r.max()) & (np.sum(np.abs(mb) ** 2, 0) > 0.5) & (np.sum(np.abs(ms) ** 2, 0) > 0.5)
        agree.append(map_agreement(mb, ms)[mask])
    agree = np.concatenate(agree)
    out["agreement"] = (float(agree.min()), float(agree.mean()))
    return out




def markdown(results: list[dict], command: str, load: tuple[str, str]) -> str:
    lines = [
        SECTION,
        "",
        "ESPIRiT (calib 24, kernel 6, threshold 0.02, crop 0.95; one map) + MVUE + crop + p99 + write,",
        "per volume, on phantom brain volumes (fastMRI format, SNR 30). `preprocess_volume` time is the",
        "best of the repeats; `ESPIRiT s / slice` is the fastest slice of the ESPIRiT call alone.",
        "",
        f"Machine: {machine()}; {tools()}; load average {load[0]:.1f} before, {load[1]:.1f} after (the box is shared "
        f"with other jobs, so treat the timings as rough).",
        "",
        f"Command: `{command}`",
        "",
        "| case | k-space (coils x readout x phase) | slices timed | backend | s / volume (timed) "
        "| s / slice | ESPIRiT s / slice | s / volume of N slices |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, x, y = r["kspace"]
        for backend in ("bart", "sigpy"):
            b = r[backend]
            lines.append(
                f"| {r['name']} | {c} x {x} x {y} | {r['slices']} | {backend} | {b['volume_s']:.2f} "
                f"| {b['per_slice_s']:.3f} | {b['espirit_per_slice_s']:.3f} "
                f"| {b['volume_scaled_s']:.1f} (N = {r['volume_slices']}) |"
            )
    lines += ["", "BART vs sigpy maps, per-pixel |<S_bart, S_sigpy>| / (||S_bart|| ||S_sigpy||) inside the object "
              "(RSS > 10% of max, both maps non-zero), over all timed slices:", ""]
    for r in results:
        lo, mean = r["agreement"]
        speed = r["sigpy"]["per_slice_s"] / r["bart"]["per_slice_s"]
        faster = f"BART {speed:.1f}x faster" if speed >= 1 else f"sigpy {1 / speed:.1f}x faster"
        lines.append(f"- {r['name']}: min {lo:.5f}, mean {mean:.6f}; per slice {faster}.")
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["phantom", "fastmri"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC}")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_preprocess.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        results = []
        for name in args.cases:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(run_case(name, CASES[name], args.repeats, Path(tmp)))
    text = markdown(results, command.strip(), (load_before, load_average()))
    print(text)
    if args.write:
        write_section(SECTION, text)
        print(f"updated {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
