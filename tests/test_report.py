"""``python -m metamri.report``: volume bootstrap, a synthetic study's tables, CSV, PNGs, W&B, CLI."""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from metamri.errors import ConfigError
from metamri.metrics.table import MetricTable
from metamri.report import make_report
from metamri.report.bootstrap import bootstrap_draws, paired_volume_bootstrap, volume_bootstrap
from metamri.report.collect import RunNotRead, WandbRuns, read_run_dir
from metamri.report.tables import load_manifest

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSV_HEADER = ["table", "row", "label", "run", "method", "metric", "n_slices", "n_volumes",
              "mean", "std", "diff_mean", "diff_lo", "diff_hi", "reference"]

# -- bootstrap ------------------------------------------------------------------------------


def test_one_slice_per_volume_approaches_the_normal_interval():
    rng = np.random.default_rng(1)
    n = 400
    b = rng.normal(30.0, 2.0, n)
    a = b + rng.normal(0.5, 1.0, n)
    iv = paired_volume_bootstrap(a, b, np.arange(n), n_boot=5000, seed=3, level=0.95)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(n)
    assert iv.estimate == pytest.approx(d.mean())
    assert (iv.n_slices, iv.n_volumes, iv.n_boot) == (n, n, 5000)
    half = 1.96 * se
    assert iv.lo == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert iv.hi == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert iv.half_width == pytest.approx(half, rel=0.08)


def test_correlated_slices_give_a_wider_interval_when_volumes_are_resampled():
    rng = np.random.default_rng(0)
    n_vol, per = 20, 10
    volume_effect = rng.normal(0.0, 1.0, n_vol)
    values = np.repeat(volume_effect, per) + rng.normal(0.0, 1e-3, n_vol * per)
    volumes = np.repeat([f"v{i}.h5" for i in range(n_vol)], per)
    by_volume = volume_bootstrap(values, volumes, n_boot=3000, seed=0)
    by_slice = volume_bootstrap(values, None, n_boot=3000, seed=0)
    assert by_volume.estimate == pytest.approx(by_slice.estimate)
    ratio = (by_volume.hi - by_volume.lo) / (by_slice.hi - by_slice.lo)
    # identical slices within a volume: 20 independent values, not 200, so ~sqrt(10) wider
    assert ratio == pytest.approx(math.sqrt(per), rel=0.25)
    assert ratio > 2.0


def test_bootstrap_is_seeded_and_owns_its_generator():
    values = np.arange(30, dtype=float) ** 1.5
    volumes = np.repeat(np.arange(10), 3)
    first = bootstrap_draws(values, volumes, n_boot=500, seed=7)
    np.random.seed(123)  # noqa: NPY002  the global state plays no part
    second = bootstrap_draws(values, volumes, n_boot=500, seed=7)
    np.testing.assert_array_equal(first, second)
    assert volume_bootstrap(values, volumes, seed=7) == volume_bootstrap(values, volumes, seed=7)
    assert not np.array_equal(first, bootstrap_draws(values, volumes, n_boot=500, seed=8))


def test_bootstrap_statistic_is_the_mean_over_the_drawn_slices():
    # volume a: 2 slices of 0, volume b: 1 slice of 3. Draws (a,a)=0, (a,b)=(b,a)=1, (b,b)=3.
    draws = bootstrap_draws(np.array([0.0, 0.0, 3.0]), np.array(["a", "a", "b"]), n_boot=2000, seed=0)
    assert set(np.round(draws, 12)) <= {0.0, 1.0, 3.0}
    assert np.mean(draws == 1.0) == pytest.approx(0.5, abs=0.05)
    single = volume_bootstrap([1.0, 2.0], ["a", "a"], n_boot=100)
    assert single.estimate == 1.5 and math.isnan(single.lo) and math.isnan(single.hi)
    with pytest.raises(ValueError, match="finite"):
        volume_bootstrap([1.0, float("nan")])


# -- a synthetic study ----------------------------------------------------------------------

