"""Per-domain timestep ranges: OOD cardiac timesteps stay in range, brain covers [0, T)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.errors import ConfigError
from metamri.training.timesteps import TimestepRangeSampler, fraction_to_timestep

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_rounding_is_half_up():
    assert fraction_to_timestep(0.75, 1000) == 750
    assert fraction_to_timestep(0.25, 10) == 3  # 2.5 rounds up (Python's round gives 2)
    assert fraction_to_timestep(0.0, 1000) == 0 and fraction_to_timestep(1.0, 1000) == 1000
    s = TimestepRangeSampler({"a": [0.0, 1.0], "b": [0.75, 1.0], "c": [0.0, 0.25], "d": [0.3335, 0.5]})
    assert s.bounds == {"a": (0, 1000), "b": (750, 1000), "c": (0, 250), "d": (334, 500)}


def test_ood_high_noise_keeps_cardiac_in_range_and_brain_everywhere():
    s = instantiate(OmegaConf.load(CONF / "timesteps" / "ood_high_noise.yaml"))
    n = 50000
    domains = ["brain", "cardiac"] * n
    t = s.sample(domains, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (2 * n,)
    brain, cardiac = t[0::2], t[1::2]
    print(f"\nbrain t in [{brain.min()}, {brain.max()}], {brain.unique().numel()} distinct; "
          f"cardiac t in [{cardiac.min()}, {cardiac.max()}], mean {cardiac.double().mean():.2f} (want 874.5)")
    assert cardiac.min() >= 750 and cardiac.max() <= 999
    assert cardiac.unique().numel() == 250  # every timestep of [750, 1000) is drawn
    assert brain.min() == 0 and brain.max() == 999 and brain.unique().numel() == 1000
    # uniform on 750..999: mean 874.5, sd sqrt((250^2 - 1) / 12)
    sd = ((250**2 - 1) / 12) ** 0.5
    assert abs(cardiac.double().mean() - 874.5) < 4 * sd / n**0.5


def test_ood_low_noise_range():
    s = instantiate(OmegaConf.load(CONF / "timesteps" / "ood_low_noise.yaml"))
    t = s.sample(["cardiac"] * 20000, torch.Generator().manual_seed(1))
    assert t.min() == 0 and t.max() == 249
    s = instantiate(OmegaConf.load(CONF / "timesteps" / "in_distribution.yaml"))
    assert s.bounds == {"brain": (0, 1000), "cardiac": (0, 1000)}


def test_sampling_is_reproducible_and_per_sample():
    s = TimestepRangeSampler({"brain": [0, 1], "cardiac": [0.75, 1]}, seed=3)
    doms = ["cardiac", "brain", "cardiac", "brain"] * 8
    a = s.sample(doms, torch.Generator().manual_seed(4))
    b = s.sample(doms, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.equal(TimestepRangeSampler({"x": [0, 1]}, seed=3).sample(["x"] * 5),
                       TimestepRangeSampler({"x": [0, 1]}, seed=3).sample(["x"] * 5))


def test_errors_name_domain_and_values():
    s = TimestepRangeSampler({"brain": [0, 1]})
    with pytest.raises(ConfigError, match="'knee'"):
        s.sample(["brain", "knee"])
    with pytest.raises(ConfigError, match=r"timesteps.ranges.cardiac"):
        TimestepRangeSampler({"cardiac": [0.8, 0.75]})
    with pytest.raises(ConfigError, match="0 <= lo < hi <= 1"):
        TimestepRangeSampler({"cardiac": [0.5, 1.2]})
    with pytest.raises(ConfigError, match="no integer timestep"):
        TimestepRangeSampler({"cardiac": [0.5, 0.5004]})
    with pytest.raises(ConfigError, match="timesteps.ranges"):
        TimestepRangeSampler({})
    assert TimestepRangeSampler({}, default=(0, 1)).bounds_of("anything") == (0, 1000)
