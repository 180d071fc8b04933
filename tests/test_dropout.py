"""Classifier-free-guidance field dropout: measured rates match the configured ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.errors import ConfigError
from metamri.metadata import PAPER_FIELDS
from metamri.training.dropout import FieldDropout

CONF = Path(__file__).resolve().parents[1] / "conf"
N = 20000


def _within_4_sigma(measured: torch.Tensor, p: torch.Tensor, n: int) -> torch.Tensor:
    sigma = torch.sqrt(p * (1 - p) / n)
    return (measured - p).abs() <= 4 * sigma + 1e-12


def test_independent_per_field_rates():
    p = {f: 0.05 * (i + 1) for i, f in enumerate(PAPER_FIELDS)}  # 0.05 .. 0.40
    drop = FieldDropout(p=p, mode="independent").sample(N, PAPER_FIELDS, torch.Generator().manual_seed(0))
    assert drop.shape == (N, len(PAPER_FIELDS)) and drop.dtype == torch.bool
    measured = drop.double().mean(0)
    want = torch.tensor([p[f] for f in PAPER_FIELDS], dtype=torch.float64)
    z = (measured - want) / torch.sqrt(want * (1 - want) / N)
    print(f"\nindependent: configured {want.tolist()}\n measured {measured.tolist()}\n z {z.tolist()}")
    assert _within_4_sigma(measured, want, N).all()
    # independence: the pair (first, last) dropped together at p_0 p_7
    both = (drop[:, 0] & drop[:, -1]).double().mean()
    assert _within_4_sigma(both, want[0] * want[-1], N)


def test_prompt_p_adds_whole_prompt_drops():
    d = FieldDropout(p=0.1, mode="independent", prompt_p=0.1)
    drop = d.sample(N, PAPER_FIELDS, torch.Generator().manual_seed(1))
    measured = drop.double().mean(0)
    want = d.expected_rates(PAPER_FIELDS)
    torch.testing.assert_close(want, torch.full((8,), 1 - 0.9 * 0.9, dtype=torch.float64))
    all_dropped = drop.all(1).double().mean()
    want_all = torch.tensor(0.1 + 0.9 * 0.1**8, dtype=torch.float64)
    print(f"\nprompt_p: per-field {measured.tolist()} (want 0.19); all dropped {all_dropped:.4f} (want 0.1)")
    assert _within_4_sigma(measured, want, N).all()
    assert _within_4_sigma(all_dropped, want_all, N)


def test_joint_mode_drops_whole_samples():
    drop = FieldDropout(p=0.1, mode="joint").sample(N, PAPER_FIELDS, torch.Generator().manual_seed(2))
    rows_uniform = drop.all(1) | ~drop.any(1)
    assert rows_uniform.all()
    rate = drop[:, 0].double().mean()
    print(f"\njoint: prompt emptied in {rate:.4f} of samples (want 0.1)")
    assert _within_4_sigma(rate, torch.tensor(0.1, dtype=torch.float64), N)


ACQUISITION = ("sequence", "tr", "te", "ti", "flip_angle")


def test_contextmri_dropout_empties_the_prompt_or_drops_the_acquisition_block():
    """ContextMRI's training prompts: empty with p = 0.1, else the acquisition block kept with p = 0.5."""
    d = instantiate(OmegaConf.load(CONF / "dropout" / "contextmri.yaml"))
    fields = ("anatomy", "slice", "contrast", "pathology", *ACQUISITION)
    drop = d.sample(N, fields, torch.Generator().manual_seed(3))
    acq = torch.tensor([f in ACQUISITION for f in fields])
    assert (drop[:, acq].all(1) | ~drop[:, acq].any(1)).all()  # the block goes as one
    assert (drop[:, ~acq].all(1) | ~drop[:, ~acq].any(1)).all()
    assert not (drop[:, ~acq].any(1) & ~drop[:, acq].all(1)).any()  # an empty prompt has no block
    empty = drop.all(1).double().mean()
    block_only = (drop[:, acq].all(1) & ~drop[:, ~acq].any(1)).double().mean()
    kept = (~drop.any(1)).double().mean()
    print(f"\ncontextmri: empty {empty:.4f} (0.1), block dropped {block_only:.4f} (0.45), "
          f"everything kept {kept:.4f} (0.45)")
    for measured, want in ((empty, 0.1), (block_only, 0.45), (kept, 0.45)):
        assert _within_4_sigma(measured, torch.tensor(want, dtype=torch.float64), N)
    torch.testing.assert_close(d.expected_rates(fields), torch.tensor(
        [0.1] * 4 + [0.55] * 5, dtype=torch.float64))
    assert _within_4_sigma(drop.double().mean(0), d.expected_rates(fields), N).all()
    # a group's fields the encoder does not read are ignored; draws come from the generator given
    assert d.sample(8, ("anatomy",), torch.Generator().manual_seed(0)).shape == (8, 1)
    a, b = (d.sample(64, fields, torch.Generator().manual_seed(9)) for _ in range(2))
    assert torch.equal(a, b)


def test_generator_makes_masks_reproducible():
    d = FieldDropout(p=0.3, seed=5)
    a = d.sample(64, PAPER_FIELDS, torch.Generator().manual_seed(9))
    b = d.sample(64, PAPER_FIELDS, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    c, e = FieldDropout(p=0.3, seed=5).sample(64, PAPER_FIELDS), FieldDropout(p=0.3, seed=5).sample(64, PAPER_FIELDS)
    assert torch.equal(c, e)  # the owned generator, seeded from config
    assert FieldDropout(p=0.0).sample(100, PAPER_FIELDS).sum() == 0
    assert FieldDropout(p=1.0).sample(100, PAPER_FIELDS).all()
    assert FieldDropout(p=0.5).sample(3, ()).shape == (3, 0)


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="dropout.p"):
        FieldDropout(p=1.5)
    with pytest.raises(ConfigError, match="dropout.mode"):
        FieldDropout(mode="sometimes")
    with pytest.raises(ConfigError, match="joint"):
        FieldDropout(p={"te": 0.1}, mode="joint")
    with pytest.raises(ConfigError, match=r"\['tr'\]"):
        FieldDropout(p={"te": 0.1}).sample(4, ("te", "tr"))
    with pytest.raises(KeyError, match="echo_time"):
        FieldDropout(p={"echo_time": 0.1})
    with pytest.raises(ConfigError, match="dropout.groups.acq"):
        FieldDropout(groups={"acq": {"fields": ["te"]}})
    with pytest.raises(ConfigError, match=r"dropout.groups.acq.p"):
        FieldDropout(groups={"acq": {"fields": ["te"], "p": 2}})
    with pytest.raises(KeyError, match="echo_time"):
        FieldDropout(groups={"acq": {"fields": ["echo_time"], "p": 0.5}})


@pytest.mark.parametrize("name,rate", [("independent", 1 - 0.9 * 0.9), ("joint", 0.1), ("none", 0.0),
                                       ("contextmri", 0.1)])
def test_dropout_group_files_instantiate(name, rate):
    d = instantiate(OmegaConf.load(CONF / "dropout" / f"{name}.yaml"))
    assert isinstance(d, FieldDropout)
    assert math.isclose(float(d.expected_rates(PAPER_FIELDS)[0]), rate)
