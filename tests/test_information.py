"""Information curves: denoising loss per timestep with true, dropped and shuffled metadata.

Closed form (a stub prior whose prediction is exact when it is told x_0 through the
context), context-free priors (all three conditions equal), the cross-volume derangement,
config errors, and ``python -m metamri.information`` end to end on a tiny cache with a
trained-layout checkpoint (EMA) and a ContextMRI-layout diffusers prior, plus the plot.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir
from torch import nn

from metamri.analysis.information import (
    COLUMNS,
    CONDITIONS,
    check_timesteps,
    default_timesteps,
    information_curves,
    plot_information,
    volume_derangement,
)
from metamri.data.sample import ImageSample
from metamri.errors import ConfigError
from metamri.metadata import Metadata
from metamri.training import MetaDiffusionModule

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
NULL = {"_target_": "metamri.encoders.none.NullEncoder"}
FINEGRAINED = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", tr=9000, te=86,
                 ti=2500, flip_angle=150, field_strength=1.5)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors on a loaded 2-core box: one torch thread (tests/conftest.py)."""


# -- helpers ---------------------------------------------------------------------------------------
class ListDataset:
    """An in-memory dataset of ImageSamples (volume = ``fname``, as for non-cache datasets)."""

    def __init__(self, samples: list[ImageSample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> ImageSample:
        return self.samples[i]

    def metadata(self, i: int) -> Metadata:
        return self.samples[i].metadata


def te_of(v: int, s: int) -> float:
    return 50.0 + 25.0 * v + 5.0 * s


def volumes_dataset(n_volumes: int = 4, n_slices: int = 3, size: int = 8, constant: bool = False,
                    seed: int = 0) -> ListDataset:
    """``n_volumes`` x ``n_slices`` items; item (v, s) has TE ``te_of(v, s)`` and slice s.

    ``constant``: every pixel of item (v, s) is ``te / 100`` (the closed-form stub reads x_0
    back from the TE); otherwise seeded random images.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for v in range(n_volumes):
        for s in range(n_slices):
            te = te_of(v, s)
            image = (np.full((2, size, size), te / 100.0, np.float32) if constant
                     else torch.randn(2, size, size, generator=g).numpy())
            out.append(ImageSample(image, FLAIR.replace(te=te, slice=float(s)), "brain",
                                   f"vol{v}.h5", s, -1, 1.0))
    return ListDataset(out)


class StubEncoder:
    """Reads ``te`` and ``tr`` (drop-mask columns in this order); no parameters."""

    fields = ("tr", "te")

    def drop_all(self, batch_size: int) -> torch.Tensor:
        return torch.ones(batch_size, len(self.fields), dtype=torch.bool)


class ClosedFormPrior(nn.Module):
    """context = TE / 100 (0 where ``te`` is dropped), (B, 1, 1);
    eps_theta(x_t, t, c) = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t).

    On an image that is the constant a = TE / 100 this is exact with the true context, and

        loss(t) = abar_t / (1 - abar_t) * (a - c)^2

    for any other context c: 0 (true), r_t a^2 (dropped), r_t (a - a_donor)^2 (shuffled).
    """

    def __init__(self) -> None:
        super().__init__()
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.num_train_timesteps = 1000
        self.encoder = StubEncoder()

    def context(self, metadata, drop=None) -> torch.Tensor:
        c = torch.tensor([m.te / 100.0 for m in metadata], dtype=torch.float32)
        if drop is not None:
            c = torch.where(drop[:, self.encoder.fields.index("te")], torch.zeros_like(c), c)
        return c.view(-1, 1, 1)

    def eps_from_context(self, x_t, t, ctx) -> torch.Tensor:
        abar = self.noise_scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * ctx.view(-1, 1, 1, 1)) / (1 - abar).sqrt()


def module_with(encoder: dict, seed: int = 0, ema_decay: float | None = None) -> MetaDiffusionModule:
    torch.manual_seed(seed)
    return MetaDiffusionModule(unet=UNET, encoder=encoder, ema_decay=ema_decay).eval()


def rows(frame: pd.DataFrame, cond: str) -> pd.DataFrame:
    return frame[frame["condition"] == cond].sort_values("timestep").reset_index(drop=True)


# -- closed form -------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_items", [None, 7])
def test_closed_form_losses_differences_and_standard_errors(max_items):
    ds = volumes_dataset(constant=True)
    prior = ClosedFormPrior()
    ts = [0, 10, 250, 999]
    frame = information_curves(prior, ds, ts, max_items=max_items, seed=3, batch_size=5)
    assert list(frame.columns) == list(COLUMNS)
    assert [(int(t), c) for t, c in zip(frame["timestep"], frame["condition"], strict=True)] == \
        [(t, c) for t in ts for c in CONDITIONS]
    items, donors = np.array(frame.attrs["items"]), np.array(frame.attrs["donors"])
    n = 12 if max_items is None else max_items
    assert len(items) == n and (frame["n"] == n).all() and list(items) == sorted(set(items))
    # the donors are the seeded derangement of the measured items' volumes
    vols = [ds[int(i)].fname for i in items]
    assert list(donors) == list(items[volume_derangement(vols, 3)])
    assert all(ds[int(j)].fname != ds[int(i)].fname for i, j in zip(items, donors, strict=True))

    a = np.array([ds[int(i)].metadata.te / 100.0 for i in items])
    a_donor = np.array([ds[int(j)].metadata.te / 100.0 for j in donors])
    abar = prior.noise_scheduler.alphas_cumprod.double().numpy()
    per_item = {"true": lambda r: np.zeros(n), "dropped": lambda r: r * a**2,
                "shuffled": lambda r: r * (a - a_donor) ** 2}
    for cond in CONDITIONS:
        got = rows(frame, cond)
        for k, t in enumerate(ts):
            r = abar[t] / (1.0 - abar[t])
            expect = per_item[cond](r)
            se = expect.std(ddof=1) / np.sqrt(n)
            assert got.loc[k, "loss_mean"] == pytest.approx(expect.mean(), rel=1e-5, abs=1e-6), (cond, t)
            assert got.loc[k, "loss_se"] == pytest.approx(se, rel=1e-4, abs=1e-6), (cond, t)
            # paired differences to true (whose loss is 0): the condition's own values
            diff = expect - per_item["true"](r)
            assert got.loc[k, "diff_mean"] == pytest.approx(diff.mean(), rel=1e-5, abs=1e-6)
            assert got.loc[k, "diff_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(n), rel=1e-4, abs=1e-6)
    assert (rows(frame, "true")["diff_mean"] == 0).all() and (rows(frame, "true")["diff_se"] == 0).all()
    assert frame.attrs["conditional"] and frame.attrs["fields"] == ["tr", "te"]


def test_paired_noise_does_not_depend_on_batching_or_the_subset_and_leaves_global_rngs_alone():
    ds = volumes_dataset()
    module = module_with(FINEGRAINED)
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()  # noqa: NPY002
    a = information_curves(module, ds, [5, 600], seed=0, batch_size=12)
    b = information_curves(module, ds, [5, 600], seed=0, batch_size=5)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np_after = np.random.get_state()  # noqa: NPY002 - the global state must be left alone
    assert all(np.array_equal(x, y) for x, y in zip(np_after, np_state, strict=True))
    np.testing.assert_allclose(a["loss_mean"], b["loss_mean"], rtol=1e-5)
    pd.testing.assert_frame_equal(a[["timestep", "condition", "n"]], b[["timestep", "condition", "n"]])
    # an untrained fine-grained prior still reads its context: the conditions differ
    assert (rows(a, "dropped")["diff_mean"].abs() > 0).all()
    assert (rows(a, "shuffled")["diff_mean"].abs() > 0).all()
    # a different seed: other noise, other numbers
    c = information_curves(module, ds, [5, 600], seed=1, batch_size=12)
    assert not np.allclose(a["loss_mean"], c["loss_mean"])


# -- context-free priors -----------------------------------------------------------------------------
def test_prior_without_metadata_gives_identical_conditions(caplog):
    ds = volumes_dataset(n_volumes=1, n_slices=4, size=16)  # one volume: no derangement needed
    module = module_with(NULL)
    with caplog.at_level(logging.INFO, logger="metamri.analysis.information"):
        frame = information_curves(module, ds, [0, 300, 999], seed=0, batch_size=3)
    assert "reads no metadata" in caplog.text and "identical" in caplog.text
    for cond in ("dropped", "shuffled"):
        pd.testing.assert_series_equal(rows(frame, cond)["loss_mean"], rows(frame, "true")["loss_mean"])
        pd.testing.assert_series_equal(rows(frame, cond)["loss_se"], rows(frame, "true")["loss_se"])
        assert (rows(frame, cond)["diff_mean"] == 0).all()
    assert not frame.attrs["conditional"] and frame.attrs["donors"] == frame.attrs["items"]
    assert (frame["loss_mean"] > 0).all()


def test_stub_that_ignores_its_context_gives_identical_conditions():
    class Ignores(ClosedFormPrior):
        def eps_from_context(self, x_t, t, ctx):
            return 0.5 * x_t

    frame = information_curves(Ignores(), volumes_dataset(), [0, 500, 999], seed=0, batch_size=4)
    assert frame.attrs["conditional"]
    for cond in ("dropped", "shuffled"):
        assert list(rows(frame, cond)["loss_mean"]) == list(rows(frame, "true")["loss_mean"])
        assert (rows(frame, cond)["diff_mean"] == 0).all() and (rows(frame, cond)["diff_se"] == 0).all()


# -- the derangement ---------------------------------------------------------------------------------
def test_derangement_never_keeps_an_items_own_volume():
    rng = np.random.default_rng(0)
    for trial in range(40):
        sizes = rng.integers(1, 6, size=rng.integers(2, 8))
        if 2 * sizes.max() > sizes.sum():
            continue
        vols = [f"v{g}" for g, s in enumerate(sizes) for _ in range(s)]
        vols = [vols[i] for i in rng.permutation(len(vols))]
        donor = volume_derangement(vols, seed=trial)
        assert sorted(donor.tolist()) == list(range(len(vols)))  # a permutation
        assert all(vols[j] != vols[i] for i, j in enumerate(donor)), (vols, donor)
    # a volume holding exactly half of the items still works; more than half cannot
    half = ["a"] * 3 + ["b", "c", "d"]
    donor = volume_derangement(half, 0)
    assert all(half[j] != half[i] for i, j in enumerate(donor))
    with pytest.raises(ValueError, match="more than half"):
        volume_derangement(["a"] * 4 + ["b", "c", "d"], 0)
    assert volume_derangement([], 0).tolist() == []


def test_derangement_is_deterministic_for_a_seed_and_differs_between_seeds():
    vols = [v for v in range(10) for _ in range(3)]
    first = volume_derangement(vols, 7)
    assert np.array_equal(first, volume_derangement(vols, 7))
    others = {tuple(volume_derangement(vols, s)) for s in range(5)}
    assert len(others) == 5


def test_too_few_volumes_for_a_conditional_prior_is_a_config_error():
    ds = volumes_dataset(n_volumes=1, n_slices=4)
    with pytest.raises(ConfigError, match="max_items.*more than half"):
        information_curves(ClosedFormPrior(), ds, [0], seed=0)


# -- config errors -----------------------------------------------------------------------------------
def test_timestep_grid_checks():
    assert default_timesteps(1000)[0] == 0 and default_timesteps(1000)[-1] == 999
    assert len(default_timesteps(1000)) == 20
    assert check_timesteps(None, 1000) == default_timesteps(1000)
    assert check_timesteps([999, 0, 10, 10], 1000) == [0, 10, 999]
    for bad, match in (([], "empty"), ([1000], r"outside \[0, 1000\)"), ([-1], "outside"),
                       ([1.5], "not an integer"), ("100", "list"), ([True], "not an integer")):
        with pytest.raises(ConfigError, match=match) as err:
            check_timesteps(bad, 1000)
        assert err.value.key == "timesteps"
    ds, prior = volumes_dataset(), ClosedFormPrior()
    with pytest.raises(ConfigError, match="timesteps"):
        information_curves(prior, ds, [], seed=0)
    with pytest.raises(ConfigError, match="max_items"):
        information_curves(prior, ds, [0], max_items=0)
    with pytest.raises(ConfigError, match="batch_size"):
        information_curves(prior, ds, [0], batch_size=0)
    with pytest.raises(ConfigError, match="split"):
        information_curves(prior, ListDataset([]), [0])


# -- the command line, end to end --------------------------------------------------------------------
def write_volumes_cache(cache_dir: Path, n_files: int = 4, n_slices: int = 3) -> None:
    """A 16-px cache (metamri/preprocess/cache.py layout), one patient per file, TE per file."""
    from metamri.preprocess.cache import VolumeEntry, write_entry
    from tests.test_reconstructor import make_sample

    cache_dir.mkdir(parents=True, exist_ok=True)
    for v in range(n_files):
        samples = [make_sample(f"file_brain_AXFLAIR_{v}.h5", s, seed=10 * v + s) for s in range(n_slices)]
        entry = VolumeEntry(
            image=np.stack([s.image for s in samples]), maps=np.stack([s.maps for s in samples]),
            scale=np.full(n_slices, 2.5, np.float32), slice_index=np.arange(n_slices, dtype=np.int32),
            frame=np.full(n_slices, -1, np.int32), metadata=FLAIR.replace(te=80.0 + 10 * v),
            domain="brain", patient_id=f"pt{v}", fname=samples[0].fname, format="fastmri_brain",
            source={"path": "none", "size": 0, "mtime_ns": 0, "sha256": ""}, params={},
        )
        write_entry(cache_dir / f"file_brain_AXFLAIR_{v}.h5", entry)


def cli_overrides(root: Path, prior: Path, out: Path, **extra) -> list[str]:
    args = {
        "paths.output_dir": str(root / "run"), "paths.log_dir": str(root / "logs"),
        "data.cache_dir": str(root / "cache"), "data.sources.brain": str(root / "raw"),
        "data.phantom": "null", "data.split_fractions": "{train: 0.0, val: 1.0, test: 0.0}",
        "prepare_data": "false", "prior": str(prior), "split": "val", "out": str(out),
        "timestep_grid": "[0,400,999]", "batch_size": "5", "device": "cpu",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def run_cli(root: Path, prior: Path, out: Path, **extra) -> pd.DataFrame:
    from metamri.information import information

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("information", overrides=cli_overrides(root, prior, out, **extra))
    return information(cfg)


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("information")
    write_volumes_cache(root / "cache" / "brain")
    return root


def check_csv(csv: Path, timesteps: list[int], n: int) -> pd.DataFrame:
    frame = pd.read_csv(csv)
    assert list(frame.columns) == list(COLUMNS)
    assert sorted(set(frame["condition"])) == sorted(CONDITIONS)
    assert sorted(set(frame["timestep"])) == timesteps
    assert len(frame) == len(timesteps) * 3 and (frame["n"] == n).all()
    assert np.isfinite(frame[["loss_mean", "loss_se", "diff_mean", "diff_se"]].to_numpy()).all()
    return frame


def test_cli_on_a_checkpoint_without_metadata_uses_its_ema_weights(cli_root, caplog):
    from tests.test_reconstructor import save_checkpoint

    module = module_with(NULL, ema_decay=0.9)
    reference = module_with(NULL)  # the same initial weights: what the EMA holds
    module.ema  # noqa: B018 - creates the EMA of the current weights
    with torch.no_grad():  # the raw weights move away from the EMA
        for p in module.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = cli_root / "null.ckpt"
    save_checkpoint(module, ckpt)
    state = torch.load(ckpt, weights_only=False)
    state["ema"] = module.ema.state_dict()
    torch.save(state, ckpt)

    out = cli_root / "out" / "null.csv"
    with caplog.at_level(logging.INFO):
        frame = run_cli(cli_root, ckpt, out)
    assert "reads no metadata" in caplog.text
    csv = check_csv(out, [0, 400, 999], 12)
    for cond in ("dropped", "shuffled"):
        assert list(csv[csv.condition == cond]["loss_mean"]) == list(csv[csv.condition == "true"]["loss_mean"])
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prior"] == str(ckpt.resolve()) and side["split"] == "val" and side["n_items"] == 12
    assert side["seed"] == 0 and side["timesteps"] == [0, 400, 999] and side["ema"] is True
    assert side["conditional"] is False and side["csv"] == "null.csv"

    # the numbers are those of the EMA weights (the unperturbed module), not of the raw ones
    from metamri.datamodules import SliceDataModule

    dm = SliceDataModule({"brain": str(cli_root / "raw")}, str(cli_root / "cache"),
                         split_fractions={"train": 0.0, "val": 1.0, "test": 0.0})
    ds = dm.eval_dataset("val", "brain", load_maps=False)
    expect = information_curves(reference, ds, [0, 400, 999], seed=0, batch_size=5)
    np.testing.assert_allclose(frame["loss_mean"], expect["loss_mean"], rtol=1e-5)
    same = information_curves(module.eval(), ds, [0, 400, 999], seed=0, batch_size=5)
    np.testing.assert_allclose(same["loss_mean"], expect["loss_mean"], rtol=1e-5)  # its EMA too
    module.ema_decay = None  # now measured with the raw (perturbed) weights
    raw = information_curves(module, ds, [0, 400, 999], seed=0, batch_size=5)
    assert not np.allclose(raw["loss_mean"], expect["loss_mean"], rtol=1e-3)


def test_cli_on_a_diffusers_prior_and_the_plot(cli_root, tmp_path):
    from metamri.models.tiny_contextmri import write_tiny_contextmri

    prior = write_tiny_contextmri(cli_root / "tiny_contextmri")
    out = cli_root / "out" / "contextmri.csv"
    frame = run_cli(cli_root, prior, out, max_items="9", seed="2")
    csv = check_csv(out, [0, 400, 999], 9)
    assert frame.attrs["conditional"] and frame.attrs["n_volumes"] == 4
    assert (csv[csv.condition == "dropped"]["diff_mean"].abs() > 0).all()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prior"] == str(Path(prior).resolve()) and side["n_items"] == 9 and side["seed"] == 2
    assert side["max_items"] == 9 and side["split_items"] == 12
    # shuffled metadata comes from another volume (file), slice numbers with it
    from metamri.datamodules import SliceDataModule

    dm = SliceDataModule({"brain": str(cli_root / "raw")}, str(cli_root / "cache"),
                         split_fractions={"train": 0.0, "val": 1.0, "test": 0.0})
    ds = dm.eval_dataset("val", "brain", load_maps=False)
    for i, j in zip(side["items"], side["donors"], strict=True):
        assert ds.entries[ds.index[i][0]].path != ds.entries[ds.index[j][0]].path
        assert ds.metadata(j).slice == float(ds.entries[ds.index[j][0]].slice_index[ds.index[j][1]])

    entries = [{"label": "contextmri", "csv": str(out)}]
    null_csv = cli_root / "out" / "null.csv"
    if null_csv.is_file():
        entries.append({"label": "unconditional", "csv": str(null_csv)})
    png = plot_information(entries, tmp_path / "plots" / "information.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100


def test_plot_reads_a_csv_without_difference_columns(tmp_path):
    frame = pd.DataFrame([{"timestep": t, "condition": c, "loss_mean": 1.0 + t / 1000 + 0.1 * k,
                           "loss_se": 0.01, "n": 4}
                          for t in (0, 500, 999) for k, c in enumerate(CONDITIONS)])
    frame.to_csv(tmp_path / "old.csv", index=False)
    png = plot_information([{"label": "old", "csv": tmp_path / "old.csv"}], tmp_path / "p.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plotted_differences_are_percent_of_the_true_loss():
    from metamri.analysis.information import _differences

    frame = pd.DataFrame([
        {"timestep": 10, "condition": "true", "loss_mean": 0.5, "loss_se": 0.1, "n": 4,
         "diff_mean": 0.0, "diff_se": 0.0},
        {"timestep": 10, "condition": "dropped", "loss_mean": 0.51, "loss_se": 0.1, "n": 4,
         "diff_mean": 0.01, "diff_se": 0.002},
        {"timestep": 900, "condition": "true", "loss_mean": 0.001, "loss_se": 1e-4, "n": 4,
         "diff_mean": 0.0, "diff_se": 0.0},
        {"timestep": 900, "condition": "dropped", "loss_mean": 0.00095, "loss_se": 1e-4, "n": 4,
         "diff_mean": -5e-5, "diff_se": 1e-5},
    ])
    t, d, se = _differences(frame, "dropped")
    np.testing.assert_allclose(t, [10, 900])
    np.testing.assert_allclose(d, [2.0, -5.0])
    np.testing.assert_allclose(se, [0.4, 1.0])
    # without paired columns: from loss_mean, no standard error
    t, d, se = _differences(frame.drop(columns=["diff_mean", "diff_se"]), "dropped")
    np.testing.assert_allclose(d, [2.0, -5.0])
    assert np.isnan(se).all()


def test_cli_config_errors(cli_root):
    from metamri.information import information
    from tests.test_reconstructor import save_checkpoint

    ckpt = cli_root / "errors.ckpt"
    save_checkpoint(module_with(NULL), ckpt)

    def cfg(prior_path: Path | str, **extra):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose("information", overrides=cli_overrides(cli_root, prior_path,
                                                                  cli_root / "x.csv", **extra))

    for prior, extra, key, match in (
        (ckpt, {"split": "bogus"}, "split", "unknown split"),
        ("null", {}, "prior", "give the prior"),
        (ckpt, {"max_items": "0"}, "max_items", "positive"),
        (ckpt, {"batch_size": "-1"}, "batch_size", "positive"),
        (cli_root / "none.ckpt", {}, "prior", "no such checkpoint"),
        (ckpt, {"timestep_grid": "[1000]"}, "timestep_grid", r"outside \[0, 1000\)"),
        (ckpt, {"timestep_grid": "[]"}, "timestep_grid", "empty"),
        (ckpt, {"device": "tpu9"}, "device", "not a torch device"),
    ):
        with pytest.raises(ConfigError, match=match) as err:
            information(cfg(prior, **extra))
        assert err.value.key == key, (extra, err.value)
    assert not (cli_root / "x.csv").exists()


def test_cli_exits_2_with_one_line_naming_the_key_and_takes_timesteps_as_an_alias(cli_root, tmp_path):
    """``timesteps=[...]`` on the command line reaches ``timestep_grid`` (``conf/timesteps/`` is
    a config group, which Hydra would otherwise try to choose from)."""
    from tests.test_reconstructor import save_checkpoint

    ckpt = tmp_path / "null.ckpt"
    save_checkpoint(module_with(NULL), ckpt)
    args = [a for a in cli_overrides(cli_root, ckpt, tmp_path / "x.csv") if not a.startswith("timestep_grid=")]
    out = subprocess.run(
        [sys.executable, "-m", "metamri.information", *args, "timesteps=[0,1000]",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr
    assert "error: config timestep_grid = [0, 1000]: timestep 1000 lies outside [0, 1000)" in out.stderr
    assert not (tmp_path / "x.csv").exists()
