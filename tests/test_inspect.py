"""``python -m metamri.inspect``: one JSON line per file, one ``error:`` line per bad file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metamri.data.cmrxrecon_file import write_cine_sidecar, write_cmrxrecon_cine
from metamri.data.fastmri_file import write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.inspect import main
from metamri.metadata.schema import FIELD_NAMES
from tests.helpers import AXFLAIR_HEADER

# DESIGN.md's real AXFLAIR header, written as a one-slice file.
AXFLAIR = dataclasses.replace(AXFLAIR_HEADER, recon_fov_mm=(220.0, 178.75, 7.5), ky_maximum=263, num_slices=1)
# An AXT1 FLASH scan: fastMRI stores the placeholder TI 300 on it.
AXT1_FLASH = HeaderInfo(
    tr=250.0,
    te=2.64,
    ti=300.0,
    flip_angle=70.0,
    sequence_type="Flash",
    field_strength=2.89362,
    vendor="SIEMENS",
    model="Skyra",
    receiver_channels=4,
    protocol_name="AX T1 FLASH",
    encoded_matrix=(64, 32, 1),
    recon_matrix=(32, 32, 1),
    num_slices=2,
)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metamri.inspect", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def small_kspace(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.fixture
def brain_files(tmp_path) -> tuple[Path, Path]:
    # the real AXFLAIR matrix: 1 slice, 16 coils, 640 x 264 k-space
    flair = write_fastmri_brain(
        tmp_path / "file_brain_AXFLAIR_200_6002462.h5",
        small_kspace((1, 16, 640, 264)) * 1e-5,
        np.ones((1, 320, 260), np.float32),
        acquisition="AXFLAIR",
        patient_id="8f3a",
        header_xml=build_header(AXFLAIR),
    )
    t1 = write_fastmri_brain(
        tmp_path / "file_brain_AXT1_201_6002700.h5",
        small_kspace((2, 4, 64, 32), 1),
        None,
        acquisition="AXT1",
        patient_id="77b0",
        header_xml=build_header(AXT1_FLASH),
    )
    return flair, t1


def test_cli_prints_axflair_header_values(tmp_path, brain_files):
    flair, t1 = brain_files
    proc = run_cli(str(flair), str(t1), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)

    assert first["path"] == str(flair) and first["format"] == "fastmri_brain"
    assert first["shape"] == [1, 16, 640, 264] and first["recon_size"] == [320, 260]
    assert (first["slices"], first["frames"], first["coils"]) == (1, 1, 16)
    meta = first["metadata"]
    assert set(meta) == set(FIELD_NAMES)
    assert (meta["tr"], meta["te"], meta["ti"], meta["flip_angle"]) == (9000, 86, 2500, 150)
    assert meta["field_strength"] == 1.494
    assert (meta["contrast"], meta["sequence"], meta["anatomy"], meta["view"]) == (
        "AXFLAIR",
        "TurboSpinEcho",
        "brain",
        "AX",
    )
    assert meta["slice"] is None and meta["age"] is None and meta["pathology"] is None
    assert first["header"]["vendor"] == "SIEMENS" and first["header"]["model"] == "Aera"
    assert first["header"]["receiver_channels"] == 16
    assert first["header"]["encoded_matrix"] == [640, 264, 1]

    meta = second["metadata"]
    assert meta["ti"] is None  # FLASH placeholder TI 300 dropped
    assert second["header"]["ti_raw"] == 300
    assert (meta["tr"], meta["te"], meta["flip_angle"], meta["sequence"]) == (
        250,
        2.64,
        70,
        "Flash",
    )


def test_cli_reports_bad_files_and_goes_on(tmp_path, brain_files):
    flair, t1 = brain_files
    noise = tmp_path / "noise.h5"
    noise.write_bytes(b"\x00garbage" * 100)
    bad_tr = write_fastmri_brain(
        tmp_path / "bad_tr.h5",
        small_kspace((1, 2, 8, 8)),
        None,
        acquisition="AXT2",
        patient_id="p",
        header_xml=build_header(AXT1_FLASH).replace("<TR>250.0</TR>", "<TR>n/a</TR>"),
    )
    proc = run_cli(
        str(noise), str(flair), str(bad_tr), str(tmp_path / "absent.h5"), str(t1), cwd=tmp_path
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = proc.stderr.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "noise.h5" in errors[0] and "HDF5" in errors[0]
    assert "bad_tr.h5" in errors[1] and "ismrmrd_header/sequenceParameters/TR" in errors[1]
    assert "'n/a'" in errors[1]
    assert "absent.h5" in errors[2] and "no such file" in errors[2]
    outputs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["path"] for o in outputs] == [str(flair), str(t1)]


def test_cli_cine_with_sidecar(tmp_path, capsys):
    patient = tmp_path / "FullSample" / "P007"
    patient.mkdir(parents=True)
    cine = write_cmrxrecon_cine(patient / "cine_lax.mat", small_kspace((3, 1, 4, 24, 32)))
    table = write_cine_sidecar(
        tmp_path / "elsewhere.csv",
        [
            {
                "patient_id": "P007",
                "view": "lax",
                "sequence": "TrueFISP",
                "TR_ms": 3.6,
                "TE_ms": 1.2,
                "flip_angle_deg": 40,
                "field_strength_T": 3.0,
                "sex": "F",
                "pathology": "normal",
            }
        ],
    )
    assert main([str(cine)]) == 0  # no table found: fields are null, not an error
    out = json.loads(capsys.readouterr().out)
    assert out["metadata"]["tr"] is None and out["metadata"]["view"] == "LAX"
    assert main([str(cine), "--sidecar", str(table)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = json.loads(captured.out)
    assert (out["format"], out["domain"], out["patient_id"]) == (
        "cmrxrecon_cine",
        "cardiac",
        "P007",
    )
    assert out["shape"] == [3, 1, 4, 24, 32] and out["kspace_shape"] == [4, 32, 24]
    assert (out["frames"], out["slices"], out["items"], out["recon_size"]) == (3, 1, 3, [32, 24])
    meta = out["metadata"]
    assert (meta["tr"], meta["te"], meta["flip_angle"], meta["field_strength"]) == (
        3.6,
        1.2,
        40,
        3.0,
    )
    assert (meta["contrast"], meta["anatomy"], meta["sex"], meta["pathology"]) == (
        "CINE",
        "heart",
        "F",
        ["normal"],
    )


def test_cli_cine_bad_file(tmp_path, capsys):
    bad = write_cmrxrecon_cine(
        tmp_path / "P001" / "cine_sax.mat", None, extra={"kspace_full": small_kspace((4, 24, 32))}
    )
    assert main([str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: ") and "cine_sax.mat" in line and "kspace_full" in line
    assert "5 dimensions" in line


def test_values_flag_finds_a_nan_slice_that_the_header_check_does_not(tmp_path):
    kspace = small_kspace((2, 2, 8, 8))
    kspace[1, 0, 3, 4] = np.nan
    nan_file = write_fastmri_brain(tmp_path / "nan.h5", kspace, None, acquisition="AXT2",
                                   patient_id="p", header_xml=build_header(AXT1_FLASH))
    header_only = run_cli(str(nan_file), cwd=tmp_path)
    assert header_only.returncode == 0 and json.loads(header_only.stdout)["slices"] == 2
    checked = run_cli("--values", str(nan_file), cwd=tmp_path)
    assert checked.returncode == 1 and checked.stdout == "" and "Traceback" not in checked.stderr
    (line,) = checked.stderr.splitlines()
    assert line.startswith("error: ") and "nan.h5" in line and "slice 1" in line
    assert "1 non-finite value(s)" in line and "kspace" in line
    # a clean file passes with --values and prints the same line as without
    clean = write_fastmri_brain(tmp_path / "clean.h5", small_kspace((2, 2, 8, 8)), None, acquisition="AXT2",
                                patient_id="p", header_xml=build_header(AXT1_FLASH))
    assert run_cli("--values", str(clean), cwd=tmp_path).stdout == run_cli(str(clean), cwd=tmp_path).stdout
