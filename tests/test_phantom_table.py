"""experiments/phantom_table.py: the phantom results doc from the runs of phantom_table.sh,
its paired intervals from the report's patient bootstrap (not a t-interval over slices)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from metamri.metrics.table import MetricRow, MetricTable
from metamri.report.bootstrap import paired_volume_bootstrap

REPO = Path(__file__).resolve().parents[1]
# three patients, two files each, two slices per file
FILES = [f"file_brain_AXT2_{p:03d}_{n:07d}.h5" for p in (1, 2, 3) for n in (2 * p, 2 * p + 1)]


def write(out: Path, run: str, methods: dict[str, np.ndarray], files: list[str] = FILES) -> None:
    rows = [MetricRow(f, s, None, m, float(v[2 * i + s]), 0.5, None, 0.1)
            for m, v in methods.items() for i, f in enumerate(files) for s in (0, 1)]
    path = out / run / "reconstruction" / "test_metrics.csv"
    path.parent.mkdir(parents=True)
    MetricTable(rows).to_csv(path)


def make_doc(out: Path) -> str:
    """Run experiments/phantom_table.py on the runs under ``out``; the doc's text."""
    doc = out / "results.md"
    subprocess.run([sys.executable, str(REPO / "experiments" / "phantom_table.py"), str(out),
                    "--steps", "10", "--lr", "1e-3", "--doc", str(doc)], check=True, capture_output=True,
                   cwd=REPO)
    return doc.read_text()


def test_intervals_resample_patients(tmp_path):
    rng = np.random.default_rng(0)
    n = 2 * len(FILES)
    zf, cs = 20 + rng.standard_normal(n), 22 + rng.standard_normal(n)
    # a patient effect: slices of one patient move together, which a t-interval would miss
    meta = 24 + np.repeat(rng.standard_normal(3) * 2, 4) + 0.1 * rng.standard_normal(n)
    write(tmp_path, "eval_baselines", {"zero_filled": zf, "cs": cs})
    mask = "- mask: `Uniform1D(acceleration=4)`; effective acceleration 4.133x (W / sampled columns)"
    (tmp_path / "eval_baselines" / "reconstruction" / "test_summary.md").write_text(
        f"# test metrics\n\n{mask}\n- scaling: reference\n\n| method |\n")
    for prior, values in {"unconditional": meta - 0.5, "metadata": meta, "metadata_s0": meta - 0.2}.items():
        write(tmp_path, f"eval_{prior}_k1", {"diffusion": values})
    text = make_doc(tmp_path)
    assert "resampling the 3 test patients (6 files)" in text
    assert mask in text.splitlines() and "- scaling" not in text  # the run's mask, as evaluated
    units = np.repeat(["001", "002", "003"], 4)
    iv = paired_volume_bootstrap(meta, zf, units, n_boot=2000, seed=0)
    row = next(line for line in text.splitlines() if line.startswith("| diffusion, metadata prior (additive, s = 1), K = 1 − zero-filled"))
    assert row.split(" | ")[1:3] == [f"{iv.estimate:+.2f}", f"[{iv.lo:+.2f}, {iv.hi:+.2f}]"]
    assert row.endswith(f"| {int((meta > zf).sum())} / {n} |")
    # metadata − unconditional is +0.5 on every slice: a zero-width interval
    row = next(line for line in text.splitlines() if "K = 1 − diffusion, unconditional prior, K = 1" in line)
    assert row.split(" | ")[1:3] == ["+0.50", "[+0.50, +0.50]"]


def test_one_test_patient_gets_no_interval(tmp_path):
    """The default phantom's test split is one patient: no bootstrap interval, never NaN."""
    one = FILES[:2]  # patient 001's two files
    rng = np.random.default_rng(1)
    zf, meta = 20 + rng.standard_normal(4), 24 + rng.standard_normal(4)
    write(tmp_path, "eval_baselines", {"zero_filled": zf, "cs": zf + 1}, one)
    for prior in ("unconditional", "metadata", "metadata_s0"):
        write(tmp_path, f"eval_{prior}_k1", {"diffusion": meta}, one)
    text = make_doc(tmp_path)
    assert "nan" not in text.lower()
    assert "No intervals: the test split holds 1 patient (2 files)" in text
    row = next(line for line in text.splitlines() if line.startswith("| diffusion, metadata prior (additive, s = 1), K = 1 − zero-filled"))
    assert row.split(" | ")[1:3] == [f"{(meta - zf).mean():+.2f}", "none (1 patient)"]
