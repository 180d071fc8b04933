"""fastMRI brain files: fastMRI's own SliceDataset reads what we write; our reader; bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import sigpy.mri
from fastmri.data import SliceDataset
from fastmri.data import transforms as T
from scipy.ndimage import gaussian_filter

from metamri.data.fastmri_file import FastMRIBrainFile, write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.data.readers import detect_format, open_volume
from metamri.errors import DataFileError
from metamri.physics.fft import center_crop, fft2c_np, ifft2c_np, rss
from tests.helpers import assert_names

SLICES, COILS, READOUT, PHASE = 2, 4, 64, 32
RECON = (READOUT // 2, PHASE)


def smooth_kspace(rng: np.random.Generator, slices=SLICES, coils=COILS, shape=(READOUT, PHASE)):
    """k-space of a random smooth complex image seen by birdcage coils: (slices, coils, *shape)."""
    noise = rng.standard_normal((slices, *shape)) + 1j * rng.standard_normal((slices, *shape))
    image = np.stack([gaussian_filter(n.real, 3) + 1j * gaussian_filter(n.imag, 3) for n in noise])
    maps = sigpy.mri.birdcage_maps((coils, *shape))
    return fft2c_np(maps[None] * image[:, None]).astype(np.complex64)


def rss_target(kspace: np.ndarray, recon=RECON) -> np.ndarray:
    """center_crop(rss(ifft2c(kspace))) per slice, float32 (slices, H, W)."""
    return center_crop(rss(ifft2c_np(kspace.astype(np.complex128)), axis=1), recon).astype(
        np.float32
    )


def header(**changes) -> str:
    info = HeaderInfo(
        tr=400.0,
        te=9.0,
        ti=100.0,
        flip_angle=140.0,
        sequence_type="TurboSpinEcho",
        field_strength=2.89362,
        vendor="SIEMENS",
        model="Skyra",
        receiver_channels=COILS,
        protocol_name="AX T1",
        encoded_matrix=(READOUT, PHASE, 1),
        recon_matrix=(*RECON, 1),
        num_slices=SLICES,
    )
    return build_header(HeaderInfo(**{**info.__dict__, **changes}))


@pytest.fixture
def kspace() -> np.ndarray:
    return smooth_kspace(np.random.default_rng(1234))


def write(path: Path, kspace: np.ndarray, acquisition="AXT1", **kwargs) -> Path:
    kwargs.setdefault("header_xml", header())
    rss_volume = kwargs.pop("rss") if "rss" in kwargs else rss_target(kspace)
    return write_fastmri_brain(
        path, kspace, rss_volume, acquisition=acquisition, patient_id="pt_0042", **kwargs
    )


# -- fastMRI's reader reads our files ------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded_y", "ky_center", "padding"),
    [(PHASE, PHASE // 2, (0, PHASE)), (PHASE + 4, PHASE // 2, (2, PHASE + 2))],
)
def test_fastmri_slicedataset_reads_our_file(tmp_path, kspace, encoded_y, ky_center, padding):
    root = tmp_path / "multicoil_train"
    xml = header(encoded_matrix=(READOUT, encoded_y, 1), ky_center=ky_center, ky_maximum=PHASE - 1)
    write(root / "file_brain_AXT1_001.h5", kspace, header_xml=xml)

    dataset = SliceDataset(root=root, challenge="multicoil", transform=None)
    assert len(dataset) == SLICES
    for i in range(SLICES):
        k, mask, target, attrs, fname, slice_index = dataset[i]
        assert (fname, slice_index, mask) == ("file_brain_AXT1_001.h5", i, None)
        np.testing.assert_array_equal(k, kspace[i])
        # fastMRI's own reconstruction of its k-space equals the stored target
        image = fastmri.ifft2c(T.to_tensor(k))
        recon = T.center_crop(
            fastmri.rss(fastmri.complex_abs(image), dim=0), attrs["recon_size"][:2]
        )
        rel = np.linalg.norm(recon.numpy() - target) / np.linalg.norm(target)
        assert rel < 1e-5, rel
        # its metadata dict is what our header says
        assert attrs["recon_size"] == (*RECON, 1)
        assert attrs["encoding_size"] == (READOUT, encoded_y, 1)
        assert (attrs["padding_left"], attrs["padding_right"]) == padding
        assert attrs["acquisition"] == "AXT1" and attrs["patient_id"] == "pt_0042"
        rss_volume = rss_target(kspace)
        assert attrs["max"] == pytest.approx(float(rss_volume.max()), rel=1e-6)
        assert attrs["norm"] == pytest.approx(float(np.linalg.norm(rss_volume)), rel=1e-6)


# -- our reader ------------------------------------------------------------------------------------


def test_reader_items_shapes_and_metadata(tmp_path, kspace):
    path = write(tmp_path / "brain.h5", kspace)
    vol = open_volume(path)
    assert isinstance(vol, FastMRIBrainFile) and detect_format(path) == "fastmri_brain"
    assert (vol.format, vol.domain, vol.num_slices, vol.num_frames, vol.num_coils) == (
        "fastmri_brain",
        "brain",
        SLICES,
        1,
        COILS,
    )
    assert vol.kspace_shape == (COILS, READOUT, PHASE) and vol.recon_size == RECON
    assert len(vol) == SLICES and vol.patient_id == "pt_0042"
    target = rss_target(kspace)
    items = list(vol)
    for i, item in enumerate(items):
        assert item.kspace.dtype == np.complex64
        np.testing.assert_array_equal(item.kspace, kspace[i])
        np.testing.assert_array_equal(item.target, target[i])
        assert (item.slice_index, item.frame, item.domain, item.mask) == (i, None, "brain", None)
        assert (item.fname, item.recon_size) == ("brain.h5", RECON)
        assert item.metadata.slice == i
    meta = vol.volume_metadata()
    assert meta.slice is None
    assert (meta.anatomy, meta.contrast, meta.view, meta.sequence) == (
        "brain",
        "AXT1",
        "AX",
        "TurboSpinEcho",
    )
    assert (meta.tr, meta.te, meta.flip_angle, meta.field_strength) == (400.0, 9.0, 140.0, 2.89362)
    assert meta.ti is None  # TSE placeholder TI 100 dropped
    assert vol.header.ti == 100.0  # ... but kept raw in the header
    assert items[-1].kspace is not vol[-1].kspace and vol[-1].slice_index == SLICES - 1
    with pytest.raises(IndexError):
        vol[SLICES]


@pytest.mark.parametrize(
    ("acquisition", "seq", "ti", "protocol", "expected_ti", "view"),
    [
        ("AXFLAIR", "TurboSpinEcho", 2500.0, "AX FLAIR_FBB", 2500.0, "AX"),
        ("AXT1", "Flash", 300.0, "AX T1 FLASH", None, "AX"),
        ("AXT2", "TurboSpinEcho", 100.0, "AX T2", None, "AX"),
        ("AXT1POST", "TurboSpinEcho", 100.0, "AX T1 POST", None, "AX"),
        ("SAGT2X", "TurboSpinEcho", 100.0, None, None, None),  # unknown label: kept
    ],
)
def test_ti_kept_only_for_inversion_recovery(
    tmp_path, kspace, acquisition, seq, ti, protocol, expected_ti, view
):
    xml = header(sequence_type=seq, ti=ti, protocol_name=protocol)
    meta = FastMRIBrainFile(write(tmp_path / "x.h5", kspace, acquisition, header_xml=xml))
    meta = meta.volume_metadata()
    assert (meta.contrast, meta.ti, meta.view, meta.sequence) == (
        acquisition,
        expected_ti,
        view,
        seq,
    )


def test_mask_and_no_target(tmp_path, kspace):
    mask = np.zeros(PHASE, dtype=np.float32)
    mask[::4] = 1
    mask[PHASE // 2 - 2 : PHASE // 2 + 2] = 1
    path = write(
        tmp_path / "test.h5",
        kspace * mask,
        rss=None,
        mask=mask,
        extra_attrs={"acceleration": 4, "num_low_frequency": 4},
    )
    vol = FastMRIBrainFile(path)
    item = vol[1]
    assert item.target is None and item.mask.dtype == np.bool_
    np.testing.assert_array_equal(item.mask, mask.astype(bool))
    with h5py.File(path, "r") as f:
        assert f.attrs["acceleration"] == 4 and "max" not in f.attrs


def test_missing_header_fields_are_none(tmp_path, kspace):
    xml = build_header(HeaderInfo(encoded_matrix=(READOUT, PHASE, 1), recon_matrix=(*RECON, 1)))
    meta = FastMRIBrainFile(write(tmp_path / "x.h5", kspace, header_xml=xml)).volume_metadata()
    assert (meta.tr, meta.te, meta.ti, meta.flip_angle, meta.sequence, meta.field_strength) == (
        None,
        None,
        None,
        None,
        None,
        None,
    )
    assert meta.contrast == "AXT1"


def test_pickles_and_keeps_no_handle_open(tmp_path, kspace):
    path = write(tmp_path / "brain.h5", kspace)
    vol = FastMRIBrainFile(path)
    _ = vol[0]
    clone = pickle.loads(pickle.dumps(vol))
    np.testing.assert_array_equal(clone[1].kspace, vol[1].kspace)
    assert clone.volume_metadata() == vol.volume_metadata()
    with h5py.File(path, "r+") as f:  # fails if a reader still held the file
        f.attrs["touched"] = 1


def test_write_is_atomic(tmp_path, kspace):
    path = write(tmp_path / "brain.h5", kspace)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write(path, kspace[:1], extra_attrs={"bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain.h5"]
    with pytest.raises(TypeError):
        write(tmp_path / "new.h5", kspace, extra_attrs={"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain.h5"]


def test_writer_rejects_bad_shapes(tmp_path, kspace):
    with pytest.raises(ValueError, match="slices, coils"):
        write_fastmri_brain(
            tmp_path / "a.h5",
            kspace[0],
            None,
            acquisition="AXT1",
            patient_id="p",
            header_xml=header(),
        )
    with pytest.raises(ValueError, match="reconstruction_rss"):
        write(tmp_path / "a.h5", kspace, rss=rss_target(kspace)[:1])


# -- bad files -------------------------------------------------------------------------------------


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataFileError) as err:
        FastMRIBrainFile(path)
    assert_names(err, path, "not a readable HDF5 file")


def test_truncated_file(tmp_path, kspace):
    path = write(tmp_path / "cut.h5", kspace)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError) as err:
        vol = FastMRIBrainFile(path)
        list(vol)
    assert_names(err, path, "truncated")


def test_missing_kspace(tmp_path):
    path = tmp_path / "nok.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("ismrmrd_header", data=header().encode())
        f.create_dataset("reconstruction_rss", data=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(DataFileError) as err:
        FastMRIBrainFile(path)
    assert_names(err, path, "kspace", "missing dataset", "reconstruction_rss")
    assert err.value.field == "kspace"


def test_wrong_number_of_dimensions(tmp_path, kspace):
    path = tmp_path / "singlecoil.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace[:, 0])
    with pytest.raises(DataFileError) as err:
        FastMRIBrainFile(path)
    assert_names(err, path, "kspace", "4 dimensions", str(kspace[:, 0].shape))


def test_header_not_xml(tmp_path, kspace):
    path = write(tmp_path / "badxml.h5", kspace, header_xml="<ismrmrdHeader><encoding>")
    with pytest.raises(DataFileError) as err:
        FastMRIBrainFile(path)
    assert_names(err, path, "ismrmrd_header", "not a valid ISMRMRD XML header")


def test_header_value_not_a_number(tmp_path, kspace):
    xml = header().replace("<TR>400.0</TR>", "<TR>four hundred</TR>")
    path = write(tmp_path / "badtr.h5", kspace, header_xml=xml)
    with pytest.raises(DataFileError) as err:
        FastMRIBrainFile(path)
    assert_names(
        err, path, "ismrmrd_header/sequenceParameters/TR", "'four hundred'", "not a number"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_kspace_found_when_the_slice_is_read(tmp_path, kspace, bad):
    kspace = kspace.copy()
    kspace[1, 2, 10, 5] = bad
    vol = FastMRIBrainFile(write(tmp_path / "nan.h5", kspace, rss=np.ones((SLICES, 4, 4))))
    assert np.isfinite(vol[0].kspace).all()
    with pytest.raises(DataFileError) as err:
        vol[1]
    assert_names(err, vol.path, "kspace", "slice 1", "non-finite")


def test_unknown_extension_detected_by_content(tmp_path, kspace):
    path = write(tmp_path / "brain.h5", kspace)
    other = path.rename(tmp_path / "brain.dat")
    assert detect_format(other) == "fastmri_brain"
    assert len(open_volume(other)) == SLICES
    junk = tmp_path / "junk.dat"
    with h5py.File(junk, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(DataFileError) as err:
        open_volume(junk)
    assert_names(err, junk, "unknown file format", "images")
