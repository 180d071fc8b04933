"""``metamri.interpret.sweep``: one metadata field swept by SDEdit on a phantom slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from metamri.errors import ConfigError
from metamri.interpret.sweep import (
    CSV_COLUMNS,
    check_settings,
    correlations,
    make_slice,
    pearson,
    run_sweep,
    sdedit_grid,
    write_sweep,
)
from metamri.phantom.brain import BRAIN_COMPONENTS
from metamri.phantom.protocols import Protocol
from metamri.phantom.tissue import component_signals
from metamri.training import MetaDiffusionModule

CONF = str(Path(__file__).resolve().parents[1] / "conf")
UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
ENCODER = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
FAST = {"t_start": 40, "steps": 3}  # a few network calls of an untrained tiny UNet


@pytest.fixture(scope="module")
def module() -> MetaDiffusionModule:
    torch.manual_seed(0)
    return MetaDiffusionModule(unet=UNET, encoder=ENCODER, ema_decay=None).eval()


@pytest.fixture(scope="module")
def sweep_slice():
    return make_slice(0)


class IgnoresMetadata:
    """A prior whose context never depends on the metadata: every field always dropped."""

    def __init__(self, inner: MetaDiffusionModule) -> None:
        self.inner = inner
        self.encoder = inner.encoder
        self.noise_scheduler = inner.noise_scheduler
        self.eps_from_context = inner.eps_from_context

    def context(self, metadata, drop=None):
        return self.inner.context(metadata, self.inner.encoder.drop_all(len(metadata)))


def flair(te: float = 102.0, tr: float = 9500.0, ti: float = 2500.0) -> Protocol:
    """The study preset's AXFLAIR base protocol, written out: the middle of each range
    (TR 8000-11000, TE 78-126, TI 2200-2800, flip 130-170, echo spacing 9-11) at 2.89 T."""
    return Protocol("AXFLAIR", "TurboSpinEcho", tr=tr, te=te, ti=ti, flip=150.0, field_strength=2.89,
                    model="Skyra", echo_spacing=10.0)


def test_equation_ratios_are_those_of_component_signals(module, sweep_slice, tmp_path, one_thread):
    values = [78.0, 102.0, 126.0]
    result = run_sweep(module, "te", values, sweep_slice=sweep_slice, **FAST)
    assert result.base == flair()
    assert result.protocols == [flair(te=v) for v in values]
    for i, v in enumerate(values):
        s = component_signals(flair(te=v), BRAIN_COMPONENTS)
        assert result.ratios["eq_gm_wm"][i] == pytest.approx(abs(s["gm"]) / abs(s["wm"]), rel=1e-12)
        assert result.ratios["eq_csf_wm"][i] == pytest.approx(abs(s["csf"]) / abs(s["wm"]), rel=1e-12)
    # FLAIR: GM/WM grows with TE (GM's T2 is longer); CSF is nulled at TI 2500 ms, TR 9500 ms
    assert np.all(np.diff(result.ratios["eq_gm_wm"]) > 0)
    assert np.all(result.ratios["eq_csf_wm"] < 0.05)
    # the metadata the prior reads are what the fastMRI reader makes of the writer's header
    meta = result.metadata[0]
    assert (meta.contrast, meta.sequence, meta.te, meta.tr, meta.ti, meta.ti_stored, meta.flip_angle,
            meta.field_strength, meta.slice) == ("AXFLAIR", "TurboSpinEcho", 78.0, 9500.0, 2500.0, 2500.0,
                                                 150.0, 2.89, 2.0)

    paths = write_sweep(result, tmp_path, "some/prior")
    frame = pd.read_csv(paths["csv"])
    assert tuple(frame.columns) == CSV_COLUMNS
    np.testing.assert_allclose(frame["value"], values)
    for col in CSV_COLUMNS[1:]:
        np.testing.assert_allclose(frame[col], result.ratios[col], rtol=1e-12)
    record = json.loads(paths["json"].read_text())
    assert record["settings"]["t_start"] == 40 and record["settings"]["steps"] == 3
    assert record["settings"]["timesteps"] == [40, 20, 0]
    assert record["settings"]["base_protocol"]["te"] == 102.0
    assert set(record["correlations"]) == {"prior", "uncond"}
    assert set(record["correlations"]["prior"]) == {"gm_wm", "csf_wm", "pooled"}
    assert paths["png"].stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep_te.csv", "sweep_te.json", "sweep_te.png"]


def test_sweep_is_deterministic_and_values_change_contexts_and_images(module, sweep_slice, one_thread):
    a = run_sweep(module, "ti", [2200.0, 2800.0], seed=3, sweep_slice=sweep_slice, **FAST)
    b = run_sweep(module, "ti", [2200.0, 2800.0], seed=3, sweep_slice=sweep_slice, **FAST)
    np.testing.assert_array_equal(a.prior, b.prior)
    np.testing.assert_array_equal(a.uncond, b.uncond)
    assert a.prior.shape == (2, 2, 64, 64) and a.prior.dtype == np.float32
    # the two TI values give different contexts and different samples from the same x_t
    assert a.context_change[0] == 0.0 and a.context_change[1] > 0.0
    assert not np.array_equal(a.prior[0], a.prior[1])
    assert a.metadata[0].ti == 2200.0 and a.metadata[1].ti == 2800.0
    # the dropped-metadata control does not see the value
    np.testing.assert_array_equal(a.uncond[0], a.uncond[1])
    assert a.correlations["uncond"] == {"gm_wm": None, "csf_wm": None, "pooled": None}
    # a value's sample does not depend on the other values of the sweep
    alone = run_sweep(module, "ti", [2800.0], seed=3, sweep_slice=sweep_slice, **FAST)
    np.testing.assert_array_equal(alone.prior[0], a.prior[1])
    # another seed: other noise, other samples
    c = run_sweep(module, "ti", [2200.0, 2800.0], seed=4, sweep_slice=sweep_slice, **FAST)
    assert not np.array_equal(a.prior, c.prior)


def test_a_prior_that_ignores_metadata_gives_the_same_sample_for_every_value(module, sweep_slice, one_thread):
    result = run_sweep(IgnoresMetadata(module), "contrast", ["AXT1PRE", "AXT2", "AXFLAIR"],
                       sweep_slice=sweep_slice, **FAST)
    for i in (1, 2):
        np.testing.assert_array_equal(result.prior[i], result.prior[0])
    np.testing.assert_array_equal(result.prior, result.uncond)
    assert result.context_change == [0.0, 0.0, 0.0]
    assert len(set(result.ratios["prior_gm_wm"])) == 1
    assert result.correlations["prior"] == {"gm_wm": None, "csf_wm": None, "pooled": None}
    # ... while the signal-equation images and ratios do follow the contrast
    assert len(set(np.round(result.ratios["eq_csf_wm"], 6))) == 3
    assert not np.allclose(result.equation[0], result.equation[2])
    assert [p.sequence for p in result.protocols] == ["Flash", "TurboSpinEcho", "TurboSpinEcho"]


def test_correlations_and_grid():
    eq = {"gm_wm": [1.0, 2.0, 3.0], "csf_wm": [0.1, 0.3, 0.2]}
    assert correlations(eq, eq) == {"gm_wm": pytest.approx(1.0), "csf_wm": pytest.approx(1.0),
                                    "pooled": pytest.approx(1.0)}
    # constant over the sweep but at different levels per ratio: no agreement, not r = +-1
    flat = {"gm_wm": [0.9, 0.9, 0.9], "csf_wm": [1.1, 1.1, 1.1]}
    assert correlations(flat, eq) == {"gm_wm": None, "csf_wm": None, "pooled": None}
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert pearson([1.0], [2.0]) is None
    grid = sdedit_grid(torch.linspace(0.999, 0.01, 1000), 600, 50)
    assert int(grid.timesteps[0]) == 600 and int(grid.timesteps[-1]) == 0 and len(grid.timesteps) == 50
    assert bool((grid.timesteps[1:] < grid.timesteps[:-1]).all()) and float(grid.alpha_bar_prev[-1]) == 1.0


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"field_name": "echo_time"}, "field"),
    ({"t_start": 1000}, "t_start"),
    ({"t_start": 0}, "t_start"),
    ({"steps": 0}, "steps"),
    ({"values": []}, "values"),
    ({"values": [80, -1]}, "values"),
    ({"field_name": "contrast", "values": ["T2W"]}, "values"),
    ({"field_name": "ti", "base_contrast": "AXT2"}, "field"),
    ({"base_contrast": "FLAIR"}, "base_contrast"),
])
def test_bad_settings_are_config_errors_naming_the_key(kwargs, key):
    args = {"field_name": "te", "values": None, "t_start": 600, "steps": 50, "base_contrast": "AXFLAIR",
            "num_train_timesteps": 1000, **kwargs}
    with pytest.raises(ConfigError) as err:
        check_settings(**args)
    assert err.value.key == key


def test_cli_config_errors_name_the_key_and_write_nothing(module, tmp_path):
    from metamri.interpret.sweep_cli import sweep
    from tests.test_reconstructor import save_checkpoint

    ckpt = tmp_path / "tiny.ckpt"
    save_checkpoint(module, ckpt)

    def cfg(**extra):
        args = {"paths.output_dir": str(tmp_path / "run"), "paths.log_dir": str(tmp_path / "logs"),
                "prior": str(ckpt), "out_dir": str(tmp_path / "out"), "device": "cpu", **extra}
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose("interpret_sweep", overrides=[f"{k}={v}" for k, v in args.items()])

    assert cfg().field == "te" and cfg().t_start == 600 and cfg().base_contrast == "AXFLAIR"
    for extra, key in (({"field": "bogus"}, "field"), ({"prior": "null"}, "prior"),
                       ({"prior": str(tmp_path / "none.ckpt")}, "prior"),
                       ({"t_start": "1000"}, "t_start"), ({"steps": "-2"}, "steps"),
                       ({"values": "[]"}, "values"), ({"purity": "1.5"}, "purity"),
                       ({"device": "tpu9"}, "device")):
        with pytest.raises(ConfigError) as err:
            sweep(cfg(**extra))
        assert err.value.key == key, extra
    assert not (tmp_path / "out").exists()


def test_dispatcher_finds_the_config_and_exits_2_on_a_bad_field(tmp_path):
    import os
    import subprocess
    import sys

    prior = tmp_path / "prior.ckpt"
    prior.write_bytes(b"")  # never read: the field is checked first
    out = subprocess.run(
        [sys.executable, "-m", "metamri.interpret", "sweep", f"prior={prior}", "field=echo_time",
         f"hydra.run.dir={tmp_path / 'run'}", f"out_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=Path(CONF).parent, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr
    assert "error: config field = 'echo_time': unknown sweep field" in out.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