# volumes a.h5 (slices 0, 1), b.h5 (0, 1, 2), c.h5 (0): six slices
KEYS = [("a.h5", 0), ("a.h5", 1), ("b.h5", 0), ("b.h5", 1), ("b.h5", 2), ("c.h5", 0)]
TEXT_PSNR = [30.0, 31.0, 32.0, 33.0, 34.0, 35.0]
TEXT_SSIM = [0.80, 0.82, 0.84, 0.86, 0.88, 0.90]
ADD_GAIN = [1.0, 1.0, 2.0, 2.0, 2.0]          # additive = text + gain; c.h5 slice missing
BASE_PSNR = [29.0, 29.5, 31.0, 31.0, 32.5, 34.0]
CS_PSNR = [25.0, 26.0, 27.0, 28.0, 29.0, 30.0]
ZF_PSNR = [20.0, 20.0, 21.0, 22.0, 23.0, 24.0]


def write_run(root: Path, name: str, methods: dict[str, tuple[list, list]], *, split="test",
              lpips: bool = True, **config) -> Path:
    """A run dir as metamri.evaluate writes it: .hydra/config.yaml and <split>_metrics.csv."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {"prior": f"/ckpt/{name}/last.ckpt", "guidance_scale": 1.0, "ensemble": 1,
           "drop_fields": [], "keep_fields": None, "split": split, "domain": "brain",
           "mask": {"_target_": "metamri.physics.masks.Uniform1D", "acceleration": 4},
           "sampler": {"_target_": "metamri.sampling.dds.DecomposedDiffusionSampler", "num_steps": 100},
           "output_subdir": "reconstruction"}
    cfg.update(config)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    table = MetricTable()
    for method, (psnrs, ssims) in methods.items():
        for (fname, sl), p, s in zip(KEYS, psnrs, ssims, strict=False):
            table.add(fname, sl, None, method, psnr=p, ssim=s, nmse=0.01,
                      lpips=(0.1 if lpips else None))
    table.to_csv(run / "reconstruction" / f"{split}_metrics.csv")
    return run


@pytest.fixture
def study(tmp_path: Path) -> dict:
    eval_root = tmp_path / "eval"
    ssim0 = [0.7] * 6
    write_run(eval_root, "x4/base", {"zero_filled": (ZF_PSNR, ssim0), "cs": (CS_PSNR, ssim0),
                                     "diffusion": (BASE_PSNR, TEXT_SSIM)}, prior="/ckpt/base")
    write_run(eval_root, "x4/text", {"diffusion": (TEXT_PSNR, TEXT_SSIM)})
    add_psnr = [t + g for t, g in zip(TEXT_PSNR, ADD_GAIN, strict=False)]
    write_run(eval_root, "x4/additive", {"diffusion": (add_psnr, TEXT_SSIM[:5])}, lpips=False)
    write_run(eval_root, "x4/additive_cfg0", {"diffusion": ([p - 1 for p in add_psnr], TEXT_SSIM[:5])},
              guidance_scale=0.0)
    write_run(eval_root, "x4/val_only", {"diffusion": (TEXT_PSNR, TEXT_SSIM)}, split="val")
    info = tmp_path / "information" / "text.csv"
    info.parent.mkdir()
    info.write_text("timestep,condition,loss_mean,loss_se,n\n"
                    + "".join(f"{t},{c},{0.1 + 0.001 * t + o},0.01,8\n"
                              for c, o in (("true", 0.0), ("dropped", 0.02), ("shuffled", 0.03))
                              for t in (0, 250, 500, 750, 999)))
    manifest = {
        "runs_root": str(eval_root),
        "split": "test",
        "metrics": ["psnr", "ssim", "lpips"],
        "bootstrap": {"n": 1000, "seed": 0, "level": 0.95},
        "tables": [
            {"id": "table1", "title": "Table 1: brain test, 4x", "reference": "text", "rows": [
                {"id": "zf", "label": "zero-filled", "run": "x4/base", "method": "zero_filled"},
                {"id": "cs", "label": "CS (L1-wavelet)", "run": "x4/base", "method": "cs"},
                {"id": "base", "label": "base prior", "run": "x4/base"},
                {"id": "text", "label": "text fine-tune", "run": "x4/text"},
                {"id": "additive", "label": "additive", "run": "x4/additive"},
            ]},
            {"id": "table2", "title": "Table 2: CFG sweep", "reference": "s1",
             "plot": {"kind": "line", "x_label": "guidance scale"}, "rows": [
                {"id": "s0", "label": "0", "run": "x4/additive_cfg0", "x": 0},
                {"id": "s1", "label": "1", "run": "x4/additive", "x": 1},
             ]},
            {"id": "table3", "title": "Table 3: bars", "reference": "text", "plot": {"kind": "bars"},
             "rows": [
                {"id": "text", "label": "text fine-tune", "run": "x4/text"},
                {"id": "base", "label": "base prior", "run": "x4/base"},
                {"id": "additive", "label": "additive", "run": "x4/additive"},
             ]},
        ],
        "information": [{"label": "text", "csv": str(info)}],
    }
    path = tmp_path / "tables.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return {"root": tmp_path, "eval": eval_root, "manifest": path, "raw": manifest}


def md_row(md: str, table_title: str, label: str) -> list[str]:
    """The cells of the row ``label`` in the table headed ``## table_title``."""
    section = md.split(f"## {table_title}\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith(f"| {label} |"):
            return [c.strip() for c in line.strip().strip("|").split(" | ")]
    raise AssertionError(f"no row {label!r} in {table_title!r}:\n{section}")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_numbers_match_hand_computation(study, tmp_path):
    out = tmp_path / "report"
    report = make_report(study["manifest"], out)
    assert report.ok, report.not_read
    md = (out / "tables.md").read_text()

    def ms(values, d):
        return f"{np.mean(values):.{d}f} ± {np.std(values, ddof=1):.{d}f}"

    text = md_row(md, "Table 1: brain test, 4x", "text fine-tune")
    # label, n slices, n volumes, PSNR, SSIM, LPIPS, then Δ PSNR, Δ SSIM, Δ LPIPS
    assert text[1:4] == ["6", "3", ms(TEXT_PSNR, 2)]
    assert text[3] == "32.50 ± 1.87"
    assert text[4] == ms(TEXT_SSIM, 4) and text[5] == "0.1000 ± 0.0000"
    assert text[6:] == ["reference"] * 3

    zf = md_row(md, "Table 1: brain test, 4x", "zero-filled")
    d_zf = np.subtract(ZF_PSNR, TEXT_PSNR)
    iv = paired_volume_bootstrap(np.array(ZF_PSNR), np.array(TEXT_PSNR), [k[0] for k in KEYS],
                                 n_boot=1000, seed=0)
    assert zf[6] == f"{d_zf.mean():+.2f} [{iv.lo:.2f}, {iv.hi:.2f}]" and zf[6].startswith("-10.83 [")
    assert iv.lo < d_zf.mean() < iv.hi

    add = md_row(md, "Table 1: brain test, 4x", "additive")
    assert add[1:3] == ["5", "2"]                                   # c.h5 slice absent
    assert add[3] == ms([t + g for t, g in zip(TEXT_PSNR, ADD_GAIN, strict=False)], 2)
    assert add[5] == "n/a"                                          # no LPIPS in that run
    assert add[6].startswith(f"{np.mean(ADD_GAIN):+.2f} [")         # +1.60 over 5 shared slices
    # two volumes: a.h5 (gain 1 on every slice) and b.h5 (2). A draw is {a,a} (1), {a,b} or
    # {b,b} (2), each of the pure ones with probability 1/4 > 2.5%: the interval is exactly [1, 2]
    lo, hi = (float(x) for x in add[6].split("[")[1].rstrip("]").split(","))
    assert (lo, hi) == (1.0, 2.0)
    assert add[8] == "n/a"
    assert "additive: psnr: Δ over the 5 slices both have (5 in this row, 6 in the reference)" in md
    assert "1000 draws resampling volumes (fname) with replacement" in md and "95%" in md

    rows = {(r["row"], r["metric"]): r for r in read_csv(out / "table1.csv")}
    r = rows[("additive", "psnr")]
    assert float(r["diff_mean"]) == pytest.approx(np.mean(ADD_GAIN))
    assert float(r["mean"]) == pytest.approx(np.mean(np.add(TEXT_PSNR[:5], ADD_GAIN)))
    assert float(r["std"]) == pytest.approx(np.std(np.add(TEXT_PSNR[:5], ADD_GAIN), ddof=1))
    assert (r["n_slices"], r["n_volumes"], r["reference"], r["method"]) == ("5", "2", "text", "diffusion")
    assert rows[("text", "psnr")]["diff_mean"] == "" and rows[("additive", "lpips")]["n_slices"] == "0"
    s = rows[("base", "ssim")]
    assert float(s["diff_mean"]) == pytest.approx(0.0, abs=1e-12)

    # Table 2 (line plot): s0 = s1 - 1 on every slice -> Δ exactly -1 with a zero-width interval
    s0 = md_row(md, "Table 2: CFG sweep", "0")
    assert s0[6] == "-1.00 [-1.00, -1.00]"
    assert "guidance_scale=0.0" in md and "mask=Uniform1D 4x" in md


def test_a_corrupted_run_says_so_in_its_setup_line(study, tmp_path):
    write_run(study["eval"], "x4/robust", {"diffusion": (TEXT_PSNR, TEXT_SSIM)},
              corrupt={"missing_rate": 0.5, "numeric_scale": 0.0, "wrong_fields": [], "shuffle": False, "seed": 0})
    study["raw"]["tables"][0]["rows"].append({"id": "robust", "label": "robust", "run": "x4/robust"})
    study["manifest"].write_text(yaml.safe_dump(study["raw"], sort_keys=False))
    make_report(study["manifest"], tmp_path / "r")
    md = (tmp_path / "r" / "tables.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("- `x4/robust`"))
    assert "ensemble=1, corrupt(missing_rate=0.5, seed=0), mask=Uniform1D 4x" in line
    assert "corrupt(" not in next(ln for ln in md.splitlines() if ln.startswith("- `x4/text`"))


def test_report_files_csv_columns_and_pngs(study, tmp_path):
    out = tmp_path / "report"
    report = make_report(study["manifest"], out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["information.png", "table1.csv", "table2.csv", "table2.png", "table3.csv",
                     "table3.png", "tables.md"]
    assert {p.name for p in report.files} == set(names)
    for tid, n_rows in (("table1", 5), ("table2", 2), ("table3", 3)):
        with open(out / f"{tid}.csv", newline="") as fh:
            lines = list(csv.reader(fh))
        assert lines[0] == CSV_HEADER
        assert len(lines) - 1 == n_rows * 3                      # rows x metrics
    for png in ("table2.png", "table3.png", "information.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        from matplotlib.image import imread

        assert imread(out / png).ndim == 3
    md = (out / "tables.md").read_text()
    assert "![table2](table2.png)" in md and "## Runs not read" in md and "All runs were read." in md


def test_missing_runs_are_named_and_fail_the_report(study, tmp_path):
    raw = study["raw"]
    raw["tables"][0]["rows"] += [
        {"id": "gone", "label": "gone", "run": "x4/never_ran"},
        {"id": "val", "label": "val only", "run": "x4/val_only"},
        {"id": "nocs", "label": "no cs", "run": "x4/text", "method": "cs"},
    ]
    raw["information"].append({"label": "concat", "csv": str(tmp_path / "nope.csv")})
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "report"
    report = make_report(study["manifest"], out)
    assert not report.ok and len(report.not_read) == 4
    md = (out / "tables.md").read_text()
    gone = md_row(md, "Table 1: brain test, 4x", "gone")
    assert gone[1].startswith("missing: ") and str(study["eval"] / "x4/never_ran") in gone[1]
    assert "no such run directory" in gone[1]
    val = md_row(md, "Table 1: brain test, 4x", "val only")
    assert "test_metrics.csv: missing (found val_metrics.csv" in val[1]
    nocs = md_row(md, "Table 1: brain test, 4x", "no cs")
    assert "no rows of method 'cs' (methods there: diffusion)" in nocs[1]
    tail = md.split("## Runs not read", 1)[1]
    for needle in ("x4/never_ran", "table1/gone", "x4/val_only", "table1/nocs", "nope.csv"):
        assert needle in tail
    # the rest is still written, and the good rows are unchanged
    assert md_row(md, "Table 1: brain test, 4x", "text fine-tune")[3] == "32.50 ± 1.87"
    assert (out / "table1.csv").exists() and (out / "information.png").exists()
    rows = [r for r in read_csv(out / "table1.csv") if r["row"] == "gone"]
    assert len(rows) == 3 and all(r["n_slices"] == "0" and r["mean"] == "" for r in rows)


def test_missing_reference_gives_na_differences(study, tmp_path):
    raw = study["raw"]
    raw["tables"] = [{"id": "t", "title": "T", "reference": "ref", "plot": {"kind": "bars"}, "rows": [
        {"id": "ref", "label": "ref", "run": "x4/never_ran"},
        {"id": "text", "label": "text", "run": "x4/text"}]}]
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    report = make_report(study["manifest"], tmp_path / "r")
    assert not report.ok
    md = (tmp_path / "r" / "tables.md").read_text()
    assert md_row(md, "T", "text")[6:] == ["n/a"] * 3
    assert "text: reference 'ref' missing" in md
    assert (tmp_path / "r" / "t.png").read_bytes()[:8] == PNG_MAGIC


def test_runs_root_is_relative_to_the_current_directory(study, tmp_path, monkeypatch):
    raw = dict(study["raw"], runs_root="eval")
    raw["information"] = [{"label": "text", "csv": "information/text.csv"}]
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "tables.yaml"          # not beside the runs: cwd decides
    manifest.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    report = make_report(manifest, "out")
    assert report.ok, report.not_read
    assert (tmp_path / "out" / "tables.md").is_file()


def test_two_references_give_two_paired_difference_groups(study, tmp_path):
    """``reference: [text, base]``: a Δ column group per reference, each paired with its own
    bootstrap interval; the CSV has one line per row x metric x reference."""
    raw = study["raw"]
    raw["tables"] = [{"id": "two", "title": "Two", "reference": ["text", "base"], "plot": {"kind": "bars"},
                      "rows": [{"id": "text", "label": "text fine-tune", "run": "x4/text"},
                               {"id": "base", "label": "base prior", "run": "x4/base"},
                               {"id": "additive", "label": "additive", "run": "x4/additive"},
                               {"id": "cfg0", "label": "CFG 0", "run": "x4/additive_cfg0"}]}]
    raw.pop("information")
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "two"
    report = make_report(study["manifest"], out)
    assert report.ok, report.not_read
    md = (out / "tables.md").read_text()
    head = next(ln for ln in md.splitlines() if ln.startswith("| row |"))
    assert head.split(" | ")[6:] == ["Δ PSNR (dB) vs text fine-tune", "Δ SSIM vs text fine-tune",
                                     "Δ LPIPS vs text fine-tune", "Δ PSNR (dB) vs base prior",
                                     "Δ SSIM vs base prior", "Δ LPIPS vs base prior |"]
    fnames = [k[0] for k in KEYS]
    add = np.add(TEXT_PSNR[:5], ADD_GAIN)

    def cell(a, b, units):
        d = np.subtract(a, b)
        iv = paired_volume_bootstrap(np.asarray(a, float), np.asarray(b, float), units, n_boot=1000, seed=0)
        assert iv.estimate == pytest.approx(d.mean())
        return f"{d.mean():+.2f} [{iv.lo:.2f}, {iv.hi:.2f}]"

    text = md_row(md, "Two", "text fine-tune")
    assert text[6:9] == ["reference"] * 3
    assert text[9] == cell(TEXT_PSNR, BASE_PSNR, fnames) and text[9].startswith("+1.33 [")
    base = md_row(md, "Two", "base prior")
    assert base[6] == cell(BASE_PSNR, TEXT_PSNR, fnames) and base[6].startswith("-1.33 [")
    assert base[9:] == ["reference"] * 3
    additive = md_row(md, "Two", "additive")
    assert additive[6] == cell(add, TEXT_PSNR[:5], fnames[:5]) and additive[6].startswith("+1.60 [")
    assert additive[9] == cell(add, BASE_PSNR[:5], fnames[:5]) and additive[9].startswith("+3.00 [")
    cfg0 = md_row(md, "Two", "CFG 0")  # additive - 1: +0.60 vs text, +2.00 vs base
    assert cfg0[6].startswith("+0.60 [") and cfg0[9].startswith("+2.00 [")
    assert "one column group per reference (text fine-tune; base prior)" in md
    assert "additive: vs base prior: psnr: Δ over the 5 slices both have (5 in this row, 6 in the reference)" in md

    lines = read_csv(out / "two.csv")
    assert len(lines) == 4 * 3 * 2  # rows x metrics x references
    rows = {(r["row"], r["metric"], r["reference"]): r for r in lines}
    assert float(rows[("additive", "psnr", "text")]["diff_mean"]) == pytest.approx(1.6)
    assert float(rows[("additive", "psnr", "base")]["diff_mean"]) == pytest.approx(
        np.mean(add - np.asarray(BASE_PSNR[:5])))
    assert float(rows[("cfg0", "psnr", "base")]["diff_mean"]) == pytest.approx(2.0)
    assert rows[("text", "psnr", "text")]["diff_mean"] == "" and rows[("base", "ssim", "base")]["diff_lo"] == ""
    assert rows[("text", "psnr", "base")]["mean"] == rows[("text", "psnr", "text")]["mean"]  # repeated
    iv = paired_volume_bootstrap(add, np.asarray(BASE_PSNR[:5]), fnames[:5], n_boot=1000, seed=0)
    r = rows[("additive", "psnr", "base")]
    assert (float(r["diff_lo"]), float(r["diff_hi"])) == pytest.approx((iv.lo, iv.hi))
    assert (out / "two.png").read_bytes()[:8] == PNG_MAGIC  # bars against the first reference


@pytest.mark.parametrize("reference, says", [
    (["text", "nope"], "'nope' is not a row id"),
    ([], "must be a row id or a non-empty list"),
    (["text", "text"], "names a row twice"),
])
def test_bad_reference_lists_name_the_key(study, reference, says):
    raw = study["raw"]
    raw["tables"][0]["reference"] = reference
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=says) as info:
        load_manifest(study["manifest"])
    assert info.value.key == "tables[0].reference"


@pytest.mark.parametrize("edit, key", [
    (lambda m: m["tables"][0].update(reference="nope"), "tables[0].reference"),
    (lambda m: m["tables"][0].update(refrence="text"), "tables[0].refrence"),
    (lambda m: m["tables"][1]["rows"][0].pop("x"), "tables[1].rows[].x"),
    (lambda m: m.update(metrics=["psnr", "fid"]), "metrics"),
    (lambda m: m["tables"][0]["rows"].append({"id": "zf", "run": "x4/base"}), "tables[0].rows[].id"),
    (lambda m: m["tables"][0]["rows"][0].update(source="s3"), "tables[0].rows[0].source"),
])
def test_bad_manifests_name_the_key(study, edit, key):
    raw = study["raw"]
    edit(raw)
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_manifest(study["manifest"])
    assert info.value.key == key
    assert str(study["manifest"]) in str(info.value)


# -- W&B ------------------------------------------------------------------------------------


class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


class FakeArtifact:
    def __init__(self, name, table, type="run_table"):
        self.name, self.type, self._table = name, type, table

    def get(self, key):
        return self._table if key == "per_slice" else None


class FakeRun:
    def __init__(self, id, name, table, state="finished", job_type="evaluate", split="test"):
        self.id, self.name, self.state, self.job_type = id, name, state, job_type
        # flat, as metamri.evaluation.wandb_log.run_config writes it
        self.config = {"split": split, "guidance_scale": 1.0, "prior": "/ckpt/x", "drop_fields": "te",
                       "mask": "Uniform1D", "acceleration": 4, "sampler": "DecomposedDiffusionSampler",
                       "num_steps": 100}
        self._arts = [FakeArtifact(f"run-{id}-per_slice:v0", table),
                      FakeArtifact(f"run-{id}-other:v0", None)]

    def logged_artifacts(self):
        return list(self._arts)


class FakeApi:
    def __init__(self, runs):
        self._runs, self.queries = runs, []

    def runs(self, path, filters=None, order=None):
        self.queries.append((path, filters, order))
        return [r for r in self._runs if r.name == filters["display_name"]]


def per_slice(psnrs):
    cols = ["fname", "slice", "frame", "method", "psnr", "ssim", "lpips", "nmse"]
    return FakeTable(cols, [[f, s, None, "diffusion", p, 0.8, None, 0.01]
                            for (f, s), p in zip(KEYS, psnrs, strict=True)])


def test_wandb_reader_reads_the_per_slice_table_and_names_missing_runs():
    api = FakeApi([FakeRun("old1", "x4/text", per_slice([0.0] * 6)),
                   FakeRun("crash", "x4/crashed", per_slice(TEXT_PSNR), state="crashed"),
                   FakeRun("tr1", "x4/train", per_slice(TEXT_PSNR), job_type="train")])
    api._runs.insert(0, FakeRun("new1", "x4/text", per_slice(TEXT_PSNR)))  # newest first
    reader = WandbRuns("lab", "metamri", api)
    run = reader.read("x4/text", "test")
    assert run.location == "wandb:lab/metamri/new1"
    assert run.method("diffusion")["psnr"].tolist() == TEXT_PSNR
    assert (run.frame["frame"] == -1).all() and run.frame["lpips"].isna().all()
    assert "2 finished W&B runs" in run.notes[0]
    assert api.queries[0] == ("lab/metamri", {"display_name": "x4/text"}, "-created_at")
    with pytest.raises(RunNotRead, match=r"wandb:lab/metamri run 'x4/absent': no evaluate run"):
        reader.read("x4/absent", "test")
    with pytest.raises(RunNotRead, match=r"'x4/crashed'.*none finished \(states: crashed\)"):
        reader.read("x4/crashed", "test")
    with pytest.raises(RunNotRead, match="another job_type"):
        reader.read("x4/train", "test")
    with pytest.raises(RunNotRead, match="evaluated split 'test'"):
        reader.read("x4/text", "val")


def test_report_from_wandb_with_a_fake_api(study, tmp_path):
    raw = study["raw"]
    raw["tables"] = [{"id": "w", "title": "W", "reference": "text", "rows": [
        {"id": "text", "label": "text", "run": "x4/text"},
        {"id": "plus1", "label": "plus one", "run": "x4/plus1"},
        {"id": "absent", "label": "absent", "run": "x4/absent"},
        {"id": "dir", "label": "from dir", "run": "x4/base", "source": "runs"}]}]
    raw.pop("information")
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    api = FakeApi([FakeRun("t1", "x4/text", per_slice(TEXT_PSNR)),
                   FakeRun("p1", "x4/plus1", per_slice([p + 1 for p in TEXT_PSNR]))])
    out = tmp_path / "w"
    report = make_report(study["manifest"], out, source="wandb", wandb_entity="lab", wandb_api=api)
    md = (out / "tables.md").read_text()
    assert md_row(md, "W", "plus one")[6] == "+1.00 [1.00, 1.00]"
    assert md_row(md, "W", "from dir")[3] == f"{np.mean(BASE_PSNR):.2f} ± {np.std(BASE_PSNR, ddof=1):.2f}"
    assert "`x4/plus1` (wandb:lab/metamri/p1): prior=/ckpt/x, guidance_scale=1.0, drop_fields=[te], " \
           "mask=Uniform1D 4x, sampler=DecomposedDiffusionSampler 100 steps" in md
    absent = md_row(md, "W", "absent")[1]
    assert absent.startswith("missing: wandb:lab/metamri run 'x4/absent'")
    assert not report.ok and "x4/absent" in md.split("## Runs not read", 1)[1]


def test_wandb_reader_takes_a_real_wandb_table():
    wandb = pytest.importorskip("wandb")
    fake = per_slice(TEXT_PSNR)
    real = wandb.Table(columns=fake.columns, data=fake.data)
    run = FakeRun("r1", "x4/real", real)
    run.config = {}
    got = WandbRuns(None, "metamri", FakeApi([run])).read("x4/real", "test")
    assert got.method("diffusion")["psnr"].tolist() == TEXT_PSNR
    assert got.location == "wandb:metamri/r1"


def test_run_dir_reader_errors_name_the_path(tmp_path):
    with pytest.raises(RunNotRead, match="no such run directory"):
        read_run_dir(tmp_path / "x", "test")
    (tmp_path / "y").mkdir()
    with pytest.raises(RunNotRead, match=r"y/.hydra/config.yaml: missing"):
        read_run_dir(tmp_path / "y", "test")
    run = write_run(tmp_path, "z", {"diffusion": (TEXT_PSNR, TEXT_SSIM)})
    (run / "reconstruction" / "test_metrics.csv").write_text("fname,slice\na.h5,0\n")
    with pytest.raises(RunNotRead, match="missing column"):
        read_run_dir(run, "test")


# -- the command ----------------------------------------------------------------------------


def test_cli_through_hydra_exit_status(study, tmp_path):
    raw = study["raw"]
    raw["tables"][0]["rows"].append({"id": "gone", "label": "gone", "run": "x4/never_ran"})
    study["manifest"].write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "metamri.report", f"manifest={study['manifest']}", f"out_dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "x4/never_ran" in proc.stderr
    md = (out / "tables.md").read_text()
    assert "missing: " in md_row(md, "Table 1: brain test, 4x", "gone")[1]
    assert (out / "table2.png").is_file() and (out / "table3.csv").is_file()
    # Hydra wrote nothing of its own: no .hydra, no log file, in the cwd or out_dir
    assert not list(tmp_path.glob("**/.hydra/hydra.yaml")) and not list(tmp_path.glob("*.log"))


def test_main_with_overrides(study, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from metamri.report.__main__ import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="report", overrides=[f"manifest={study['manifest']}",
                                                       f"out_dir={tmp_path / 'ok'}"])
        bad = compose(config_name="report", overrides=[f"manifest={tmp_path / 'none.yaml'}",
                                                       f"out_dir={tmp_path / 'bad'}"])
    assert cfg.source == "runs" and cfg.wandb.project == "metamri"
    assert run(cfg) == 0
    assert (tmp_path / "ok" / "tables.md").is_file()
    assert run(bad) == 2
    assert "config manifest" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_bootstrap_units_resample_patients_not_volumes(study, tmp_path):
    """``bootstrap.units``: volumes a.h5 and b.h5 of one patient are one unit. The additive
    row has slices of a and b only, so its paired difference has one unit and no interval
    (with volumes as units it was exactly [1, 2]); a file no pattern matches is named."""
    raw = dict(study["raw"])
    raw["bootstrap"] = {**raw["bootstrap"], "units": [r"^[ab]()", r"^(c)\.h5"]}
    path = tmp_path / "units.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    report = make_report(path, tmp_path / "report")
    md = (tmp_path / "report" / "tables.md").read_text()
    add = md_row(md, "Table 1: brain test, 4x", "additive")
    assert add[6] == f"{np.mean(ADD_GAIN):+.2f} [n/a: a single unit]"
    assert add[2] == "1"  # the count column counts units, not files
    zf = md_row(md, "Table 1: brain test, 4x", "zero-filled")  # two units: {a, b} and c
    assert "n/a" not in zf[6] and zf[2] == "2"
    assert "| row | n slices | n units |" in md
    assert "resampling units (`^[ab]()` | `^(c)\\.h5` of fname)" in md and report.ok
    # the manifest's unit_label names them
    raw["bootstrap"]["unit_label"] = "patients"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    make_report(path, tmp_path / "labelled")
    md = (tmp_path / "labelled" / "tables.md").read_text()
    assert "resampling patients (`^[ab]()` | `^(c)\\.h5` of fname)" in md
    assert "| row | n slices | n patients |" in md

    raw["bootstrap"]["units"] = [r"^[ab]()"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="c.h5"):
        make_report(path, tmp_path / "report2")
    raw["bootstrap"]["units"] = [r"^[ab]"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="needs a group"):
        make_report(path, tmp_path / "report3")


def test_a_metric_no_row_has_is_one_note_not_one_per_row(study, tmp_path):
    """Table 2's two runs have no LPIPS: one line says so, instead of a note per row."""
    add_psnr = [t + g for t, g in zip(TEXT_PSNR, ADD_GAIN, strict=False)]
    shutil.rmtree(study["eval"] / "x4/additive_cfg0")
    write_run(study["eval"], "x4/additive_cfg0", {"diffusion": ([p - 1 for p in add_psnr], TEXT_SSIM[:5])},
              guidance_scale=0.0, lpips=False)
    make_report(study["manifest"], tmp_path / "report")
    md = (tmp_path / "report" / "tables.md").read_text()
    section = md.split("## Table 2: CFG sweep\n", 1)[1].split("\n## ", 1)[0]
    assert section.count("- LPIPS: no values in any row") == 1
    assert "no slices with lpips" not in section
    table1 = md.split("## Table 1: brain test, 4x\n", 1)[1].split("\n## ", 1)[0]
    assert "no slices with lpips in both this row and the reference" in table1  # some rows have it
