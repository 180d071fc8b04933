"""Tissue parameters, the four signal equations and protocol sampling of the phantom.

Hand-computed values are written as literals (computed with a calculator from
the formulas in DESIGN.md), so a changed formula or constant fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from metamri.metadata.rules import is_inversion_recovery
from metamri.phantom.protocols import (
    BRAIN_CONTRASTS,
    BRAIN_RANGES,
    CINE_RANGES,
    FLAIR_TI_OFFSET,
    PLACEHOLDER_TI,
    sample_brain_protocol,
    sample_cine_protocol,
)
from metamri.phantom.tissue import (
    TISSUES,
    bssfp,
    inversion_recovery,
    null_inversion_time,
    relaxation,
    sequence_signal,
    spin_echo,
    spoiled_gre,
)

# -- tissue table ---------------------------------------------------------------------------


def test_gach_power_law_values():
    # T1 = A * B0^C seconds (Gach 2008); literals from a calculator
    assert relaxation("gm", 1.5).t1 == pytest.approx(998.14, abs=0.01)  # 857 * 1.5^0.376
    assert relaxation("gm", 3.0).t1 == pytest.approx(1295.32, abs=0.01)  # 857 * 3^0.376
    assert relaxation("wm", 1.5).t1 == pytest.approx(680.67, abs=0.01)  # 583 * 1.5^0.382
    assert relaxation("wm", 3.0).t1 == pytest.approx(887.01, abs=0.01)
    assert relaxation("csf", 1.5).t1 == relaxation("csf", 3.0).t1 == pytest.approx(4200.0)
    assert relaxation("gm", 1.5).t2 == 100.0 and relaxation("wm", 3.0).t2 == 80.0
    assert relaxation("csf", 1.5).t2 == 1990.0
    assert (relaxation("gm", 1.5).pd, relaxation("wm", 1.5).pd, relaxation("csf", 1.5).pd) == (0.86, 0.77, 1.0)


def test_cardiac_table_reproduced_exactly_at_both_fields():
    assert relaxation("myocardium", 1.5).t1 == pytest.approx(1008.0)
    assert relaxation("myocardium", 3.0).t1 == pytest.approx(1220.0)
    assert relaxation("myocardium", 1.5).t2 == pytest.approx(44.0)
    assert relaxation("myocardium", 3.0).t2 == pytest.approx(47.0)
    assert relaxation("blood_pool", 1.5).t1 == pytest.approx(1441.0)
    assert relaxation("blood_pool", 3.0).t1 == pytest.approx(1932.0)
    assert relaxation("blood_pool", 3.0).t2 == pytest.approx(275.0)
    assert relaxation("blood_pool", 1.5).pd == 0.95 and relaxation("myocardium", 3.0).pd == 0.8


def test_t1_longer_at_3t_for_field_dependent_tissues():
    for name in ("gm", "wm", "fat", "blood", "myocardium", "blood_pool", "liver"):
        assert relaxation(name, 2.89).t1 > relaxation(name, 1.494).t1, name


def test_t2star_model():
    # 1/T2* = 1/T2 + 3.4/s/T * B0: GM at 3 T: 1 / (0.01 + 0.0102) = 49.5 ms
    assert relaxation("gm", 3.0).t2star == pytest.approx(49.50, abs=0.01)
    assert relaxation("gm", 1.5).t2star == pytest.approx(66.23, abs=0.01)
    for name in TISSUES:
        rel = relaxation(name, 3.0)
        assert 0 < rel.t2star < rel.t2


def test_gadolinium_shortens_t1():
    # 1/T1 = 1/T1_0 + r1 C, r1 = 4.0 /s/mM at 1.5 T: blood 0.5 mM: 1/(1/1549.55 + 0.002) = 378.02 ms
    t1_0 = relaxation("blood", 1.5).t1
    assert t1_0 == pytest.approx(1549.55, abs=0.01)  # 1350 * 1.5^0.34
    assert relaxation("blood", 1.5, gd_mM=0.5).t1 == pytest.approx(378.0, abs=0.5)
    with pytest.raises(ValueError):
        relaxation("blood", 1.5, gd_mM=-1)
    with pytest.raises(KeyError, match="unknown tissue"):
        relaxation("bone", 1.5)


# -- signal equations -----------------------------------------------------------------------


def test_spin_echo_hand_value():
    # (1 - e^-0.5) e^-0.2 = 0.39346934 * 0.81873075
    assert spin_echo(1.0, 1000.0, 100.0, tr=500.0, te=20.0) == pytest.approx(0.3221456, rel=1e-6)
    assert spin_echo(0.5, 1000.0, 100.0, tr=1e9, te=0.0) == pytest.approx(0.5)  # full recovery = PD


def test_flair_nulls_csf():
    t1 = relaxation("csf", 1.5).t1
    ti = null_inversion_time(t1, 9000.0)
    # 4200 ln(2 / (1 + e^(-9000/4200))) (calculator)
    assert ti == pytest.approx(2445.30, abs=0.01)
    assert inversion_recovery(1.0, t1, 1990.0, tr=9000.0, te=90.0, ti=ti) < 1e-12
    # at TI 2500 (fastMRI's value) CSF is small but not zero; WM is near its full signal
    csf = inversion_recovery(1.0, t1, 1990.0, tr=9000.0, te=90.0, ti=2500.0)
    wm = relaxation("wm", 1.5)
    wm_sig = inversion_recovery(wm.pd, wm.t1, wm.t2, tr=9000.0, te=90.0, ti=2500.0)
    assert csf == pytest.approx(0.013817, abs=1e-6)  # |1 - 2e^(-2500/4200) + e^(-9000/4200)| e^(-90/1990)
    assert wm_sig == pytest.approx(0.237282, abs=1e-6)
    assert csf / wm_sig < 0.06
    # signed: tissue before its null point is negative, the magnitude is the DESIGN formula
    signed = inversion_recovery(1.0, t1, 1990.0, tr=9000.0, te=90.0, ti=1000.0, signed=True)
    assert signed < 0
    assert abs(signed) == pytest.approx(inversion_recovery(1.0, t1, 1990.0, tr=9000.0, te=90.0, ti=1000.0))


def test_spoiled_gre_hand_value_and_ernst_angle():
    # a 70 deg, TR 250, T1 1000, TE 0: sin70 (1-e^-0.25) / (1 - cos70 e^-0.25)
    #   = 0.9396926 * 0.2211992 / (1 - 0.2663656) = 0.2833281
    assert spoiled_gre(1.0, 1000.0, 50.0, tr=250.0, te=0.0, flip=70.0) == pytest.approx(0.2833281, rel=1e-6)
    # T2* decay at TE
    assert spoiled_gre(1.0, 1000.0, 50.0, tr=250.0, te=5.0, flip=70.0) == pytest.approx(
        0.2833281 * math.exp(-0.1), rel=1e-6
    )
    # the signal peaks at the Ernst angle arccos(e^(-TR/T1)) (12.8 deg for TR/T1 = 0.025)
    flips = np.linspace(0.1, 90, 9000)
    sig = spoiled_gre(1.0, 1000.0, 50.0, tr=25.0, te=0.0, flip=flips)
    assert flips[np.argmax(sig)] == pytest.approx(math.degrees(math.acos(math.exp(-0.025))), abs=0.02)


def test_bssfp_matches_design_formula_and_optimum():
    t1, t2, tr = 1441.0, 290.0, 3.6
    e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
    a = math.radians(50)
    design = 0.95 * math.sin(a) * (1 - e1) * math.sqrt(e2) / (1 - (e1 - e2) * math.cos(a) - e1 * e2)
    assert bssfp(0.95, t1, t2, tr=tr, flip=50.0) == pytest.approx(design, rel=1e-12)
    assert design == pytest.approx(0.212927, abs=1e-6)  # calculator
    # TR << T1, T2: maximum over flip is PD/2 sqrt(T2/T1) at cos a = (T1/T2 - 1)/(T1/T2 + 1)
    flips = np.linspace(1, 90, 8901)
    sig = bssfp(1.0, t1, t2, tr=0.01, flip=flips, te=0.0)
    assert sig.max() == pytest.approx(0.5 * math.sqrt(t2 / t1), rel=1e-3)
    ratio = t1 / t2
    assert flips[np.argmax(sig)] == pytest.approx(math.degrees(math.acos((ratio - 1) / (ratio + 1))), abs=0.05)


def test_sequence_signal_dispatch():
    rel = relaxation("wm", 1.5)
    assert sequence_signal(rel, sequence="TurboSpinEcho", tr=500, te=10, flip=150) == pytest.approx(
        spin_echo(rel.pd, rel.t1, rel.t2, tr=500, te=10)
    )
    assert sequence_signal(rel, sequence="Flash", tr=250, te=2.5, flip=70) == pytest.approx(
        spoiled_gre(rel.pd, rel.t1, rel.t2star, tr=250, te=2.5, flip=70)
    )
    with pytest.raises(ValueError, match="unknown sequence"):
        sequence_signal(rel, sequence="EPI", tr=1, te=1, flip=1)


# -- protocols ------------------------------------------------------------------------------


@pytest.mark.parametrize("contrast", BRAIN_CONTRASTS)
def test_brain_protocols_in_range(contrast):
    rng = np.random.default_rng(1)
    seqs = set()
    for _ in range(200):
        p = sample_brain_protocol(contrast, rng)
        seqs.add(p.sequence)
        r = BRAIN_RANGES[(contrast, p.sequence)]
        assert r["tr"][0] <= p.tr <= r["tr"][1]
        assert r["te"][0] <= p.te <= r["te"][1]
        assert r["flip"][0] <= p.flip <= r["flip"][1]
        assert p.field_strength in (1.494, 2.89)
        assert p.gadolinium == (contrast == "AXT1POST")
        if contrast == "AXFLAIR":
            null = null_inversion_time(4200.0, p.tr)
            assert null + FLAIR_TI_OFFSET[0] - 0.5 <= p.ti <= null + FLAIR_TI_OFFSET[1] + 0.5
            assert p.header_ti == p.ti and 2300 < p.ti < 2650
        else:
            assert p.ti is None
            assert p.header_ti == PLACEHOLDER_TI[p.sequence]  # 100 TSE / 300 FLASH, as fastMRI
        # the reader's IR rule agrees with the protocol
        assert is_inversion_recovery(contrast, p.protocol_name, p.sequence) == p.inversion
    expected = {s for (c, s) in BRAIN_RANGES if c == contrast}
    assert seqs == expected


def test_cine_protocol_in_range():
    rng = np.random.default_rng(2)
    protocols = [sample_cine_protocol(rng) for _ in range(300)]
    for p in protocols:
        assert p.sequence == "TrueFISP" and p.contrast == "CINE" and p.ti is None
        assert CINE_RANGES["tr"][0] <= p.tr <= CINE_RANGES["tr"][1]
        assert CINE_RANGES["te"][0] <= p.te <= CINE_RANGES["te"][1] and p.te <= p.tr / 2
        assert CINE_RANGES["flip"][0] <= p.flip <= CINE_RANGES["flip"][1]
        assert p.field_strength in (1.5, 3.0)
    assert {p.field_strength for p in protocols} == {1.5, 3.0}
    assert np.ptp([p.flip for p in protocols]) > 40


def test_protocol_sampling_is_seeded():
    a = [sample_brain_protocol("AXT1", np.random.default_rng(7)) for _ in range(3)]
    b = [sample_brain_protocol("AXT1", np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    with pytest.raises(ValueError, match="unknown brain contrast"):
        sample_brain_protocol("AXPD", np.random.default_rng(0))
    with pytest.raises(ValueError, match="not acquired with"):
        sample_brain_protocol("AXT2", np.random.default_rng(0), sequence="Flash")
