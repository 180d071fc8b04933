"""Sampling masks: line counts, centre blocks, seeding, and identity with fastMRI's masks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.errors import ConfigError
from metamri.physics.masks import (
    EquispacedFractionMask,
    FileMask,
    Gaussian1D,
    RandomMask,
    Uniform1D,
    describe_mask,
    effective_acceleration,
    seed_from_fname,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "mask"
FNAME = "file_brain_AXT2_200_2000019.h5"
WIDTHS = (320, 368, 396, 260, 97)


def test_seed_from_fname_is_stable_across_processes():
    here = seed_from_fname(FNAME)
    code = f"from metamri.physics.masks import seed_from_fname; print(seed_from_fname({FNAME!r}))"
    for hash_seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert int(out.stdout) == here
    assert here == 739015976  # golden value (first 4 bytes of SHA-256, little-endian): never change
    assert seed_from_fname("a.h5") != seed_from_fname("b.h5")


@pytest.mark.parametrize("cls", [Uniform1D, Gaussian1D, RandomMask, EquispacedFractionMask])
def test_file_name_seeds_one_mask_per_volume(cls):
    func = cls(4, 0.08)
    shape = (16, 640, 320)  # (coils, readout, phase)
    first = func(shape, seed=FNAME)
    assert first.dtype == bool and first.shape == (320,)
    for _ in range(3):  # every slice of the volume: same mask
        np.testing.assert_array_equal(func(shape, seed=FNAME), first)
    assert not np.array_equal(func(shape, seed="file_brain_AXT2_200_2000020.h5"), first)
    # seed=None draws from the object's own generator: reproducible per construction seed
    a, b = cls(4, 0.08, seed=3), cls(4, 0.08, seed=3)
    draws_a, draws_b = [a(320) for _ in range(3)], [b(320) for _ in range(3)]
    for x, y in zip(draws_a, draws_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(draws_a[0], d) for d in draws_a[1:])


@pytest.mark.parametrize("cls", [Uniform1D, Gaussian1D])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("acc", "cf"), [(4, 0.08), (8, 0.04)])
def test_contextmri_masks_line_budget_and_centre(cls, width, acc, cf):
    mask = cls(acc, cf)(width, seed=7)
    assert mask.sum() == width // acc  # exactly the budget, W // R (ContextMRI's Nsamp)
    n_center = int(width * cf)
    start = width // 2 - n_center // 2  # ContextMRI's c_from
    assert mask[start : start + n_center].all()
    assert mask[width // 2]  # DC line (fftshift centre)


def test_contextmri_with_replacement_counts():
    """ContextMRI's own draws: W//R - n_c uniform / int(1.2 W//R) Gaussian, repeats allowed."""
    w = 320
    uni = [Uniform1D(4, 0.08, with_replacement=True)(w, seed=s).sum() for s in range(300)]
    gau = [Gaussian1D(4, 0.08, with_replacement=True)(w, seed=s).sum() for s in range(300)]
    # 55 uniform draws with replacement over 320 lines, of which 25 centre lines are always on:
    # E[distinct outer] = 295 (1 - (1 - 1/320)^55) = 50.9 -> about 75.9 lines in all
    expected_uni = 25 + 295 * (1 - (1 - 1 / 320) ** 55)
    assert abs(np.mean(uni) - expected_uni) < 0.5
    assert max(uni) <= 80 and max(gau) <= 25 + 96


def test_gaussian1d_concentrates_near_dc():
    w = 320
    gauss = np.mean([Gaussian1D(4, 0.08)(w, seed=s) for s in range(200)], axis=0)
    uni = np.mean([Uniform1D(4, 0.08)(w, seed=s) for s in range(200)], axis=0)
    k = np.abs(np.arange(w) - w // 2)
    near, far = (k > 13) & (k < 40), k > 120
    assert gauss[near].mean() > 0.5 and gauss[far].mean() < 0.02
    assert abs(uni[near].mean() - uni[far].mean()) < 0.05  # uniform outside the centre
    # std of sampled outer positions close to the density's std, W * 15 / 128 = 37.5 lines
    # (the centre block removes the middle, so the empirical spread is somewhat larger)
    outer = gauss * (k > 13)
    spread = np.sqrt((outer * k**2).sum() / outer.sum())
    assert 37.5 < spread < 55


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("acc", "cf"), [(4, 0.08), (8, 0.04)])
@pytest.mark.parametrize("seed", [0, 1, 1234, FNAME, "file1000001.h5"])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(RandomMask, RandomMaskFunc), (EquispacedFractionMask, EquispacedMaskFractionFunc)],
)
def test_fastmri_masks_identical(ours, theirs, width, acc, cf, seed):
    mine = ours(acc, cf)((16, 640, width), seed=seed)
    fseed = tuple(map(ord, seed)) if isinstance(seed, str) else seed  # fastmri transforms' seed
    ref, n_low = theirs([cf], [acc])((16, 640, width, 2), seed=fseed)  # fastMRI: trailing re/im
    ref = ref.numpy().reshape(-1) > 0
    # same sampled fraction and same centre block ...
    assert mine.mean() == ref.mean()
    centre = np.zeros(width, bool)
    pad = (width - n_low + 1) // 2
    centre[pad : pad + n_low] = True
    assert mine[centre].all() and ours(acc, cf).center_block(width).tolist() == centre.tolist()
    # ... because the masks are identical (same RandomState draws)
    np.testing.assert_array_equal(mine, ref)


