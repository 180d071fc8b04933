"""The schema drives the readers: a field added only to ``metamri/metadata/schema.py`` is read.

The claim of :mod:`metamri.metadata.schema` ("adding a field here is the only change
needed") is tested literally: a fresh interpreter loads ``schema.py`` with one more
``FieldSpec`` appended to ``SCHEMA`` (its source text patched on import, nothing else
changed) and then the fastMRI reader, the CMRxRecon reader and its sidecar table, the
checks and the :class:`Metadata` record must all know the new field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from metamri.data.ismrmrd_header import parse_document
from metamri.metadata import FIELD_NAMES, SCHEMA, Metadata
from metamri.metadata.sources import FileView, HeaderPath
from tests.helpers import AXFLAIR_HEADER

# A made-up numeric field: the readout field of view, in cm, from the header's reconSpace
# (mm: scale 0.1) and from a sidecar column.
NEW_FIELD = '''
SCHEMA = (*SCHEMA, FieldSpec(
    name="readout_fov",
    kind=FieldKind.NUMERIC,
    description="Field of view along the readout (a field that exists only in a test).",
    units="cm",
    sources={"fastmri": HeaderPath("encoding/reconSpace/fieldOfView_mm/x", scale=0.1),
             "cmrxrecon": Column("readout_fov_cm", table="sidecar table cine_info.csv")},
    default_range=(0.0, 50.0),
    valid_range=(0.0, 100.0),
))
'''

SCRIPT = textwrap.dedent('''
    import importlib.abc, importlib.machinery, importlib.util, json, sys
    from pathlib import Path

    ANCHOR = "\\nFIELDS: dict[str, FieldSpec] = "
    NEW_FIELD = sys.argv[2]

    class SchemaWithNewField(importlib.machinery.SourceFileLoader):
        """schema.py as on disk, plus NEW_FIELD appended to SCHEMA (no bytecode cache)."""
        def get_code(self, fullname):
            text = Path(self.path).read_text()
            assert ANCHOR in text, "schema.py changed: update the anchor of this test"
            text = text.replace(ANCHOR, "\\n" + NEW_FIELD + ANCHOR, 1)
            return compile(text, self.path, "exec", dont_inherit=True)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "metamri.metadata.schema":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            return importlib.util.spec_from_file_location(
                name, spec.origin, loader=SchemaWithNewField(name, spec.origin))

    sys.meta_path.insert(0, Finder())

    import dataclasses
    import numpy as np
    from metamri.data.cmrxrecon_file import read_cine_sidecar, write_cine_sidecar, write_cmrxrecon_cine
    from metamri.data.fastmri_file import write_fastmri_brain
    from metamri.data.ismrmrd_header import HeaderInfo, build_header
    from metamri.data.readers import open_volume
    from metamri.errors import DataFileError
    from metamri.metadata import FIELD_NAMES, Metadata, NumericRanges, resolve_fields

    root = Path(sys.argv[1])
    out = {"fields": list(FIELD_NAMES), "record": [f.name for f in dataclasses.fields(Metadata)],
           "all": list(resolve_fields("all"))}

    def brain(name, fov_x):
        info = HeaderInfo(tr=400.0, te=9.0, ti=100.0, flip_angle=140.0, sequence_type="TurboSpinEcho",
                          protocol_name="AX T1", encoded_matrix=(16, 8, 1), recon_matrix=(8, 8, 1),
                          recon_fov_mm=(fov_x, 110.0, 5.0), num_slices=1)
        kspace = (np.ones((1, 2, 16, 8)) + 1j).astype(np.complex64)
        return write_fastmri_brain(root / name, kspace, None, acquisition="AXT1", patient_id="p",
                                   header_xml=build_header(info))

    def error(call):
        try:
            call()
        except DataFileError as err:
            return str(err)
        return None

    meta = open_volume(brain("file_brain_AXT1_1.h5", 220.0)).volume_metadata()
    out["fastmri"] = meta.readout_fov
    out["fastmri_tr"] = meta.tr
    out["round_trip"] = Metadata.from_dict(meta.to_dict()) == meta
    out["normalised"] = NumericRanges.fit([meta]).to_dict().get("readout_fov")
    out["fastmri_error"] = error(lambda: open_volume(brain("file_brain_AXT1_2.h5", 2000.0)))

    kspace = (np.ones((2, 1, 2, 8, 8)) + 1j).astype(np.complex64)
    cine = write_cmrxrecon_cine(root / "P001" / "cine_sax.mat", kspace)
    lax = write_cmrxrecon_cine(root / "P001" / "cine_lax.mat", kspace)
    table = write_cine_sidecar(root / "cine_info.csv", [
        {"patient_id": "P001", "view": "sax", "sequence": "TrueFISP", "TR_ms": 3.6, "TE_ms": 1.5,
         "flip_angle_deg": 45, "readout_fov_cm": 34.5},
        {"patient_id": "P001", "view": "lax", "sequence": "TrueFISP", "TR_ms": 3.6, "TE_ms": 1.5,
         "flip_angle_deg": 45},
    ])
    out["sidecar_header"] = table.read_text().splitlines()[0]
    out["sidecar"] = read_cine_sidecar(table)[("P001", "sax")]["readout_fov"]
    out["cmrxrecon"] = open_volume(cine).volume_metadata().readout_fov
    out["cmrxrecon_tr"] = open_volume(cine).volume_metadata().tr
    out["missing_strict"] = error(lambda: open_volume(lax, required_fields=["tr", "readout_fov"], strict=True))
    table.write_text(table.read_text().replace("34.5", "wide"))
    out["cmrxrecon_error"] = error(lambda: open_volume(cine))
    print(json.dumps(out))
''')


def test_a_field_added_only_to_the_schema_is_read_checked_and_recorded(tmp_path):
    assert "readout_fov" not in FIELD_NAMES  # the field exists in the subprocess only
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), NEW_FIELD], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])

    # the schema, the record and the named field sets know it
    assert out["fields"] == [*FIELD_NAMES, "readout_fov"] and out["record"] == out["fields"]
    assert "readout_fov" in out["all"]
    # fastMRI: the header path, mm -> cm; the old fields unchanged
    assert out["fastmri"] == pytest.approx(22.0) and out["fastmri_tr"] == 400.0
    assert out["round_trip"] is True and out["normalised"] is not None
    # CMRxRecon: the sidecar writer, table reader and file reader take the new column
    assert out["sidecar_header"].split(",")[-1] == "readout_fov_cm"
    assert out["sidecar"] == 34.5 and out["cmrxrecon"] == 34.5 and out["cmrxrecon_tr"] == 3.6
    # checked once, naming the file, where the value is, the value and the field
    msg = out["fastmri_error"]
    assert msg is not None and "file_brain_AXT1_2.h5" in msg
    assert "ismrmrd_header/encoding/reconSpace/fieldOfView_mm/x = 2000.0" in msg
    assert "200 cm is outside the valid range [0, 100] cm" in msg and "'readout_fov'" in msg
    msg = out["cmrxrecon_error"]
    assert msg is not None and "cine_info.csv" in msg and "readout_fov_cm = 'wide'" in msg
    assert "line 2: not a number" in msg and "'readout_fov'" in msg
    # and reported as missing when the encoder reads it (strict: an error)
    msg = out["missing_strict"]
    assert msg is not None and "cine_lax.mat" in msg and "missing metadata readout_fov (readout_fov_cm)" in msg
    assert "tr (" not in msg


def test_every_header_path_of_the_schema_names_an_ismrmrd_element():
    """A typo in a HeaderPath is found here, not on the first real file."""
    from metamri.data.ismrmrd_header import build_header

    view = FileView("axflair.h5", header=parse_document(build_header(AXFLAIR_HEADER)))
    paths = [src.path for spec in SCHEMA for src in spec.sources.values() if isinstance(src, HeaderPath)]
    assert len(paths) >= 6
    for path in paths:
        assert view.header_value(path) is not None, path
    with pytest.raises(ValueError, match="has no element 'TRR'"):
        view.header_value("sequenceParameters/TRR")


def test_record_attributes_are_the_schema_fields_with_their_docs():
    assert tuple(f.name for f in dataclasses.fields(Metadata)) == FIELD_NAMES
    assert all(f.default is None for f in dataclasses.fields(Metadata))
    assert "tr: Repetition time, ms (numeric)." in Metadata.__doc__
    assert Metadata.__module__ == "metamri.metadata.record" and Metadata.__qualname__ == "Metadata"
