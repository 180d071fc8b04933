"""The phantom written as a dataset: formats, fastMRI's own reader, metadata, determinism, Hydra."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import fastmri
import fastmri.data.transforms as T
import h5py
import numpy as np
import pytest
from fastmri.data import SliceDataset
from hydra import compose, initialize_config_dir

from metamri.data.ismrmrd_header import parse_header
from metamri.data.readers import open_volume
from metamri.errors import ConfigError
from metamri.phantom.__main__ import run
from metamri.phantom.generate import (
    MANIFEST_NAME,
    brain_config,
    cardiac_config,
    generate_dataset,
    generate_domain,
    iter_brain_volumes,
    iter_cine_volumes,
)
from metamri.phantom.protocols import BRAIN_RANGES, CINE_RANGES, PLACEHOLDER_TI
from metamri.physics.fft import center_crop, ifft2c_np

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
BRAIN = {"patients": 3, "volumes_per_patient": 2, "slices": 3, "coils": 4, "image_size": 32, "max_lesions": 1}
CARDIAC = {"patients": 2, "frames": 4, "sax_slices": 3, "lax_slices": 2, "coils": 4, "image_size": 32}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    manifest = generate_dataset(out, seed=0, brain=BRAIN, cardiac=CARDIAC, noise={"snr": 20.0})
    return out, manifest


def brain_files(out: Path) -> list[Path]:
    return sorted((out / "brain" / "multicoil_train").glob("*.h5"))


def cine_files(out: Path) -> list[Path]:
    return sorted((out / "cardiac").rglob("*.mat"))


def test_layout_and_manifest(dataset):
    out, manifest = dataset
    assert len(brain_files(out)) == 6 and len(cine_files(out)) == 4
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    assert on_disk["files"] == json.loads(json.dumps(manifest["files"]))
    listed = {f["path"] for f in manifest["files"]}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    assert listed == written
    assert on_disk["config"]["brain"]["image_size"] == 32 and on_disk["config"]["cardiac"]["snr"] == 20.0
    names = [p.name for p in brain_files(out)]
    assert all(n.startswith("file_brain_AX") and n.endswith(".h5") for n in names)
    # each patient's volumes are different contrasts on the same scanner
    by_patient: dict[str, list[dict]] = {}
    for rec in manifest["files"]:
        if rec["domain"] == "brain":
            by_patient.setdefault(rec["patient_id"], []).append(rec)
    assert len(by_patient) == 3
    for recs in by_patient.values():
        assert len({r["acquisition"] for r in recs}) == 2
        assert len({r["protocol"]["field_strength"] for r in recs}) == 1
        assert len({json.dumps(r["anatomy"], sort_keys=True) for r in recs}) == 1
    assert (out / "cardiac/MultiCoil/Cine/TrainingSet/FullSample/P002/cine_lax.mat").is_file()


def test_fastmri_slicedataset_reads_the_brain_files(dataset):
    out, _ = dataset
    ds = SliceDataset(out / "brain" / "multicoil_train", challenge="multicoil")
    assert len(ds) == 6 * 3
    worst = 0.0
    for i in range(len(ds)):
        kspace, mask, target, attrs, fname, _ = ds[i]
        assert kspace.shape == (4, 64, 32) and mask is None
        assert attrs["encoding_size"] == (64, 32, 1) and attrs["recon_size"] == (32, 32, 1)
        assert attrs["padding_left"] == 0 and attrs["padding_right"] == 32
        image = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(T.to_tensor(kspace))), dim=0)
        rss = T.center_crop(image, attrs["recon_size"][:2]).numpy()
        worst = max(worst, float(np.abs(rss - target).max() / target.max()))
        assert attrs["max"] == pytest.approx(float(h5py.File(ds.raw_samples[i].fname)["reconstruction_rss"][:].max()))
    assert worst < 1e-5  # measured 2.3e-7 (float32 round-off)


def test_open_volume_reads_everything_with_metadata_in_range(dataset):
    out, manifest = dataset
    for path in brain_files(out):
        vol = open_volume(path)
        meta = vol.volume_metadata()
        assert vol.num_slices == 3 and vol.recon_size == (32, 32)
        assert meta.anatomy == "brain" and meta.view == "AX"
        r = BRAIN_RANGES[(meta.contrast, meta.sequence)]
        assert r["tr"][0] <= meta.tr <= r["tr"][1] and r["te"][0] <= meta.te <= r["te"][1]
        assert r["flip"][0] <= meta.flip_angle <= r["flip"][1]
        assert meta.field_strength in (1.494, 2.89)
        with h5py.File(path) as f:
            hdr = parse_header(f["ismrmrd_header"][()])
            assert f.attrs["acquisition"] == meta.contrast
        assert hdr.receiver_channels == 4 and hdr.vendor == "SIEMENS"
        assert hdr.ky_center == 16 and hdr.ky_maximum == 31 and hdr.num_slices == 3
        assert hdr.protocol_name.startswith("AX ")
        fov = hdr.recon_fov_mm
        assert 230 <= fov[0] <= 250 and hdr.encoded_fov_mm[0] == pytest.approx(2 * fov[0])
        if meta.contrast == "AXFLAIR":
            assert 2350 < meta.ti < 2600 and hdr.ti == meta.ti
        else:  # the placeholder is in the header and the reader discards it
            assert meta.ti is None and hdr.ti == PLACEHOLDER_TI[meta.sequence]
        item = vol[1]
        assert item.kspace.shape == (4, 64, 32) and item.kspace.dtype == np.complex64
        assert item.metadata.slice == 1
    rows = {(r["patient_id"], r["view"]): r for r in _sidecar(out)}
    assert len(rows) == 4
    for path in cine_files(out):
        vol = open_volume(path)
        meta = vol.volume_metadata()
        assert vol.num_frames == 4 and vol.num_coils == 4
        assert meta.anatomy == "heart" and meta.contrast == "CINE" and meta.sequence == "TrueFISP"
        assert CINE_RANGES["tr"][0] <= meta.tr <= CINE_RANGES["tr"][1]
        assert CINE_RANGES["te"][0] <= meta.te <= CINE_RANGES["te"][1]
        assert CINE_RANGES["flip"][0] <= meta.flip_angle <= CINE_RANGES["flip"][1]
        assert meta.ti is None and meta.field_strength in (1.5, 3.0)
        assert meta.view == path.stem.split("_")[1].upper()
        row = rows[(path.parent.name, path.stem.split("_")[1])]
        assert float(row["TR_ms"]) == meta.tr and row["TI_ms"] == ""
        item = vol[0]
        assert item.kspace.shape == (4, 32, 24)  # (coils, kx, ky): ky = 0.75 * 32
        assert vol.num_slices == (3 if "sax" in path.name else 2)


def _sidecar(out: Path) -> list[dict[str, str]]:
    with open(out / "cardiac/MultiCoil/Cine/TrainingSet/cine_info.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cine_file_is_matlab_v73_in_h5py_order(dataset):
    out, _ = dataset
    path = out / "cardiac/MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax.mat"
    assert path.read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(path) as f:
        ds = f["kspace_full"]
        assert ds.shape == (4, 3, 4, 24, 32)  # (t, slice, coil, ky, kx)
        assert ds.dtype.names == ("real", "imag") and ds.attrs["MATLAB_class"] == b"single"
    sim = next(iter_cine_volumes(cardiac_config({**CARDIAC, "snr": 20.0}), seed=0))
    with h5py.File(path) as f:
        raw = f["kspace_full"][()]
    np.testing.assert_array_equal(raw["real"] + 1j * raw["imag"], sim.kspace)


def test_ground_truth_noise_and_oversampling():
    cfg = brain_config({**BRAIN, "patients": 1, "volumes_per_patient": 1})
    noisy = next(iter_brain_volumes(cfg, seed=4))
    clean = next(iter_brain_volumes(brain_config({**BRAIN, "patients": 1, "volumes_per_patient": 1, "snr": None}), seed=4))
    np.testing.assert_array_equal(noisy.volume.image, clean.volume.image)
    coil_images = ifft2c_np(clean.kspace.astype(np.complex128))  # (S, C, 64, 32)
    # the object sits in the central half of the oversampled readout
    outside = np.concatenate([coil_images[..., :16, :], coil_images[..., 48:, :]], axis=-2)
    assert np.abs(outside).max() < 1e-5 * np.abs(coil_images).max()
    # coil combination with the true maps (RSS 1) returns the complex ground truth
    combined = (np.conj(clean.coil_maps) * center_crop(coil_images, (32, 32))).sum(axis=1)
    np.testing.assert_allclose(combined, clean.volume.image, atol=2e-6 * np.abs(clean.volume.image).max())
    # noise: white, complex, with the std the SNR asked for
    noise = noisy.kspace.astype(np.complex128) - clean.kspace
    assert noisy.sigma > 0 and clean.sigma == 0
    assert noise.real.std() == pytest.approx(noisy.sigma / np.sqrt(2), rel=0.03)
    assert noise.imag.std() == pytest.approx(noisy.sigma / np.sqrt(2), rel=0.03)
    assert abs(np.corrcoef(noise.real.ravel(), noise.imag.ravel())[0, 1]) < 0.03
    mag = np.abs(clean.volume.image)
    assert mag[mag > 0.1 * mag.max()].mean() / noisy.sigma == pytest.approx(cfg.snr)


def test_same_seed_same_arrays_different_seed_different(tmp_path):
    small_b = {**BRAIN, "patients": 1}
    small_c = {**CARDIAC, "patients": 1, "frames": 2, "lax_slices": 1}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_dataset(tmp_path / name, seed=seed, brain=small_b, cardiac=small_c)
    arrays: dict[str, list[tuple[str, bytes]]] = {}
    for name in "abc":
        files = sorted(p for p in (tmp_path / name).rglob("*") if p.suffix in (".h5", ".mat"))
        arrays[name] = []
        for p in files:
            with h5py.File(p) as f:
                for key in ("kspace", "reconstruction_rss", "kspace_full"):
                    if key in f:
                        arrays[name].append((f"{p.name}/{key}", f[key][()].tobytes()))
    assert len(arrays["a"]) == 6 and arrays["a"] == arrays["b"]  # same names, identical bytes
    assert len(arrays["c"]) == 6
    assert all(x[1] != y[1] for x, y in zip(arrays["a"], arrays["c"], strict=True))
    assert (tmp_path / "a" / MANIFEST_NAME).read_text() == (tmp_path / "b" / MANIFEST_NAME).read_text()
    assert (tmp_path / "a" / MANIFEST_NAME).read_text() != (tmp_path / "c" / MANIFEST_NAME).read_text()


def test_generate_domain_for_the_data_module(tmp_path):
    manifest = generate_domain("cardiac", tmp_path / "cardiac", seed=0, image_size=16, patients=1, frames=2,
                               sax_slices=1, lax_slices=0, coils=2, snr=None)
    assert (tmp_path / "cardiac" / MANIFEST_NAME).is_file()
    assert [f["path"] for f in manifest["files"]] == [
        "MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax.mat",
        "MultiCoil/Cine/TrainingSet/cine_info.csv",
    ]
    assert manifest["files"][0]["noise_sigma"] == 0.0
    with pytest.raises(ConfigError, match="domain"):
        generate_domain("knee", tmp_path)


def test_bad_config_names_key_and_value():
    with pytest.raises(ConfigError, match=r"brain\.slicez"):
        brain_config({"slicez": 3})
    with pytest.raises(ConfigError, match=r"brain\.image_size = 33"):
        brain_config({"image_size": 33})
    with pytest.raises(ConfigError, match=r"cardiac\.lax_slices = 4"):
        cardiac_config({"lax_slices": 4})
    with pytest.raises(ConfigError, match=r"cardiac\.snr = -1"):
        cardiac_config({"snr": -1})
    with pytest.raises(ConfigError, match=r"noise\.sigma"):
        generate_dataset("/nonexistent", noise={"sigma": 1})


def test_hydra_config_composes_and_runs(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="phantom", overrides=[
            f"out_dir={tmp_path}", "seed=3", "brain.patients=1", "brain.volumes_per_patient=1",
            "brain.slices=2", "brain.image_size=16", "brain.coils=2", "cardiac.patients=1",
            "cardiac.frames=2", "cardiac.sax_slices=1", "cardiac.lax_slices=1", "cardiac.image_size=16",
            "cardiac.coils=2", "noise.snr=null",
        ])
        defaults = compose(config_name="phantom")
    # the shipped defaults: CPU-sized (null keys take the preset's values)
    assert defaults.preset == "default" and defaults.brain.patients is None
    b = brain_config({k: v for k, v in defaults.brain.items() if v is not None})
    c = cardiac_config({k: v for k, v in defaults.cardiac.items() if v is not None})
    assert b.image_size == 64 and b.patients == 8 and c.frames == 12
    assert b.coils == 8 and c.coils == 10
    manifest = run(cfg)
    assert manifest["config"]["seed"] == 3
    assert manifest["config"]["brain"]["snr"] is None  # noise.snr=null -> noiseless
    assert all(f.get("noise_sigma", 0.0) == 0.0 for f in manifest["files"])
    assert len(list(tmp_path.rglob("*.h5"))) == 1 and len(list(tmp_path.rglob("*.mat"))) == 2