def test_random_mask_fraction_is_one_over_r_on_average():
    fractions = [RandomMask(4, 0.08)(368, seed=s).mean() for s in range(400)]
    assert abs(np.mean(fractions) - 0.25) < 0.005


@pytest.mark.parametrize(
    ("kwargs", "key", "value"),
    [
        ({"acceleration": 0.5}, "mask.acceleration", "0.5"),
        ({"acceleration": "fast"}, "mask.acceleration", "'fast'"),
        ({"center_fraction": 0.0}, "mask.center_fraction", "0.0"),
        ({"center_fraction": 1.2}, "mask.center_fraction", "1.2"),
        ({"acceleration": 8, "center_fraction": 0.2}, "mask.center_fraction", "0.2"),
    ],
)
@pytest.mark.parametrize("cls", [Uniform1D, Gaussian1D, RandomMask, EquispacedFractionMask])
def test_bad_config_names_key_and_value(cls, kwargs, key, value):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert key in str(err.value) and value in str(err.value)


def test_full_sampling_at_acceleration_one():
    for cls in (Uniform1D, Gaussian1D, RandomMask, EquispacedFractionMask):
        assert cls(1, 0.08)(100, seed=0).all(), cls.__name__


def test_file_mask():
    stored = np.zeros(12, dtype=np.float32)
    stored[[0, 5, 6, 7]] = 1
    fm = FileMask(stored)
    np.testing.assert_array_equal(fm((4, 8, 12), seed="x.h5"), stored > 0)
    assert fm.acceleration == 3
    with pytest.raises(ValueError, match="width 12"):
        fm(13)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("uniform1d", Uniform1D), ("gaussian1d", Gaussian1D), ("random", RandomMask),
     ("equispaced_fraction", EquispacedFractionMask)],
)
def test_hydra_configs_instantiate(name, cls):
    from metamri.preprocess.measured import MIN_ACS_LINES

    func = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert type(func) is cls and func.acceleration == 4 and func.center_fraction == 0.08
    assert func(320, seed=FNAME).sum() in range(60, 101)
    # enough centre lines for coil maps from the calibration region, at the phantom's 64 too
    assert func.min_center_lines >= MIN_ACS_LINES
    assert func(64, seed=FNAME)[32 - MIN_ACS_LINES // 2: 32 - MIN_ACS_LINES // 2 + MIN_ACS_LINES].all()


def test_uniform1d_config_is_contextmri_exact():
    """conf/mask/uniform1d.yaml is the paper's mask: draws with replacement, about 72 distinct of
    320 lines at 4x (effective 4.47x); 25 centre lines, unchanged by min_center_lines."""
    func = instantiate(OmegaConf.load(CONF / "uniform1d.yaml"))
    assert func.with_replacement
    masks = [func(320, seed=s) for s in range(400)]
    assert abs(np.mean([m.sum() for m in masks]) - 71.6) < 0.6
    assert abs(np.mean([effective_acceleration(m) for m in masks]) - 4.47) < 0.05
    plain = Uniform1D(4, 0.08, with_replacement=True)  # ContextMRI's own centre, no minimum
    for s in range(20):
        np.testing.assert_array_equal(func(320, seed=s), plain(320, seed=s))
    assert plain.center_block(320).sum() == 25


@pytest.mark.parametrize("cls", [Uniform1D, Gaussian1D, RandomMask, EquispacedFractionMask])
def test_min_center_lines_widens_only_narrow_centres(cls):
    wide = cls(4, 0.08, min_center_lines=8)
    assert wide.center_block(64).sum() == 8 and cls(4, 0.08).center_block(64).sum() == 5
    centre = wide.center_block(64)
    assert centre[32] and np.flatnonzero(centre).tolist() == list(range(28, 36))
    assert wide(64, seed=FNAME)[28:36].all()
    for width in (320, 368):  # fastMRI widths: identical masks
        np.testing.assert_array_equal(wide(width, seed=FNAME), cls(4, 0.08)(width, seed=FNAME))
    with pytest.raises(ConfigError, match="mask.min_center_lines = -1"):
        cls(4, 0.08, min_center_lines=-1)


def test_masks_describe_themselves_and_their_effective_acceleration():
    func = Uniform1D(4, 0.08, with_replacement=True, min_center_lines=8)
    assert func.describe() == {"type": "Uniform1D", "acceleration": 4.0, "center_fraction": 0.08,
                               "with_replacement": True, "min_center_lines": 8}
    assert repr(func) == describe_mask(func) == (
        "Uniform1D(acceleration=4, center_fraction=0.08, with_replacement=True, min_center_lines=8)")
    assert describe_mask(Gaussian1D(8, 0.04)).startswith("Gaussian1D(acceleration=8, center_fraction=0.04, "
                                                         "with_replacement=False, std_fraction=0.117188")
    assert describe_mask(FileMask(np.ones(4))) == "FileMask(width=4, acceleration=1)"
    m = np.zeros(10, bool)
    m[[1, 4]] = True
    assert effective_acceleration(m) == 5.0 and effective_acceleration(np.zeros(3)) == float("inf")
