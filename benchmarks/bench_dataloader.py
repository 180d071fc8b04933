"""Data-loader throughput: slices per second served from the preprocessed cache.

Writes cache entries with :func:`metamri.preprocess.cache.write_entry` (random images and
maps: the reader does not look at the values) at two sizes, builds
:class:`metamri.datamodules.SliceDataModule` over them exactly as training does (mixed
brain + cardiac at 1:5 through the ratio sampler, batch 4) and times full passes over

* the training loader (images only, the OOD ratio sampler), with 0 and 2 workers;
* the evaluation dataset with coil maps (what the reconstruction callback reads).

The cache files are read once before timing, so the numbers are for a warm page cache
(a first epoch from a cold disk is bounded by the disk instead).

    python benchmarks/bench_dataloader.py            # print the markdown section
    python benchmarks/bench_dataloader.py --write    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import DOC, load_average, machine, write_section

from metamri.datamodules import SliceDataModule
from metamri.metadata.record import Metadata
from metamri.preprocess.cache import VolumeEntry, write_entry

SECTION = "## Data loading"

#: name -> image size, coils, slices per volume, volumes per domain
CASES = {
    "phantom": {"size": 64, "coils": 8, "slices": 8, "volumes": 60},
    "fastmri": {"size": 320, "coils": 16, "slices": 16, "volumes": 8},
}


def write_cache(root: Path, size: int, coils: int, slices: int, volumes: int) -> None:
    """``volumes`` brain and ``volumes`` cardiac entries of random content under ``root``."""
    rng = np.random.default_rng(0)
    for domain, meta in (
        ("brain", Metadata(anatomy="brain", contrast="T1", sequence="SpinEcho", tr=500.0, te=10.0)),
        ("cardiac", Metadata(anatomy="heart", contrast="CINE", sequence="bSSFP", tr=3.0, te=1.5)),
    ):
        for v in range(volumes):
            image = rng.standard_normal((slices, 2, size, size), dtype=np.float32)
            maps = (rng.standard_normal((slices, coils, size, size))
                    + 1j * rng.standard_normal((slices, coils, size, size))).astype(np.complex64)
            write_entry(root / domain / f"{domain}_{v:03d}.h5", VolumeEntry(
                image=image, maps=maps, scale=np.ones(slices, np.float32),
                slice_index=np.arange(slices, dtype=np.int32), frame=np.full(slices, -1, np.int32),
                metadata=meta, domain=domain, patient_id=f"{domain}{v:03d}", fname=f"{domain}_{v:03d}.h5",
                format="bench",
            ))


def time_pass(items, repeats: int) -> tuple[float, int]:
    """Best wall time of a full pass over ``items`` (a loader or a dataset) and the slices it gave."""
    best, n = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for item in items:
            n += item.image.shape[0] if item.image.ndim == 4 else 1
        best = min(best, time.perf_counter() - t0)
    return best, n


def run_case(name: str, spec: dict, work: Path, workers: list[int], repeats: int) -> list[dict]:
    root = work / name
    write_cache(root, **spec)
    rows = []
    for nw in workers:
        dm = SliceDataModule(
            sources={"brain": str(root / "raw"), "cardiac": str(root / "raw")}, cache_dir=str(root),
            ood_ratio=[1, 5], split_fractions={"train": 1.0, "val": 0.0, "test": 0.0},
            batch_size=4, num_workers=nw,
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        time_pass(loader, 1)  # warm-up: page cache, worker start
        wall, n = time_pass(loader, repeats)
        rows.append({"case": name, "spec": spec, "what": "train (images, 1:5 sampler, batch 4)",
                     "workers": nw, "slices": n, "wall": wall})
    dataset = dm.eval_dataset("train", "brain", load_maps=True)
    time_pass(dataset, 1)
    wall, n = time_pass(dataset, repeats)
    rows.append({"case": name, "spec": spec, "what": "evaluation (image + maps, one by one)",
                 "workers": 0, "slices": n, "wall": wall})
    return rows


def markdown(rows: list[dict], command: str, load: tuple[float, float]) -> str:
    lines = [
        SECTION,
        "",
        "Slices per second served from the preprocessed cache (HDF5, one file per volume, image",
        "chunks of one slice, maps lzf-compressed), warm page cache, best of the repeats.",
        "",
        f"Machine: {machine()}; load average {load[0]:.1f} before, {load[1]:.1f} after.",
        "",
        f"Command: `{command}`",
        "",
        "| cache | image | coils | read | workers | slices / pass | s / pass | slices / s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["spec"]
        lines.append(
            f"| {r['case']} | {s['size']} x {s['size']} | {s['coils']} | {r['what']} | {r['workers']} "
            f"| {r['slices']} | {r['wall']:.2f} | {r['slices'] / r['wall']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["phantom", "fastmri"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {DOC}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/bench_dataloader.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-dataloader-") as tmp:
        rows = []
        for name in args.cases:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows += run_case(name, CASES[name], Path(tmp), args.workers, args.repeats)
    text = markdown(rows, command.strip(), (load_before, load_average()))
    print(text)
    if args.write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
