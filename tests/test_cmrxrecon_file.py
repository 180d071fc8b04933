"""CMRxRecon cine MAT-files (v7.3): MATLAB layout, exact read-back, sidecar metadata, bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from scipy.io.matlab import matfile_version

from metamri.data.cmrxrecon_file import (
    CMRxReconCineFile,
    find_sidecar,
    read_cine_sidecar,
    write_cine_sidecar,
    write_cmrxrecon_cine,
)
from metamri.data.readers import detect_format, open_volume
from metamri.errors import DataFileError
from tests.helpers import assert_names

FRAMES, SLICES, COILS, KY, KX = 3, 2, 4, 24, 32

ROWS = [
    {
        "patient_id": "P001",
        "view": "sax",
        "sequence": "TrueFISP",
        "field_strength_T": 3.0,
        "TR_ms": 3.6,
        "TE_ms": 1.6,
        "TI_ms": None,
        "flip_angle_deg": 45,
        "age": 54,
        "sex": "M",
        "pathology": ["hcm", "lvh"],
    },
    {
        "patient_id": "P001",
        "view": "LAX",
        "sequence": "TrueFISP",
        "field_strength_T": 3.0,
        "TR_ms": 3.8,
        "TE_ms": 1.5,
        "flip_angle_deg": 50,
    },
    {
        "patient_id": "P002",
        "view": "sax",
        "sequence": "TrueFISP",
        "TR_ms": 40.5,
        "TE_ms": 1.1,
        "flip_angle_deg": 12,
        "sex": "F",
        "pathology": "normal",
    },
]


@pytest.fixture
def kspace() -> np.ndarray:
    """Random complex64 (frames, slices, coils, ky, kx): h5py order."""
    rng = np.random.default_rng(7)
    shape = (FRAMES, SLICES, COILS, KY, KX)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def ky_mask(accel: int = 4) -> np.ndarray:
    """(ky,) bool: every accel-th line plus the central 8 (the real data keeps 24 of ~200)."""
    mask = np.zeros(KY, bool)
    mask[::accel] = True
    mask[KY // 2 - 4 : KY // 2 + 4] = True
    return mask


def dataset_tree(root: Path, folder: str = "FullSample", patient: str = "P001") -> Path:
    """root/MultiCoil/Cine/TrainingSet/<folder>/<patient>, as CMRxRecon lays it out."""
    d = root / "MultiCoil" / "Cine" / "TrainingSet" / folder / patient
    d.mkdir(parents=True)
    return d


# -- MATLAB v7.3 layout ---------------------------------------------------------------------------


def test_matlab_v73_layout(tmp_path, kspace):
    mask2d = np.repeat(ky_mask()[:, None], KX, axis=1).astype(np.float64)  # (ky, kx) h5py order
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", kspace, extra={"mask04": mask2d})
    assert matfile_version(str(path)) == (2, 0)
    head = path.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file, Platform: ")
    assert b"HDF5 schema 1.00 ." in head[:116] and head[124:128] == b"\x00\x02IM"
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        ds = f["kspace_full"]
        assert ds.shape == (FRAMES, SLICES, COILS, KY, KX)
        assert ds.dtype.names == ("real", "imag") and ds.dtype["real"] == np.float32
        assert ds.attrs["MATLAB_class"] == b"single"
        assert f["mask04"].attrs["MATLAB_class"] == b"double"
        np.testing.assert_array_equal(ds["real"], kspace.real)
        np.testing.assert_array_equal(ds["imag"], kspace.imag)
    with pytest.raises(NotImplementedError):  # scipy sees a v7.3 file and says so
        scipy.io.loadmat(str(path))


def test_read_back_exact_with_canonical_transpose(tmp_path, kspace):
    path = write_cmrxrecon_cine(dataset_tree(tmp_path) / "cine_sax.mat", kspace)
    vol = open_volume(path)
    assert isinstance(vol, CMRxReconCineFile) and detect_format(path) == "cmrxrecon_cine"
    assert (vol.format, vol.domain) == ("cmrxrecon_cine", "cardiac")
    assert (vol.num_frames, vol.num_slices, vol.num_coils) == (FRAMES, SLICES, COILS)
    assert vol.raw_shape == (FRAMES, SLICES, COILS, KY, KX)
    assert vol.kspace_shape == (COILS, KX, KY) and vol.recon_size == (KX, KY)
    assert len(vol) == SLICES * FRAMES and vol.patient_id == "P001"
    for i, item in enumerate(vol):
        s, t = divmod(i, FRAMES)
        assert (item.slice_index, item.frame) == (s, t)
        assert item.kspace.dtype == np.complex64 and item.kspace.shape == (COILS, KX, KY)
        np.testing.assert_array_equal(item.kspace, kspace[t, s].transpose(0, 2, 1))
        assert item.mask is None and item.target is None and item.domain == "cardiac"
        assert item.metadata.slice == s and item.recon_size == (KX, KY)
    # MATLAB's kspace_full(kx, ky, coil, slice, t) is our item kspace[coil, kx, ky]
    matlab = np.transpose(kspace, (4, 3, 2, 1, 0))
    assert vol[1 * FRAMES + 2].kspace[3, 5, 7] == matlab[5, 7, 3, 1, 2]


@pytest.mark.parametrize(
    ("frames", "expected"), [(1, [1]), ([0, 2], [0, 2]), (-1, [2]), ("all", [0, 1, 2])]
)
def test_frame_selection(tmp_path, kspace, frames, expected):
    vol = CMRxReconCineFile(write_cmrxrecon_cine(tmp_path / "cine_lax.mat", kspace), frames=frames)
    assert vol.frames == expected and len(vol) == SLICES * len(expected)
    assert [(it.slice_index, it.frame) for it in vol] == [
        (s, t) for s in range(SLICES) for t in expected
    ]
    np.testing.assert_array_equal(
        vol[-1].kspace, kspace[expected[-1], SLICES - 1].transpose(0, 2, 1)
    )


def test_frame_out_of_range(tmp_path, kspace):
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", kspace)
    with pytest.raises(DataFileError) as err:
        CMRxReconCineFile(path, frames=[0, FRAMES])
    assert "cine_sax.mat" in str(err.value) and "frames = 3" in str(err.value)


# -- sidecar metadata ------------------------------------------------------------------------------


def test_sidecar_round_trip(tmp_path):
    table = read_cine_sidecar(write_cine_sidecar(tmp_path / "cine_info.csv", ROWS))
    assert set(table) == {("P001", "sax"), ("P001", "lax"), ("P002", "sax")}
    assert table[("P001", "sax")] == {
        "sequence": "TrueFISP",
        "field_strength": 3.0,
        "tr": 3.6,
        "te": 1.6,
        "ti": None,
        "flip_angle": 45.0,
        "age": 54.0,
        "sex": "M",
        "pathology": ("hcm", "lvh"),
    }
    assert table[("P001", "lax")]["age"] is None and table[("P001", "lax")]["pathology"] is None
    assert table[("P002", "sax")]["field_strength"] is None
    assert table[("P002", "sax")]["pathology"] == ("normal",)


def test_sidecar_found_upward_and_fills_metadata(tmp_path, kspace):
    patient = dataset_tree(tmp_path)
    write_cine_sidecar(tmp_path / "cine_info.csv", ROWS)  # dataset root: 6 folders up
    sax = CMRxReconCineFile(write_cmrxrecon_cine(patient / "cine_sax.mat", kspace))
    lax = CMRxReconCineFile(write_cmrxrecon_cine(patient / "cine_lax.mat", kspace[:, :1]))
    assert sax.sidecar == (tmp_path / "cine_info.csv").resolve()
    meta = sax.volume_metadata()
    assert (meta.anatomy, meta.contrast, meta.view, meta.sequence) == (
        "heart",
        "CINE",
        "SAX",
        "TrueFISP",
    )
    assert (meta.tr, meta.te, meta.ti, meta.flip_angle, meta.field_strength) == (
        3.6,
        1.6,
        None,
        45.0,
        3.0,
    )
    assert (meta.age, meta.sex, meta.pathology) == (54.0, "M", ("hcm", "lvh"))
    assert sax[3].metadata == meta.replace(slice=1)
    lmeta = lax.volume_metadata()
    assert (lmeta.view, lmeta.tr, lmeta.flip_angle, lmeta.age) == ("LAX", 3.8, 50.0, None)
    described = sax.describe()["metadata"]
    assert described["tr"] == 3.6 and described["pathology"] == ["hcm", "lvh"]
    assert described["slice"] is None


def test_sidecar_explicit_missing_and_too_far(tmp_path, kspace):
    patient = dataset_tree(tmp_path / "deeper")  # root is 7 folders up from P001
    write_cine_sidecar(tmp_path / "cine_info.csv", ROWS)
    path = write_cmrxrecon_cine(patient / "cine_sax.mat", kspace)
    assert find_sidecar(patient) is None
    meta = CMRxReconCineFile(path).volume_metadata()  # no table: fields missing, no error
    assert meta.view == "SAX" and meta.contrast == "CINE"
    assert (meta.tr, meta.te, meta.flip_angle, meta.sequence, meta.age) == (None,) * 5
    meta = CMRxReconCineFile(path, sidecar=tmp_path / "cine_info.csv").volume_metadata()
    assert (meta.tr, meta.flip_angle) == (3.6, 45.0)
    other = write_cine_sidecar(tmp_path / "other.csv", [{"patient_id": "P009", "view": "sax"}])
    meta = CMRxReconCineFile(path, sidecar=other).volume_metadata()  # no row: fields missing
    assert meta.tr is None and meta.view == "SAX"
    with pytest.raises(DataFileError) as err:
        CMRxReconCineFile(path, sidecar=tmp_path / "absent.csv")
    assert "absent.csv" in str(err.value) and "sidecar" in str(err.value)


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("patient_id,view,TR_ms\nP001,sax,fast\n", "TR_ms", "'fast'"),
        ("patient_id,view,flip_angle_deg\nP001,sax,inf\n", "flip_angle_deg", "'inf'"),
        ("patient_id,view,TR_ms\nP001,axial,3.6\n", "view", "'axial'"),
        ("patient,view,TR_ms\nP001,sax,3.6\n", "patient_id", None),
        ("patient_id,view\nP001,sax\nP001,SAX\n", "patient_id", None),
    ],
)
def test_bad_sidecar_names_file_and_column(tmp_path, kspace, text, field, value):
    csv_path = tmp_path / "cine_info.csv"
    csv_path.write_text(text)
    with pytest.raises(DataFileError) as err:
        read_cine_sidecar(csv_path)
    msg = str(err.value)
    assert "cine_info.csv" in msg and field in msg
    if value is not None:
        assert f"= {value}" in msg
    path = write_cmrxrecon_cine(dataset_tree(tmp_path) / "cine_sax.mat", kspace)
    with pytest.raises(DataFileError):  # the reader finds the same table and fails the same way
        CMRxReconCineFile(path)


def test_sidecar_writer_rejects_unknown_columns(tmp_path):
    with pytest.raises(ValueError, match="TR"):
        write_cine_sidecar(tmp_path / "c.csv", [{"patient_id": "P001", "view": "sax", "TR": 3}])
    assert not (tmp_path / "c.csv").exists()


# -- subsampled (AccFactor) files -----------------------------------------------------------------


@pytest.mark.parametrize("mask_layout", ["ky_kx", "kx_ky", "ky"])
def test_mask_only_subsampled_file(tmp_path, kspace, mask_layout):
    mask = ky_mask(4)
    sub = (kspace * mask[:, None]).astype(np.complex64)
    stored = {
        "ky_kx": np.repeat(mask[:, None], KX, 1),
        "kx_ky": np.repeat(mask[None], KX, 0),
        "ky": mask,
    }[mask_layout].astype(np.float64)
    other = ky_mask(8)
    path = write_cmrxrecon_cine(
        dataset_tree(tmp_path, "AccFactor04") / "cine_sax.mat",
        None,
        extra={
            "kspace_sub04": sub,
            "mask04": stored,
            "kspace_sub08": kspace * other[:, None],
            "mask08": np.repeat(other[:, None], KX, 1).astype(np.float64),
        },
    )
    assert matfile_version(str(path)) == (2, 0)
    vol = open_volume(path)
    assert vol.dataset_key == "kspace_sub04" and vol.patient_id == "P001"
    for i, item in enumerate(vol):
        s, t = divmod(i, FRAMES)
        np.testing.assert_array_equal(item.kspace, sub[t, s].transpose(0, 2, 1))
        assert item.mask.dtype == np.bool_ and item.mask.shape == (KY,)
        np.testing.assert_array_equal(item.mask, mask)
        # the mask multiplies the last (phase-encode) axis of the canonical layout
        np.testing.assert_array_equal(item.kspace, item.kspace * item.mask)
    vol8 = CMRxReconCineFile(path, acceleration=8)
    np.testing.assert_array_equal(vol8[0].mask, other)
    assert int(vol8[0].mask.sum()) == int(other.sum()) == 10


def test_mask_with_wrong_shape(tmp_path, kspace):
    path = write_cmrxrecon_cine(
        tmp_path / "cine_sax.mat",
        None,
        extra={"kspace_sub04": kspace, "mask04": np.ones((KY + 1, KX))},
    )
    with pytest.raises(DataFileError) as err:
        CMRxReconCineFile(path)
    assert "cine_sax.mat" in str(err.value) and "mask04" in str(err.value)


# -- robustness ------------------------------------------------------------------------------------


def test_pickles_and_keeps_no_handle_open(tmp_path, kspace):
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", kspace)
    vol = CMRxReconCineFile(path, frames=[2])
    clone = pickle.loads(pickle.dumps(vol))
    np.testing.assert_array_equal(clone[1].kspace, vol[1].kspace)
    assert clone.frames == [2]
    with h5py.File(path, "r+") as f:
        f.attrs["touched"] = 1


def test_write_is_atomic(tmp_path, kspace):
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", kspace)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="MATLAB"):
        write_cmrxrecon_cine(path, kspace, extra={"names": np.array(["a", "b"])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cine_sax.mat"]


def test_random_bytes(tmp_path):
    path = tmp_path / "cine_sax.mat"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(DataFileError) as err:
        open_volume(path)
    assert_names(err, path, "not a readable HDF5 file")


def test_matlab_v5_file(tmp_path, kspace):
    path = tmp_path / "cine_sax.mat"
    scipy.io.savemat(str(path), {"kspace_full": np.zeros((2, 2))})
    with pytest.raises(DataFileError) as err:
        open_volume(path)
    assert_names(err, path, "MATLAB v5", "v7.3")


def test_truncated_file(tmp_path, kspace):
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", kspace)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError) as err:
        list(CMRxReconCineFile(path))
    assert_names(err, path, "truncated")


def test_missing_kspace(tmp_path):
    path = write_cmrxrecon_cine(
        tmp_path / "cine_sax.mat", None, extra={"mask04": np.ones((KY, KX))}
    )
    with pytest.raises(DataFileError) as err:
        CMRxReconCineFile(path)
    assert_names(err, path, "kspace_full", "missing dataset", "mask04")


def test_wrong_number_of_dimensions(tmp_path, kspace):
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", None, extra={"kspace_full": kspace[0]})
    with pytest.raises(DataFileError) as err:
        CMRxReconCineFile(path)
    assert_names(err, path, "kspace_full", "5 dimensions", str(kspace[0].shape))


def test_real_valued_kspace(tmp_path, kspace):
    path = write_cmrxrecon_cine(tmp_path / "cine_sax.mat", None, extra={"kspace_full": kspace.real})
    with pytest.raises(DataFileError) as err:
        CMRxReconCineFile(path)
    assert_names(err, path, "kspace_full", "complex")


def test_non_finite_kspace_found_when_the_item_is_read(tmp_path, kspace):
    kspace = kspace.copy()
    kspace[2, 1, 0, 3, 4] = np.nan + 0j
    vol = CMRxReconCineFile(write_cmrxrecon_cine(tmp_path / "cine_sax.mat", kspace))
    _ = [vol[i] for i in range(len(vol) - 1)]
    with pytest.raises(DataFileError) as err:
        vol[len(vol) - 1]  # slice 1, frame 2
    assert_names(err, vol.path, "kspace_full", "slice 1, frame 2", "non-finite")


def test_cine_names_carry_the_patient(tmp_path):
    """CMRxRecon repeats `cine_sax.mat` in every patient folder: the sample name must not."""
    kspace = np.zeros((2, 1, 2, 4, 6), np.complex64)
    names = []
    for patient in ("P001", "P002"):
        path = write_cmrxrecon_cine(dataset_tree(tmp_path, patient=patient) / "cine_sax.mat", kspace)
        volume = CMRxReconCineFile(path)
        names.append((volume.fname, volume[0].fname))
    assert names == [("P001/cine_sax.mat",) * 2, ("P002/cine_sax.mat",) * 2]
