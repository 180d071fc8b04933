"""Seeded, per-volume metadata corruption (metamri/metadata/corruption.py) and where it acts:
exact factors, binomial missing rates, wrong categories, shuffles that are derangements, the
identity when off, validation, and the Reconstructor's order (corruption, then drop/keep)."""

from __future__ import annotations

import math
import random

import pytest

from metamri.errors import ConfigError
from metamri.evaluation import Reconstructor, evaluate_split
from metamri.evaluation.run import volume_records
from metamri.metadata import FIELDS, Metadata, MetadataCorruption
from metamri.metadata.corruption import MISSABLE_FIELDS, SCALED_FIELDS
from tests.test_reconstructor import FULL, make_module, make_sample, sampler

#: A full record: every numeric field the phantom's headers carry, three categorical fields.
RECORD = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3.0, tr=9000.0, te=86.0,
                  ti=2500.0, ti_stored=2500.0, flip_angle=150.0, field_strength=1.5, view="AX")
NAMES = [f"file_brain_AXT2_{i:04d}.h5" for i in range(2000)]


def within_binomial(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    """``k`` successes of ``n`` lie within ``sigmas`` binomial standard deviations of ``n p``."""
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# -- off is the identity --------------------------------------------------------------------------


def test_every_setting_off_is_bitwise_the_identity():
    for c in (MetadataCorruption(), MetadataCorruption(missing_rate=0.0, numeric_scale=0.0, wrong_fields=(),
                                                       shuffle=False, seed=7),
              MetadataCorruption.from_config(None), MetadataCorruption.from_config({"seed": 3})):
        assert not c.active and c.summary() == "off"
        for name in NAMES[:50]:
            assert c(RECORD, name) is RECORD
    rec = Reconstructor(FULL, ("zero_filled",), drop_fields=["te"])
    assert rec.ablate(RECORD) == rec.ablate(RECORD, "any.h5") == RECORD.without(["te"])
    assert "corrupt" not in Reconstructor(FULL, ("diffusion",), sampler=sampler(), module=make_module()).describe()


# -- numeric scale ----------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_numeric_fields_move_by_exactly_one_plus_or_minus_s(s):
    c = MetadataCorruption(numeric_scale=s, seed=1)
    signs = {name: [] for name in ("tr", "te", "ti", "flip_angle", "field_strength")}
    for fname in NAMES[:400]:
        out = c(RECORD, fname)
        for name, seen in signs.items():
            v, w = getattr(RECORD, name), getattr(out, name)
            assert w in (v * (1.0 + s), v * (1.0 - s)), (name, v, w)  # exact, not approximate
            seen.append(w > v)
        # the stored TI moves with TI, by the same factor; slice and categories never move
        assert out.ti_stored == out.ti
        assert (out.slice, out.contrast, out.sequence, out.anatomy) == (3.0, "AXFLAIR", "TurboSpinEcho", "brain")
    for name, seen in signs.items():  # the sign varies across volumes, about half up
        assert within_binomial(sum(seen), len(seen), 0.5), (name, sum(seen))
    # ... and is drawn per field: TR and TE do not always move together
    assert signs["tr"] != signs["te"]
    # missing stays missing; a product outside the valid range is clipped to it
    assert c(Metadata(tr=None, te=10.0), NAMES[0]).tr is None
    big = MetadataCorruption(numeric_scale=0.9, seed=0)
    angles = {big(Metadata(flip_angle=300.0), f).flip_angle for f in NAMES[:40]}
    assert angles == {300.0 * (1.0 - 0.9), 360.0}  # 300 * 1.9 = 570 deg lies above the valid 360


def test_scaled_fields_are_the_schema_numeric_fields_but_the_slice():
    assert "slice" not in SCALED_FIELDS and "slice" not in MISSABLE_FIELDS
    assert set(SCALED_FIELDS) == {n for n, f in FIELDS.items() if f.kind == "numeric"} - {"slice"}


# -- missing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_missing_rate_is_binomial_per_volume_and_field(rate):
    c = MetadataCorruption(missing_rate=rate, seed=2)
    present = [f for f in RECORD.present() if f in MISSABLE_FIELDS]
    lost = {f: 0 for f in present}
    first = {}
    for fname in NAMES:
        out = c(RECORD, fname)
        assert out.slice == RECORD.slice  # the slice number is never removed
        gone = tuple(f for f in present if getattr(out, f) is None)
        first[fname] = gone
        for f in gone:
            lost[f] += 1
        if "ti" in gone:
            assert out.ti_stored is None  # the companion goes with its field
    for f, k in lost.items():
        assert within_binomial(k, len(NAMES), rate), (f, k)
    total = sum(lost.values())
    assert within_binomial(total, len(NAMES) * len(present), rate)
    # the same on a second call, for every slice of a volume, and in any order of volumes
    order = NAMES[:]
    random.Random(0).shuffle(order)
    for fname in order[:300]:
        for sl in (0.0, 7.0, 11.0):
            out = c(RECORD.replace(slice=sl), fname)
            assert tuple(f for f in present if getattr(out, f) is None) == first[fname]
            assert out.slice == sl
    # a new seed draws anew; rate 1 removes every field but the slice
    other = MetadataCorruption(missing_rate=rate, seed=3)
    assert sum(other(RECORD, f).present() != c(RECORD, f).present() for f in NAMES[:200]) > 10
    assert MetadataCorruption(missing_rate=1.0)(RECORD, NAMES[0]).present() == ("slice",)


# -- wrong categories --------------------------------------------------------------------------------


def test_wrong_category_is_never_the_truth_and_is_uniform_over_the_others():
    vocab = FIELDS["contrast"].categories
    c = MetadataCorruption(wrong_fields=("contrast",), seed=0)
    drawn = []
    for i, fname in enumerate(NAMES[:1200]):
        truth = vocab[i % len(vocab)]
        out = c(RECORD.replace(contrast=truth), fname)
        assert out.contrast in vocab and out.contrast != truth
        assert out.sequence == RECORD.sequence and out.tr == RECORD.tr  # only the named field
        if truth == "AXFLAIR":
            drawn.append(out.contrast)
    for other in (v for v in vocab if v != "AXFLAIR"):  # 200 draws over 5 categories
        assert within_binomial(drawn.count(other), len(drawn), 1 / 5), (other, drawn.count(other))
    assert c(RECORD.replace(contrast=None), NAMES[0]).contrast is None  # missing stays missing
    assert c(RECORD.replace(contrast="AXPD"), NAMES[0]).contrast in vocab  # unknown -> a known one
    both = MetadataCorruption(wrong_fields=("contrast", "sequence"), seed=0)(RECORD, NAMES[5])
    assert both.contrast != RECORD.contrast and both.sequence != RECORD.sequence
    assert both.sequence in FIELDS["sequence"].categories


# -- shuffle ---------------------------------------------------------------------------------------


def volumes(n: int) -> dict[str, Metadata]:
    return {f"vol_{i:03d}.h5": RECORD.replace(tr=1000.0 + i, slice=0.0) for i in range(n)}


def test_shuffle_is_a_derangement_the_same_for_any_order():
    records = volumes(57)
    c = MetadataCorruption(shuffle=True, seed=0).with_volumes(records)
    donors = {name: c.donor(name)[0] for name in records}
    assert all(d != name for name, d in donors.items())            # nobody keeps its own header
    assert sorted(donors.values()) == sorted(records)               # a permutation: each donates once
    shuffled = dict(sorted(records.items(), key=lambda kv: random.Random(1).random()))
    again = MetadataCorruption(shuffle=True, seed=0).with_volumes(shuffled)
    assert {n: again.donor(n)[0] for n in records} == donors       # every rank, any order
    for name in list(records)[:10]:
        out = c(records[name].replace(slice=5.0), name)
        assert out == records[donors[name]].replace(slice=5.0)     # the donor's header, own slice
    other = MetadataCorruption(shuffle=True, seed=1).with_volumes(records)
    assert {n: other.donor(n)[0] for n in records} != donors
    with pytest.raises(ConfigError, match="corrupt.shuffle = True: needs at least two volumes"):
        MetadataCorruption(shuffle=True).with_volumes(volumes(1))
    with pytest.raises(ValueError, match="with_volumes"):
        MetadataCorruption(shuffle=True)(RECORD, "vol_000.h5")
    with pytest.raises(ValueError, match="not a volume of the split"):
        c(RECORD, "elsewhere.h5")


def test_evaluate_split_draws_donors_over_every_volume_of_the_dataset():
    samples = [make_sample(f"v{v}.h5", s, seed=v) for v in range(4) for s in range(2)]
    samples = [s._replace(metadata=s.metadata.replace(tr=100.0 * (1 + int(s.fname[1])))) for s in samples]
    records = volume_records(samples)
    assert list(records) == ["v0.h5", "v1.h5", "v2.h5", "v3.h5"]
    assert volume_records(samples[::-1]).keys() == records.keys()
    rec = Reconstructor(FULL, ("zero_filled",), corruption=MetadataCorruption(shuffle=True))
    evaluate_split(rec, samples, max_slices=1)  # one item evaluated, four volumes to draw from
    expected = MetadataCorruption(shuffle=True).with_volumes(records)
    assert {n: rec.corruption.donor(n)[0] for n in records} == {n: expected.donor(n)[0] for n in records}


# -- in the Reconstructor ----------------------------------------------------------------------------


def test_corruption_comes_before_drop_and_keep():
    records = volumes(3)
    shuffle = MetadataCorruption(shuffle=True).with_volumes(records)
    dropped = Reconstructor(FULL, ("zero_filled",), drop_fields=["tr"], corruption=shuffle)
    assert dropped.ablate(records["vol_000.h5"], "vol_000.h5").tr is None   # a dropped field stays dropped
    wrong = MetadataCorruption(wrong_fields=("contrast",))
    kept = Reconstructor(FULL, ("zero_filled",), keep_fields=["contrast"], corruption=wrong)
    out = kept.ablate(RECORD, "a.h5")
    assert out.present() == ("contrast",) and out.contrast != RECORD.contrast
    with pytest.raises(ValueError, match="per volume"):
        kept.ablate(RECORD)


def test_the_encoder_sees_the_corrupted_record_and_describe_says_so():
    module = make_module()
    corruption = MetadataCorruption(numeric_scale=0.3, seed=4)
    rec = Reconstructor(FULL, ("diffusion",), sampler=sampler(steps=1), module=module, corruption=corruption)
    seen = []
    context = module.context

    def spy(metas, *args, **kwargs):
        seen.append(list(metas))
        return context(metas, *args, **kwargs)

    module.context = spy
    sample = make_sample("file_a.h5", 2)
    rec(sample)
    cond, uncond = seen
    assert cond == [corruption(sample.metadata, "file_a.h5")] and cond[0].tr != sample.metadata.tr
    assert uncond == [sample.metadata]  # the unconditional half drops every field anyway
    assert rec.describe()["corrupt"] == {"missing_rate": 0.0, "numeric_scale": 0.3, "wrong_fields": [],
                                         "shuffle": False, "seed": 4}


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "says"), [
    ({"missing_rate": 1.5}, "config corrupt.missing_rate = 1.5: must be a finite number >= 0.0, <= 1.0"),
    ({"missing_rate": -0.1}, "config corrupt.missing_rate = -0.1"),
    ({"missing_rate": "half"}, "config corrupt.missing_rate = 'half'"),
    ({"numeric_scale": -0.1}, "config corrupt.numeric_scale = -0.1: must be a finite number >= 0.0, < 1.0"),
    ({"numeric_scale": 1.0}, "config corrupt.numeric_scale = 1.0"),
    ({"wrong_fields": ["nope"]}, "config corrupt.wrong_fields = ['nope']: unknown metadata field 'nope'"),
    ({"wrong_fields": ["tr"]}, "config corrupt.wrong_fields = ['tr']: 'tr' is a numeric field"),
    ({"wrong_fields": ["pathology"]}, "'pathology' is a multilabel field"),
    ({"wrong_fields": "contrast"}, "config corrupt.wrong_fields = 'contrast': must be a list of names"),
    ({"shuffle": "yes"}, "config corrupt.shuffle = 'yes': must be true or false"),
    ({"seed": 1.5}, "config corrupt.seed = 1.5"),
    ({"missing": 0.5}, "config corrupt.missing = 0.5: unknown metadata-corruption setting"),
])
def test_bad_settings_are_config_errors_naming_the_key(settings, says):
    with pytest.raises(ConfigError) as info:
        MetadataCorruption.from_config(settings)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_from_config_reads_a_hydra_node():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"missing_rate": 0.5, "numeric_scale": 0.1, "wrong_fields": ["contrast", "contrast"],
                             "shuffle": True, "seed": 2})
    c = MetadataCorruption.from_config(node)
    assert c.to_dict() == {"missing_rate": 0.5, "numeric_scale": 0.1, "wrong_fields": ["contrast"],
                           "shuffle": True, "seed": 2}
    assert c.summary() == "missing_rate=0.5, numeric_scale=0.1, wrong_fields=[contrast], shuffle, seed=2"
    assert MetadataCorruption.from_config(c) is c
