"""ISMRMRD header: build -> parse round trip, fastMRI's own query code, bad headers."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as etree

import pytest
from fastmri.data.mri_data import et_query

from metamri.data.ismrmrd_header import HeaderInfo, build_header, parse_header
from metamri.errors import DataFileError
from tests.helpers import AXFLAIR_HEADER

AXFLAIR = AXFLAIR_HEADER  # the real example of DESIGN.md, every HeaderInfo field set

# A header as the scanner converter writes it (hand-written, not by build_header).
HANDWRITTEN = b"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <studyInformation><studyTime>11:16:32</studyTime></studyInformation>
  <measurementInformation>
    <measurementID>45154_123456_123456_204</measurementID>
    <patientPosition>HFS</patientPosition>
    <protocolName>AX T1 FLASH</protocolName>
  </measurementInformation>
  <acquisitionSystemInformation>
    <systemVendor>SIEMENS</systemVendor><systemModel>Skyra</systemModel>
    <systemFieldStrength_T>2.893620</systemFieldStrength_T>
    <relativeReceiverNoiseBandwidth>0.793</relativeReceiverNoiseBandwidth>
    <receiverChannels>20</receiverChannels>
  </acquisitionSystemInformation>
  <experimentalConditions>
    <H1resonanceFrequency_Hz>123251815</H1resonanceFrequency_Hz>
  </experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>640</x><y>320</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>440</x><y>220</y><z>5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>220</x><y>220</y><z>5</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>319</maximum><center>160</center>
      </kspace_encoding_step_1>
      <kspace_encoding_step_2>
        <minimum>0</minimum><maximum>0</maximum><center>0</center>
      </kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>15</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
  <sequenceParameters>
    <TR>250</TR><TE>2.64</TE><TI>300</TI><flipAngle_deg>70</flipAngle_deg>
    <sequence_type>Flash</sequence_type>
  </sequenceParameters>
</ismrmrdHeader>
"""


def test_round_trip_every_field():
    parsed = parse_header(build_header(AXFLAIR))
    for field in dataclasses.fields(HeaderInfo):
        assert getattr(parsed, field.name) == getattr(AXFLAIR, field.name), field.name
    assert parsed == AXFLAIR


def test_round_trip_bytes_and_unicode_protocol():
    info = dataclasses.replace(AXFLAIR, protocol_name="AX FLAIR Ångström")
    xml = build_header(info)
    assert parse_header(xml.encode("utf-8")) == info


def test_fastmri_query_code_reads_our_header():
    """fastmri.data.mri_data reads the header with etree + the ISMRMRD namespace."""
    root = etree.fromstring(build_header(AXFLAIR).encode("utf-8"))
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    assert [int(et_query(root, enc + [a])) for a in "xyz"] == [640, 264, 1]
    assert [int(et_query(root, rec + [a])) for a in "xyz"] == [320, 260, 1]
    assert int(et_query(root, lims + ["center"])) == 132
    assert int(et_query(root, lims + ["maximum"])) == 255
    assert float(et_query(root, ["systemFieldStrength_T"])) == 1.494
    assert float(et_query(root, ["sequenceParameters", "TR"])) == 9000.0


def test_defaults_for_missing_fields():
    info = HeaderInfo(encoded_matrix=(64, 36, 1), recon_matrix=(32, 32, 1))
    parsed = parse_header(build_header(info))
    assert parsed.ky_maximum == 35 and parsed.ky_center == 18  # no phase padding
    assert parsed.encoded_fov_mm == (64.0, 36.0, 1.0)  # 1 mm voxels
    for name in (
        "tr",
        "te",
        "ti",
        "flip_angle",
        "sequence_type",
        "echo_spacing",
        "field_strength",
        "vendor",
        "model",
        "receiver_channels",
        "protocol_name",
        "num_slices",
    ):
        assert getattr(parsed, name) is None, name


def test_build_needs_matrices():
    with pytest.raises(ValueError, match="encoded_matrix"):
        build_header(HeaderInfo(tr=100.0, recon_matrix=(32, 32, 1)))


def test_handwritten_scanner_header():
    info = parse_header(HANDWRITTEN, "scan.h5")
    assert (info.tr, info.te, info.ti, info.flip_angle) == (250.0, 2.64, 300.0, 70.0)
    assert info.sequence_type == "Flash" and info.protocol_name == "AX T1 FLASH"
    assert info.field_strength == pytest.approx(2.89362)
    assert (info.vendor, info.model, info.receiver_channels) == ("SIEMENS", "Skyra", 20)
    assert info.encoded_matrix == (640, 320, 1) and info.recon_matrix == (320, 320, 1)
    assert (info.ky_center, info.ky_maximum, info.num_slices) == (160, 319, 16)
    assert info.echo_spacing is None  # absent -> None, not a crash


def test_missing_optional_sections_are_none():
    xml = HANDWRITTEN.decode()
    start, end = xml.index("<sequenceParameters>"), xml.index("</sequenceParameters>")
    xml = xml[:start] + xml[end + len("</sequenceParameters>") :]
    start, end = (
        xml.index("<acquisitionSystemInformation>"),
        xml.index("</acquisitionSystemInformation>"),
    )
    xml = xml[:start] + xml[end + len("</acquisitionSystemInformation>") :]
    info = parse_header(xml)
    assert info.tr is None and info.ti is None and info.sequence_type is None
    assert info.field_strength is None and info.vendor is None
    assert info.recon_matrix == (320, 320, 1)


@pytest.mark.parametrize("bad", ["<ismrmrdHeader", "not xml at all", "<foo/>", ""])
def test_invalid_xml_names_file_and_field(bad):
    with pytest.raises(DataFileError) as err:
        parse_header(bad, "vol_17.h5")
    msg = str(err.value)
    assert "vol_17.h5" in msg and "ismrmrd_header" in msg and "ISMRMRD" in msg
    assert err.value.field == "ismrmrd_header"


@pytest.mark.parametrize(
    ("old", "new", "field", "shown"),
    [
        ("<TR>250</TR>", "<TR>abc</TR>", "sequenceParameters/TR", "'abc'"),
        ("<TE>2.64</TE>", "<TE>NaN</TE>", "sequenceParameters/TE", "nan"),
        (
            "<flipAngle_deg>70</flipAngle_deg>",
            "<flipAngle_deg>7O</flipAngle_deg>",
            "flipAngle_deg",
            "'7O'",
        ),
        (
            "<systemFieldStrength_T>2.893620</systemFieldStrength_T>",
            "<systemFieldStrength_T>3T</systemFieldStrength_T>",
            "systemFieldStrength_T",
            "'3T'",
        ),
        ("<x>320</x><y>320</y>", "<x>320</x><y>3.5e2</y>", "reconSpace/matrixSize/y", "'3.5e2'"),
    ],
)
def test_non_numeric_value_names_field_and_value(old, new, field, shown):
    xml = HANDWRITTEN.decode()
    assert old in xml
    with pytest.raises(DataFileError) as err:
        parse_header(xml.replace(old, new, 1), "vol_17.h5")
    msg = str(err.value)
    assert "vol_17.h5" in msg and field in msg
    assert err.value.field.startswith("ismrmrd_header/")
    assert f"= {shown}:" in msg  # the bad value is shown
