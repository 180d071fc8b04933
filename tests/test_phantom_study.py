"""The phantom's presets: the ``study`` population (scaled down here) and the unchanged ``default``.

The study preset must give a metadata encoder something to learn: every volume its own
protocol, drawn over wide clinical ranges, at both field strengths, on patients whose
anatomy differs (head size and shape, slice levels, scalp, lesions, deformation).  The
default preset must stay byte for byte what it was before presets existed: the
checksums below were computed from the code before the change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from metamri.data.readers import open_volume
from metamri.errors import ConfigError
from metamri.phantom.__main__ import run
from metamri.phantom.brain import edge_occupancy, min_jacobian_determinant
from metamri.phantom.generate import (
    MANIFEST_NAME,
    brain_config,
    cardiac_config,
    generate_domain,
    iter_brain_volumes,
    iter_cine_volumes,
)
from metamri.phantom.presets import (
    PRESETS,
    STUDY_ANATOMY,
    STUDY_BRAIN_RANGES,
    STUDY_CINE_RANGES,
    get_preset,
)
from metamri.phantom.protocols import BRAIN_CONTRASTS, PLACEHOLDER_TI, sample_brain_protocol

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# scaled down: 6 patients x 3 volumes, 2 slices of 32 px, 2 coils (the full preset: 128 x 3 x 5 at 64 px)
SMALL = {"preset": "study", "patients": 6, "slices": 2, "image_size": 32, "coils": 2}
SMALL_CINE = {"preset": "study", "patients": 4, "frames": 2, "sax_slices": 1, "lax_slices": 1,
              "image_size": 32, "coils": 2}


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def study():
    return list(iter_brain_volumes(brain_config(SMALL), seed=0))


def in_range(value, bounds):
    return bounds[0] <= value <= bounds[1]


# -- the preset's definition -----------------------------------------------------------------


def test_presets_are_named_and_study_counts_are_the_documented_ones():
    assert set(PRESETS) == {"default", "study"}
    b, c = brain_config({"preset": "study"}), cardiac_config({"preset": "study"})
    assert (b.patients, b.volumes_per_patient, b.slices, b.coils, b.image_size, b.max_lesions) == (128, 3, 5, 8, 64, 6)
    assert (c.patients, c.frames, c.sax_slices, c.lax_slices, c.coils, c.image_size) == (24, 12, 6, 3, 10, 64)
    # the default preset is the dataclass defaults, and explicit keys override a preset's counts
    assert brain_config({}) == brain_config({"preset": "default"}) and brain_config({}).patients == 8
    assert brain_config({"preset": "study", "patients": 6}).patients == 6
    assert get_preset("study").dir_name == "phantom_study" and get_preset(None).dir_name == "phantom"
    with pytest.raises(ConfigError, match=r"brain\.preset = 'huge'"):
        brain_config({"preset": "huge"})
    with pytest.raises(ConfigError, match=r"cardiac\.preset"):
        cardiac_config({"preset": 3})
    json.dumps(get_preset("study").describe())  # JSON-ready


def test_full_size_study_draws_a_distinct_protocol_per_volume():
    # the protocol draws of 128 x 3 volumes (without rendering): all distinct, both fields
    rng = np.random.default_rng(0)
    tuples = set()
    for i in range(128 * 3):
        p = sample_brain_protocol(BRAIN_CONTRASTS[i % 5], rng, ranges=STUDY_BRAIN_RANGES)
        tuples.add((p.tr, p.te, p.ti, p.flip))
    assert len(tuples) == 384


# -- the scaled-down population ------------------------------------------------------------


def test_protocols_differ_per_volume_and_stay_in_range(study):
    assert len(study) == 18
    tuples = {(s.volume.protocol.tr, s.volume.protocol.te, s.volume.protocol.ti, s.volume.protocol.flip) for s in study}
    assert len(tuples) == 18  # every volume its own protocol
    for s in study:
        p = s.volume.protocol
        r = STUDY_BRAIN_RANGES[(p.contrast, p.sequence)]
        assert in_range(p.tr, r["tr"]) and in_range(p.te, r["te"]) and in_range(p.flip, r["flip"]), p
        if p.contrast == "AXFLAIR":
            assert p.ti is not None and in_range(p.ti, r["ti"]) and p.header_ti == p.ti
        else:
            assert p.ti is None and p.header_ti == PLACEHOLDER_TI[p.sequence]
        assert p.gadolinium == (p.contrast == "AXT1POST")
    # each patient: 3 different contrasts on one scanner; both field strengths in the population
    by_patient: dict[str, list] = {}
    for s in study:
        by_patient.setdefault(s.patient_id, []).append(s.volume.protocol)
    assert len(by_patient) == 6
    for prots in by_patient.values():
        assert len({p.contrast for p in prots}) == 3 and len({p.field_strength for p in prots}) == 1
    assert {p[0].field_strength for p in by_patient.values()} == {1.494, 2.89}
    # the ranges are the stated ones
    assert STUDY_BRAIN_RANGES[("AXFLAIR", "TurboSpinEcho")]["tr"] == (8000.0, 11000.0)
    assert STUDY_BRAIN_RANGES[("AXFLAIR", "TurboSpinEcho")]["ti"] == (2200.0, 2800.0)
    assert STUDY_BRAIN_RANGES[("AXT2", "TurboSpinEcho")]["te"] == (80.0, 120.0)
    assert STUDY_BRAIN_RANGES[("AXT1", "Flash")] == {"tr": (200.0, 300.0), "te": (2.0, 5.0), "flip": (60.0, 80.0)}


def test_anatomy_differs_across_patients_within_the_stated_ranges(study):
    v = STUDY_ANATOMY
    phantoms = {s.patient_id: s.phantom for s in study}
    assert len(phantoms) == 6
    desc = [p.describe() for p in phantoms.values()]
    scales = [tuple(d["pose"]["scale"]) for d in desc]
    starts = [d["template_z_mm"][0] for d in desc]
    scalp = [d["shells_mm"]["scalp_fat"] for d in desc]
    assert len(set(scales)) == len(set(starts)) == len(set(scalp)) == 6
    lo, hi = v.head_scale[0] * v.axis_scale[0], v.head_scale[1] * v.axis_scale[1]
    assert all(lo <= s <= hi for sc in scales for s in sc)
    assert any(max(sc) / min(sc) > 1.03 for sc in scales)  # anisotropic heads
    assert all(in_range(z, v.z_range_mm) for d in desc for z in d["template_z_mm"])
    for d in desc:
        sh = d["shells_mm"]
        assert in_range(sh["csf"], v.csf_mm) and in_range(sh["skull"], v.skull_mm)
        assert in_range(sh["scalp_fat"], v.scalp_fat_mm) and in_range(sh["skin"], v.skin_mm)
        assert in_range(sh["marrow_fat"], v.marrow_fat) and in_range(d["ventricle_dilation"], v.ventricle_dilation)
        assert d["pose"]["deformation_modes"] == 12 and in_range(d["slice_spacing_mm"], v.slice_spacing_mm)
        assert len(d["lesions"]) <= 6
        for les in d["lesions"]:
            assert all(in_range(r, v.lesion_radius_mm) for r in les["radii"])
    assert len({len(d["lesions"]) for d in desc}) > 1
    for ph in phantoms.values():
        assert min_jacobian_determinant(ph.pose) >= v.min_jacobian  # strong but folding-free
        assert edge_occupancy(ph.maps) <= 0.5  # the FOV holds the whole head
        assert ph.fov_mm >= v.fov_mm[0]
    # anatomy changed, physics not: same tissue components, fractions within [0, 1]
    for ph in phantoms.values():
        total = sum(ph.maps.values())
        assert total.max() <= 1.0 + 1e-5 and min(m.min() for m in ph.maps.values()) >= 0.0


def test_same_seed_identical_arrays_other_preset_differs():
    cfg = brain_config({**SMALL, "patients": 2, "volumes_per_patient": 2})
    a = [(s.name, sha(s.kspace)) for s in iter_brain_volumes(cfg, seed=3)]
    b = [(s.name, sha(s.kspace)) for s in iter_brain_volumes(cfg, seed=3)]
    assert a == b and len(a) == 4
    default = [sha(s.kspace) for s in iter_brain_volumes(brain_config({**SMALL, "patients": 2,
               "volumes_per_patient": 2, "preset": "default"}), seed=3)]
    assert not set(default) & {h for _, h in a}
    c1 = [sha(s.kspace) for s in iter_cine_volumes(cardiac_config({**SMALL_CINE, "patients": 1}), seed=3)]
    c2 = [sha(s.kspace) for s in iter_cine_volumes(cardiac_config({**SMALL_CINE, "patients": 1}), seed=3)]
    assert c1 == c2 and len(c1) == 2


def test_study_cine_protocols():
    sims = list(iter_cine_volumes(cardiac_config(SMALL_CINE), seed=0))
    assert len(sims) == 8
    prots = [s.volume.protocol for s in sims]
    assert len({(p.tr, p.te, p.flip) for p in prots}) == 8
    for p in prots:
        assert in_range(p.tr, STUDY_CINE_RANGES["tr"]) and in_range(p.flip, STUDY_CINE_RANGES["flip"])
        assert p.te == pytest.approx(p.tr / 2, abs=1e-9) and p.ti is None and p.sequence == "TrueFISP"
    assert {p.field_strength for p in prots} == {1.5, 3.0}


# -- the default is unchanged ----------------------------------------------------------------

# sha256 of the k-space arrays (and header / manifest records) of the default preset, seed 0,
# computed with the code before presets existed.
DEFAULT_BRAIN_KSPACE = {
    "file_brain_AXFLAIR_001_0000000.h5": "93ff08e362bd92915add6c4efa7edc66f5363c799eb71ffc69b4e8ba845cccef",
    "file_brain_AXT1POST_001_0000001.h5": "5ad2f62a0ff26d6e65d59c6a71f8113014bd32e689d7705c9eef6941f38e5d68",
}
DEFAULT_BRAIN_HEADER = {
    "file_brain_AXFLAIR_001_0000000.h5": "ed52fd45dbf0a100ceeda1b27706253d615324f178ef777a7e069b6feaa435e5",
    "file_brain_AXT1POST_001_0000001.h5": "79ec7741d11606ea5599f9b248f01c1b061dabad788f44b8ffaf513c2dea8822",
}
DEFAULT_BRAIN_RECORD = {  # protocol.to_dict() and phantom.describe()
    "file_brain_AXFLAIR_001_0000000.h5": "cc453d7d71e860f829feccae4406a89ccc7f415455d99e26974da19bafc69f90",
    "file_brain_AXT1POST_001_0000001.h5": "9f80aae97ea2792b090a86c909f41a0063cede53190226268d0fe0cc74b229f5",
}
DEFAULT_CINE_KSPACE = {
    ("P001", "sax"): "e2546fe73253f42b7fa1c3471713f24fc9a6c2441a743ba63a082678db1835d7",
    ("P001", "lax"): "abae3938d55760acef96b8cad605c1f59d35074e5be764f6b9874d02dc94ea0f",
}
DEFAULT_CINE_SIDECAR = {
    ("P001", "sax"): "3021eebd014bd0818c7c759332c65dde7c86c927a6f6860bc2c6af868ef54d4c",
    ("P001", "lax"): "f488bdaef2fab2c6e0324d2d07689fbc14a0390be2a2d88c9fda5bce1e92ebc8",
}


def test_default_preset_output_is_unchanged():
    # the first patient of the default dataset (8 slices, 8 coils, 64 px; patients do not
    # influence each other, so one is enough)
    for preset in ({}, {"preset": "default"}):
        sims = list(iter_brain_volumes(brain_config({"patients": 1, **preset}), seed=0))
        assert {s.name: sha(s.kspace) for s in sims} == DEFAULT_BRAIN_KSPACE
    assert {s.name: hashlib.sha256(s.header_xml().encode()).hexdigest() for s in sims} == DEFAULT_BRAIN_HEADER
    records = {
        s.name: hashlib.sha256(json.dumps({"p": s.volume.protocol.to_dict(), "a": s.phantom.describe()},
                                          sort_keys=True).encode()).hexdigest()
        for s in sims
    }
    assert records == DEFAULT_BRAIN_RECORD
    cines = list(iter_cine_volumes(cardiac_config({"patients": 1}), seed=0))
    assert {(c.patient_id, c.view): sha(c.kspace) for c in cines} == DEFAULT_CINE_KSPACE
    assert {
        (c.patient_id, c.view): hashlib.sha256(json.dumps(c.sidecar_row(), sort_keys=True).encode()).hexdigest()
        for c in cines
    } == DEFAULT_CINE_SIDECAR


# -- how a preset is chosen ------------------------------------------------------------------


def test_generate_domain_takes_the_preset_as_the_data_module_passes_it(tmp_path):
    # SliceDataModule calls generate_domain(domain, raw_dir, **data.phantom)
    phantom_kwargs = {"seed": 0, "image_size": 32, "preset": "study"}
    manifest = generate_domain("brain", tmp_path / "brain", **phantom_kwargs, patients=2,
                               volumes_per_patient=2, slices=1, coils=2)
    assert manifest["config"]["brain"]["preset"] == "study"
    on_disk = json.loads((tmp_path / "brain" / MANIFEST_NAME).read_text())
    assert on_disk["config"]["brain"]["preset"] == "study"
    files = sorted((tmp_path / "brain" / "multicoil_train").glob("*.h5"))
    assert len(files) == 4
    for path in files:
        meta = open_volume(path).volume_metadata()
        r = STUDY_BRAIN_RANGES[(meta.contrast, meta.sequence)]
        assert in_range(meta.tr, r["tr"]) and in_range(meta.te, r["te"])
        with h5py.File(path) as f:
            assert f["kspace"].shape == (1, 2, 64, 32)
    cine = generate_domain("cardiac", tmp_path / "cardiac", **phantom_kwargs, patients=1, frames=2,
                           sax_slices=1, lax_slices=0, coils=2)
    assert cine["config"]["cardiac"]["preset"] == "study"
    assert cine["files"][0]["protocol"]["te"] == pytest.approx(cine["files"][0]["protocol"]["tr"] / 2)
    # the default preset's manifest keeps its old layout (no preset key)
    plain = generate_domain("cardiac", tmp_path / "plain", seed=0, image_size=16, patients=1, frames=1,
                            sax_slices=1, lax_slices=0, coils=2)
    assert "preset" not in plain["config"]["cardiac"]


def test_hydra_preset_study_and_its_default_directory(tmp_path):
    small = ["brain.patients=1", "brain.volumes_per_patient=2", "brain.slices=1", "brain.image_size=16",
             "brain.coils=2", "cardiac.patients=1", "cardiac.frames=2", "cardiac.sax_slices=1",
             "cardiac.lax_slices=0", "cardiac.image_size=16", "cardiac.coils=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="phantom", overrides=["preset=study", f"paths.data_dir={tmp_path}", *small])
        default = compose(config_name="phantom")
    assert default.preset == "default" and default.out_dir is None
    manifest = run(cfg)
    out = tmp_path / "phantom_study"  # out_dir: null -> data_dir / the preset's directory
    assert (out / MANIFEST_NAME).is_file() and len(list((out / "brain").rglob("*.h5"))) == 2
    assert manifest["config"]["brain"]["preset"] == manifest["config"]["cardiac"]["preset"] == "study"
    assert manifest["config"]["brain"]["max_lesions"] == 6  # null keys take the preset's value
    assert manifest["config"]["cardiac"]["frames"] == 2  # explicit keys override it


def test_data_configs_point_at_the_study_directory():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        study = compose(config_name="train", overrides=["data=study", "paths.data_dir=/d"])
        mixed = compose(config_name="train", overrides=["data=study_mixed", "paths.data_dir=/d"])
    assert study.data.sources.brain == "/d/phantom_study/brain" and "cardiac" not in study.data.sources
    assert study.data.cache_dir == "/d/phantom_study/cache"
    assert dict(study.data.phantom) == {"seed": 0, "image_size": 64, "preset": "study"}
    assert study.data.preprocess.image_size == 64
    assert mixed.data.sources.brain == "/d/phantom_study/brain"
    assert mixed.data.sources.cardiac == "/d/phantom_study/cardiac"
    assert list(mixed.data.ood_ratio) == [1, 5] and mixed.data.phantom.preset == "study"
    assert mixed.data.cache_dir == "/d/phantom_study/cache"


def test_data_module_writes_and_reads_the_study_population(tmp_path):
    # the data module's own path: an empty raw dir + a `phantom:` mapping with `preset: study`
    from metamri.datamodules import SliceDataModule

    dm = SliceDataModule(
        sources={"brain": str(tmp_path / "phantom_study" / "brain")},
        cache_dir=str(tmp_path / "phantom_study" / "cache"),
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        phantom={"seed": 0, "image_size": 32, "preset": "study", "patients": 4, "volumes_per_patient": 2,
                 "slices": 1, "coils": 2},
        preprocess={"image_size": 32, "progress": False},
    )
    dm.prepare_data()
    manifest = json.loads((tmp_path / "phantom_study" / "brain" / MANIFEST_NAME).read_text())
    assert manifest["config"]["brain"]["preset"] == "study"
    dm.setup()
    metas = [m for split in ("train", "val", "test") for d in dm.datasets[split].values()
             for m in (d.metadata(i) for i in range(len(d)))]
    assert len(metas) == 8
    assert len({(m.tr, m.te, m.ti, m.flip_angle) for m in metas}) == 8
    for m in metas:
        r = STUDY_BRAIN_RANGES[(m.contrast, m.sequence)]
        assert in_range(m.tr, r["tr"]) and in_range(m.te, r["te"]) and in_range(m.flip_angle, r["flip"])
        assert (m.ti is not None) == (m.contrast == "AXFLAIR")
