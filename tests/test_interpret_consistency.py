"""The header consistency check: paired candidate losses, ranks, rates, and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler

from metamri.analysis.information import item_noise
from metamri.errors import ConfigError
from metamri.interpret import consistency as cons
from metamri.metadata import Metadata

REPO = Path(__file__).resolve().parents[1]


class ScaleByTE(torch.nn.Module):
    """A prior whose prediction is ``te / 100 * x_t``: each candidate's loss has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))  # so the module has a device
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.num_train_timesteps = 1000

    def context(self, metas, drop=None):
        return torch.tensor([[[m.te / 100.0]] for m in metas], dtype=torch.float32)  # (K, 1, 1)

    def eps_from_context(self, x_t, t, ctx):
        return ctx.view(-1, 1, 1, 1) * x_t


def expected_losses(image: np.ndarray, tes, key: str, timesteps, n_noise: int, seed: int) -> np.ndarray:
    """The same losses, one candidate, timestep and draw at a time (float64)."""
    sched = DDPMScheduler(num_train_timesteps=1000)
    abar = sched.alphas_cumprod.double()
    x0 = torch.as_tensor(image, dtype=torch.float64)
    out = []
    for te in tes:
        total = 0.0
        for t in timesteps:
            for r in range(n_noise):
                eps = item_noise([f"{key}|{r}"], tuple(x0.shape), seed, t)[0].double()
                x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
                total += float(((eps - te / 100.0 * x_t) ** 2).mean()) / n_noise
        out.append(total / len(timesteps))
    return np.asarray(out)


def test_candidate_losses_are_paired_and_match_the_closed_form():
    image = np.random.default_rng(0).standard_normal((2, 8, 8)).astype(np.float32)
    meta = Metadata(te=90.0, contrast="AXT2")
    tes = (30.0, 60.0, 90.0)
    got = cons.candidate_losses(ScaleByTE(), image, meta, "te", tes, key="f.h5|3|-1", timesteps=[10, 400],
                                n_noise=3, seed=7)
    want = expected_losses(image, tes, "f.h5|3|-1", [10, 400], 3, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # another key draws other noise: the losses change
    other = cons.candidate_losses(ScaleByTE(), image, meta, "te", tes, key="g.h5|3|-1", timesteps=[10, 400],
                                  n_noise=3, seed=7)
    assert not np.allclose(other, got)


def test_a_prior_that_ignores_the_field_flags_nothing():
    class Ignores(ScaleByTE):
        def context(self, metas, drop=None):
            return torch.full((len(metas), 1, 1), 0.5)

    image = np.random.default_rng(1).standard_normal((2, 8, 8)).astype(np.float32)
    losses = cons.candidate_losses(Ignores(), image, Metadata(te=50.0), "te", (20.0, 50.0, 80.0), key="k",
                                   timesteps=[100], n_noise=2)
    assert losses[0] == losses[1] == losses[2]  # exactly: the same (t, eps) for every candidate
    assert cons.verdict("k", "te", 50.0, (20.0, 50.0, 80.0), losses).rank == 1


def test_verdict_ranks_and_flags():
    v = cons.verdict("k", "contrast", "AXT2", ("AXT1", "AXT2", "AXFLAIR"), np.array([0.3, 0.2, 0.1]))
    assert (v.rank, v.best, v.flagged) == (2, "AXFLAIR", True)
    assert not cons.verdict("k", "contrast", "AXT2", ("AXT1", "AXT2", "AXFLAIR"), np.array([0.3, 0.2, 0.1]),
                            flag_rank=2).flagged
    assert "ranks 2/3 (best 'AXFLAIR') FLAGGED" in v.line()


def test_rates_count_false_alarms_on_true_and_detections_on_wrong_headers():
    rows = []
    # slice a: true A is best -> no false alarm; B and C stated -> both flagged (2 of 2 detected)
    # slice b: true B, but A is best -> false alarm; stated A -> not flagged, stated C -> flagged
    for fname, true, losses in (("p1_a.h5", "A", (0.1, 0.2, 0.3)), ("p2_b.h5", "B", (0.1, 0.2, 0.3))):
        rows += [{"fname": fname, "slice": 0, "frame": -1, "true": true, "candidate": c, "loss": v}
                 for c, v in zip("ABC", losses, strict=True)]
    r = cons.rates(pd.DataFrame(rows), n_boot=200)
    assert (r.n_slices, r.n_wrong, r.n_units) == (2, 4, 2)
    assert r.false_alarm.estimate == pytest.approx(0.5)
    assert r.detection.estimate == pytest.approx(3 / 4)
    assert r.confusion == {"A": {"A": 1.0}, "B": {"A": 1.0}}
    assert cons.rates(pd.DataFrame(rows), flag_rank=2, n_boot=200).false_alarm.estimate == 0.0


def test_candidates_and_fields_are_checked():
    assert cons.candidates_with("AXT2", ["AXT1", "AXFLAIR"], "contrast") == ("AXT1", "AXFLAIR", "AXT2")
    assert cons.candidates_with(50, ["20", 50.0], "te") == (20.0, 50.0)
    with pytest.raises(ConfigError, match="candidates"):
        cons.candidates_with("AXT2", ["AXT2"], "contrast")
    with pytest.raises(ConfigError, match="not a number"):
        cons.candidates_with(50.0, ["short"], "te")
    with pytest.raises(ConfigError, match="field"):
        cons.check_field("colour")


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory) -> Path:
    from metamri.models.tiny_contextmri import write_tiny_contextmri

    return write_tiny_contextmri(tmp_path_factory.mktemp("prior") / "tiny_contextmri")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metamri.interpret", "consistency", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd),
                               "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)})


