"""Missing required metadata is visible: a warning naming the file and fields, an error when strict."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from metamri.data.cmrxrecon_file import write_cine_sidecar, write_cmrxrecon_cine
from metamri.data.fastmri_file import FastMRIBrainFile, write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.data.readers import open_volume
from metamri.datamodules.datamodule import SliceDataModule
from metamri.errors import ConfigError, DataFileError
from metamri.preprocess.pipeline import PreprocessError
from tests.helpers import assert_names

LOGGER = "metamri.metadata.missing"
COMPLETE = HeaderInfo(tr=400.0, te=9.0, ti=100.0, flip_angle=140.0, sequence_type="TurboSpinEcho",
                      field_strength=2.89, protocol_name="AX T1", encoded_matrix=(16, 8, 1),
                      recon_matrix=(8, 8, 1), num_slices=1)
HEADER_FIELDS = ("sequence", "tr", "te", "flip_angle")


def brain(path: Path, header: HeaderInfo | None = COMPLETE, acquisition: str = "AXT1") -> Path:
    """A one-slice fastMRI file; ``header=None`` leaves out the ``ismrmrd_header`` dataset."""
    kspace = (np.ones((1, 2, 16, 8)) + 1j).astype(np.complex64)
    write_fastmri_brain(path, kspace, None, acquisition=acquisition, patient_id="p",
                        header_xml=build_header(header or COMPLETE))
    if header is None:
        with h5py.File(path, "r+") as f:
            del f["ismrmrd_header"]
    return path


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_a_file_without_header_warns_once_naming_the_file_and_fields(tmp_path, caplog):
    path = brain(tmp_path / "file_brain_AXT1_nohdr.h5", header=None)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        vol = FastMRIBrainFile(path)
        FastMRIBrainFile(path)  # the same file again: no second warning
        open_volume(path)
    (msg,) = warnings_of(caplog)
    assert str(path) in msg and "no ismrmrd_header dataset" in msg and "read as unknown" in msg
    for name in HEADER_FIELDS:
        assert f"{name} (ismrmrd_header/" in msg, name
    assert "metadata_strict=true" in msg
    assert vol.missing_metadata == HEADER_FIELDS
    meta = vol.volume_metadata()
    assert (meta.tr, meta.te, meta.flip_angle, meta.contrast) == (None, None, None, "AXT1")  # still read


def test_strict_refuses_it_naming_the_file_and_fields(tmp_path, caplog):
    path = brain(tmp_path / "file_brain_AXT1_nohdr.h5", header=None)
    with pytest.raises(DataFileError) as err:
        FastMRIBrainFile(path, strict=True)
    assert_names(err, path, "missing metadata", *(f"{n} (ismrmrd_header/" for n in HEADER_FIELDS),
                 "no ismrmrd_header dataset", "metadata_strict=false")
    assert not warnings_of(caplog)


def test_a_complete_file_is_silent(tmp_path, caplog):
    path = brain(tmp_path / "file_brain_AXT1_ok.h5")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert FastMRIBrainFile(path).missing_metadata == ()
        FastMRIBrainFile(path, strict=True, required_fields="all")  # age, sex, pathology: not stored
        FastMRIBrainFile(path, strict=True, required_fields="contextmri")
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_only_the_fields_the_file_lacks_and_the_encoder_reads(tmp_path, caplog):
    path = brain(tmp_path / "file_brain_AXT1_notr.h5", dataclasses.replace(COMPLETE, tr=None, field_strength=None))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert FastMRIBrainFile(path).missing_metadata == ("tr",)  # default: the required fields
        assert FastMRIBrainFile(path, required_fields=["field_strength", "te"]).missing_metadata == (
            "field_strength",)
        assert FastMRIBrainFile(path, required_fields=()).missing_metadata == ()
    first, second = warnings_of(caplog)
    assert "tr (ismrmrd_header/sequenceParameters/TR)" in first and "te (" not in first
    assert "no ismrmrd_header" not in first  # the header is there, only the element is not
    assert "field_strength (ismrmrd_header/acquisitionSystemInformation/systemFieldStrength_T)" in second
    with pytest.raises(ConfigError, match="unknown metadata field 'bogus'"):
        FastMRIBrainFile(path, required_fields=["bogus"])


def test_ti_is_required_of_inversion_recovery_scans_only(tmp_path):
    no_ti = dataclasses.replace(COMPLETE, ti=None)
    assert FastMRIBrainFile(brain(tmp_path / "t1.h5", no_ti)).missing_metadata == ()  # a TSE: no TI to miss
    flair = FastMRIBrainFile(brain(tmp_path / "flair.h5", no_ti, acquisition="AXFLAIR"))
    assert flair.missing_metadata == ("ti",)
    missing_acq = tmp_path / "noacq.h5"
    brain(missing_acq)
    with h5py.File(missing_acq, "r+") as f:
        del f.attrs["acquisition"]
    assert FastMRIBrainFile(missing_acq).missing_metadata == ("contrast",)


def test_cine_without_a_sidecar_row_warns_and_a_complete_row_is_silent(tmp_path, caplog):
    kspace = (np.ones((2, 1, 2, 8, 8)) + 1j).astype(np.complex64)
    cine = write_cmrxrecon_cine(tmp_path / "P001" / "cine_sax.mat", kspace)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert open_volume(cine).missing_metadata == HEADER_FIELDS
    (msg,) = warnings_of(caplog)
    assert str(cine) in msg and "no cine_info.csv" in msg and "tr (TR_ms)" in msg
    with pytest.raises(DataFileError) as err:
        open_volume(cine, strict=True, sidecar=write_cine_sidecar(tmp_path / "other.csv", [
            {"patient_id": "P002", "view": "sax", "TR_ms": 3.0}]))
    assert_names(err, cine, "missing metadata", "tr (TR_ms)", "has no row for patient_id P001, view sax")
    write_cine_sidecar(tmp_path / "cine_info.csv", [
        {"patient_id": "P001", "view": "sax", "sequence": "TrueFISP", "TR_ms": 3.6, "TE_ms": 1.5,
         "flip_angle_deg": 45}])  # no TI (bSSFP), no age, no pathology: nothing the encoder misses
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert open_volume(cine, strict=True).missing_metadata == ()
    assert not warnings_of(caplog)


def test_data_module_strict_stops_prepare_data_naming_the_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    path = brain(raw / "file_brain_AXT1_nohdr.h5", header=None)
    dm = SliceDataModule({"brain": str(raw)}, str(tmp_path / "cache"), metadata_fields="paper",
                         metadata_strict=True, preprocess={"image_size": None})
    with pytest.raises(PreprocessError) as err:
        dm.prepare_data()
    assert_names(err, path, "missing metadata", "tr (ismrmrd_header/sequenceParameters/TR)")
    assert not list((tmp_path / "cache").rglob("*.h5"))
    with pytest.raises(ConfigError, match="data.metadata_fields"):
        SliceDataModule({"brain": str(raw)}, str(tmp_path / "cache"), metadata_fields=["tr", "nope"])