def test_file_mode_ranks_every_slice_of_a_fastmri_file(tiny_data, tiny_prior, tmp_path):
    src = sorted((tiny_data["raw"] / "brain").rglob("*.h5"))[0]
    out = tmp_path / "out"
    proc = run_cli(f"prior={tiny_prior}", f"inputs={src}", "timestep_grid=[100,300]", "n_noise=1",
                   "candidates=[AXT1,AXT2,AXFLAIR]", "espirit.backend=sigpy", "espirit.calib_size=12",
                   f"out_dir={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "consistency.json").read_text())
    n_slices = 3  # tests/conftest.py TINY_PHANTOM
    assert summary["mode"] == "file" and len(summary["verdicts"]) == n_slices
    stated = summary["verdicts"][0]["stated"]
    assert all(v["stated"] == stated for v in summary["verdicts"])  # one header per file
    assert all(1 <= v["rank"] <= v["of"] for v in summary["verdicts"])
    csv = pd.read_csv(out / "consistency.csv")
    assert len(csv) == n_slices * len({"AXT1", "AXT2", "AXFLAIR", stated})
    assert proc.stdout.count(f"contrast stated '{stated}' ranks") == n_slices


def test_a_bad_setting_is_one_line_and_no_output(tiny_prior, tmp_path):
    proc = run_cli(f"prior={tiny_prior}", "field=colour", f"out_dir={tmp_path / 'out'}",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "field" in proc.stderr and "colour" in proc.stderr
    assert not (tmp_path / "out").exists()
    unknown = subprocess.run([sys.executable, "-m", "metamri.interpret", "explain"], capture_output=True,
                             text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert unknown.returncode == 2 and "choose one of ['attention', 'consistency', 'sweep']" in unknown.stderr


def test_the_undersampled_image_is_the_adjoint_or_the_cs_reconstruction():
    """``image=zero_filled`` scores ``A^H A x`` exactly as before; ``image=cs`` the CS baseline's image."""
    from omegaconf import OmegaConf

    from metamri.interpret.consistency_cli import _undersampled_image
    from metamri.physics.masks import Uniform1D
    from metamri.physics.sense import SenseOperator
    from metamri.recon.baselines import compressed_sensing

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, 2, generator=g).double()
    x = torch.view_as_complex(x).to(torch.complex64)
    maps = torch.view_as_complex(torch.randn(4, 32, 32, 2, generator=g)).to(torch.complex64)
    maps = maps / maps.abs().square().sum(0, keepdim=True).sqrt()
    mask = torch.from_numpy(np.asarray(Uniform1D(acceleration=4)((32, 32), seed=0), dtype=bool))
    op = SenseOperator(maps, mask)
    y = op.A(x)[0]
    zf = _undersampled_image(y.numpy(), maps.numpy(), mask.numpy(), OmegaConf.create({"image": "zero_filled"}))
    np.testing.assert_allclose(zf, op.A_adjoint(op.A(x))[0].numpy(), atol=1e-6)
    cs_cfg = {"lamda": 0.01, "n_iter": 20, "backend": "sigpy", "wavelet": "db2", "cycle_spinning": False}
    cs = _undersampled_image(y.numpy(), maps.numpy(), mask.numpy(), OmegaConf.create({"image": "cs", "cs": cs_cfg}))
    np.testing.assert_allclose(cs, compressed_sensing(y.numpy(), maps.numpy(), mask.numpy(), **cs_cfg), atol=1e-6)
    assert np.abs(cs - zf).max() > 1e-2  # the CS image is another image, not the adjoint again


def test_file_mode_scores_the_cs_image_and_refuses_the_reference(tiny_data, tiny_prior, tmp_path):
    src = sorted((tiny_data["raw"] / "brain").rglob("*.h5"))[0]
    common = [f"prior={tiny_prior}", f"inputs={src}", "timestep_grid=[100]", "n_noise=1",
              "candidates=[AXT1,AXT2]", "espirit.backend=sigpy", "espirit.calib_size=12",
              "cs.backend=sigpy", "cs.n_iter=10"]
    runs = {}
    for image in ("zero_filled", "cs"):
        out = tmp_path / image
        proc = run_cli(*common, f"image={image}", f"out_dir={out}", f"hydra.run.dir={tmp_path / ('run_' + image)}",
                       cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "consistency.json").read_text())["image"] == image
        runs[image] = pd.read_csv(out / "consistency.csv")["loss"].to_numpy()
    assert not np.allclose(runs["cs"], runs["zero_filled"])  # another image was scored
    bad = run_cli(*common, "image=reference", f"out_dir={tmp_path / 'ref'}", f"hydra.run.dir={tmp_path / 'r'}",
                  cwd=tmp_path)
    assert bad.returncode == 2 and "image" in bad.stderr and "file mode" in bad.stderr
    assert not (tmp_path / "ref").exists()
