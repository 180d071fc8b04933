"""ContextMRI's exact prompt: golden rows of its metadata table, fastMRI headers, dropout.

The expected strings are what ContextMRI's own ``utils.row_to_text_string(row, p=1.0)``
(DoHunLee1/ContextMRI) returns for these rows of its ``assets/fastmri/brain/metadata_val.csv``,
computed once with pandas and written down here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.data.fastmri_file import FastMRIBrainFile, write_fastmri_brain
from metamri.data.ismrmrd_header import build_header
from metamri.errors import DataFileError
from metamri.metadata import (
    CONTEXTMRI_FIELDS,
    EMBEDDABLE_FIELDS,
    FIELD_NAMES,
    PAPER_FIELDS,
    SCHEMA,
    Metadata,
    build_prompt,
    contextmri_prompt,
    read_contextmri_table,
    resolve_fields,
)
from metamri.models.tiny_contextmri import write_tiny_contextmri
from tests.helpers import AXFLAIR_HEADER, assert_names

CONF = Path(__file__).resolve().parents[1] / "conf"

# Rows of ContextMRI's brain metadata table (header + 6 rows, copied verbatim).
TABLE = """anatomy,filename,slice,contrast,pathology,sequence,TR,TE,TI,flip_angle
brain,file_brain_AXFLAIR_200_6002462,0,FLAIR,"Nonspecific white matter lesion, Nonspecific white matter lesion",TurboSpinEcho,9000,81,2500,150
brain,file_brain_AXFLAIR_200_6002483,0,FLAIR,"Nonspecific white matter lesion, Nonspecific white matter lesion, Dural thickening, Dural thickening, Dural thickening, Encephalomalacia",TurboSpinEcho,9000,81,2500,150
brain,file_brain_AXT2_200_2000019,0,T2,,TurboSpinEcho,6190,113,100,174
brain,file_brain_AXT1POST_200_6001976,0,T1 post-contrast,Normal for age,Flash,250,2,300,70
brain,file_brain_AXT2_203_2030010,1,T2,,TurboSpinEcho,6000,107,500,120
brain,file_brain_AXT1PRE_200_6002079,0,T1 pre-contrast,,Flash,250,2,300,70
"""
# ContextMRI's row_to_text_string(row, p=1.0) for each row above, in order.
GOLDEN = {
    ("file_brain_AXFLAIR_200_6002462", 0):
        "brain, Slice 0, FLAIR, Pathology: 2 Nonspecific white matter lesion, Sequence: TurboSpinEcho, "
        "TR: 9000, TE: 81, TI: 2500, Flip angle: 150",
    ("file_brain_AXFLAIR_200_6002483", 0):
        "brain, Slice 0, FLAIR, Pathology: 2 Nonspecific white matter lesion, 3 Dural thickening, "
        "1 Encephalomalacia, Sequence: TurboSpinEcho, TR: 9000, TE: 81, TI: 2500, Flip angle: 150",
    ("file_brain_AXT2_200_2000019", 0):
        "brain, Slice 0, T2, Sequence: TurboSpinEcho, TR: 6190, TE: 113, TI: 100, Flip angle: 174",
    ("file_brain_AXT1POST_200_6001976", 0):
        "brain, Slice 0, T1 post-contrast, Pathology: 1 Normal for age, Sequence: Flash, TR: 250, TE: 2, "
        "TI: 300, Flip angle: 70",
    ("file_brain_AXT2_203_2030010", 1):
        "brain, Slice 1, T2, Sequence: TurboSpinEcho, TR: 6000, TE: 107, TI: 500, Flip angle: 120",
    ("file_brain_AXT1PRE_200_6002079", 0):
        "brain, Slice 0, T1 pre-contrast, Sequence: Flash, TR: 250, TE: 2, TI: 300, Flip angle: 70",
}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("cmri") / "metadata_val.csv"
    path.write_text(TABLE)
    return read_contextmri_table(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_contextmri(tmp_path_factory.mktemp("tiny_contextmri"))


# -- the table and the golden prompts ----------------------------------------------------------
def test_golden_rows_give_contextmri_own_prompts(table):
    assert len(table) == len(GOLDEN)
    for key, want in GOLDEN.items():
        got = contextmri_prompt(table.get(*key), CONTEXTMRI_FIELDS)
        print(f"\n{key[0]} slice {key[1]}\n  metamri:    {got}\n  ContextMRI: {want}")
        assert got == want
        assert build_prompt(table.get(*key), "contextmri") == want  # the named field set, default style


def test_table_rows_become_typed_records(table):
    flair = table.get("file_brain_AXFLAIR_200_6002483.h5", 0)  # a file name with .h5 works too
    assert flair.contrast == "AXFLAIR" and flair.view == "AX" and flair.slice == 0.0
    assert (flair.tr, flair.te, flair.ti, flair.ti_stored, flair.flip_angle) == (9000, 81, 2500, 2500, 150)
    assert flair.pathology == ("Nonspecific white matter lesion",) * 2 + ("Dural thickening",) * 3 + (
        "Encephalomalacia",)
    t2 = table.get("file_brain_AXT2_200_2000019", 0)
    assert t2.ti is None and t2.ti_stored == 100.0 and t2.pathology is None  # placeholder TI: prompt-only
    post = table.get("file_brain_AXT1POST_200_6001976", 0)
    assert (post.contrast, post.sequence, post.ti, post.ti_stored) == ("AXT1POST", "Flash", None, 300.0)
    assert table.get("file_brain_AXT1PRE_200_6002079", 0).contrast == "AXT1PRE"
    with pytest.raises(KeyError, match="slice 7"):
        table.get("file_brain_AXT2_200_2000019", 7)


def test_bad_tables_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("anatomy,filename,slice,contrast\nbrain,f,0,T2\n")
    with pytest.raises(DataFileError) as err:
        read_contextmri_table(bad)
    assert_names(err, bad, "missing column", "TR", "flip_angle")
    header, row = TABLE.splitlines()[:2]
    bad.write_text(f"{header}\n{row.replace(',9000,', ',fast,')}\n")
    with pytest.raises(DataFileError) as err:
        read_contextmri_table(bad)
    assert_names(err, bad, "line 2", "TR", "'fast'", "not a number")
    bad.write_text(f"{header}\n{row}\n{row}\n")
    with pytest.raises(DataFileError, match="listed twice"):
        read_contextmri_table(bad)


def test_prompt_rules_beyond_the_table():
    rec = Metadata(anatomy="brain", slice=2, contrast="AXT2", sequence="TurboSpinEcho", tr=6190,
                   te=113.5, ti_stored=100, flip_angle=174, pathology=("Edema", "Mass", "Edema"))
    full = build_prompt(rec, CONTEXTMRI_FIELDS)
    assert full == ("brain, Slice 2, T2, Pathology: 2 Edema, 1 Mass, Sequence: TurboSpinEcho, TR: 6190, "
                    "TE: 113.5, TI: 100, Flip angle: 174")  # non-integers as Python prints them
    # dropping any acquisition field leaves the whole block out; pathology stays
    assert build_prompt(rec, CONTEXTMRI_FIELDS, dropped={"ti"}) == "brain, Slice 2, T2, Pathology: 2 Edema, 1 Mass"
    assert build_prompt(rec, CONTEXTMRI_FIELDS, dropped=set(CONTEXTMRI_FIELDS)) == ""
    assert "Pathology" not in build_prompt(rec, PAPER_FIELDS)  # only shown when the encoder reads it
    # the TI ablation (Metadata.without) removes the stored TI with it
    assert "TI" not in build_prompt(rec.replace(ti=None).without(["ti"]), CONTEXTMRI_FIELDS)
    assert rec.only(["ti"]).ti_stored == 100.0
    # a value the record lacks is left out alone (cine: no TI at all)
    cine = Metadata(anatomy="heart", slice=4, contrast="CINE", sequence="TrueFISP", tr=40, te=1.4, flip_angle=50)
    assert build_prompt(cine) == "heart, Slice 4, CINE, Sequence: TrueFISP, TR: 40, TE: 1.4, Flip angle: 50"
    # the earlier prompt, by name
    assert build_prompt(rec, PAPER_FIELDS, style="metamri") == (
        "brain, Slice 2, AXT2, Sequence: TurboSpinEcho, TR: 6190, TE: 113.5, Flip angle: 174")


def test_ti_stored_is_a_prompt_only_schema_field():
    spec = {s.name: s for s in SCHEMA}["ti_stored"]
    assert spec.kind == "numeric" and spec.units == "ms" and spec.stored_for == "ti" and not spec.in_paper
    assert "ti_stored" not in PAPER_FIELDS and "ti_stored" not in EMBEDDABLE_FIELDS
    assert resolve_fields("all") == EMBEDDABLE_FIELDS and resolve_fields(["ti_stored"]) == ("ti_stored",)
    assert tuple(f.name for f in dataclasses.fields(Metadata)) == FIELD_NAMES  # record and schema in step


# -- fastMRI headers -----------------------------------------------------------------------------
def _fastmri_file(tmp_path: Path, acquisition: str, **header) -> FastMRIBrainFile:
    info = dataclasses.replace(AXFLAIR_HEADER, encoded_matrix=(16, 8, 1), recon_matrix=(8, 8, 1),
                               num_slices=2, **header)
    kspace = (np.ones((2, 2, 16, 8)) + 1j).astype(np.complex64)
    path = write_fastmri_brain(tmp_path / f"file_brain_{acquisition}_200_1.h5", kspace, None,
                               acquisition=acquisition, patient_id="p1", header_xml=build_header(info))
    return FastMRIBrainFile(path)


def test_fastmri_headers_give_the_contextmri_prompt(tmp_path):
    flair = _fastmri_file(tmp_path, "AXFLAIR")[1].metadata  # AXFLAIR_HEADER: TR 9000, TE 86, TI 2500
    assert flair.ti == 2500 and flair.ti_stored == 2500
    prompt = build_prompt(flair, CONTEXTMRI_FIELDS)
    print(f"\nAXFLAIR header -> {prompt}")
    assert prompt == "brain, Slice 1, FLAIR, Sequence: TurboSpinEcho, TR: 9000, TE: 86, TI: 2500, Flip angle: 150"
    t2 = _fastmri_file(tmp_path, "AXT2", tr=6190.0, te=113.0, ti=100.0, flip_angle=174.0,
                       protocol_name="AX T2")[0].metadata
    assert t2.ti is None and t2.ti_stored == 100.0  # the placeholder: not a TI, but printed by ContextMRI
    prompt = build_prompt(t2, CONTEXTMRI_FIELDS)
    print(f"AXT2 TSE header -> {prompt}")
    assert prompt == GOLDEN[("file_brain_AXT2_200_2000019", 0)]


# -- training and evaluation prompts ---------------------------------------------------------------
def _within_4_sigma(measured: float, p: float, n: int) -> bool:
    return abs(measured - p) <= 4 * (p * (1 - p) / n) ** 0.5


def test_training_prompts_follow_contextmri_rates_and_eval_keeps_the_block(tiny_dir, table):
    from metamri.encoders import TextEncoder

    enc = TextEncoder(path=tiny_dir, context_dim=32)  # ContextMRI's CLIP layout, identity projection
    assert enc.fields == CONTEXTMRI_FIELDS and enc.prompt_style == "contextmri"
    dropout = instantiate(OmegaConf.load(CONF / "dropout" / "contextmri.yaml"))
    n = 20000
    drop = dropout.sample(n, enc.fields, torch.Generator().manual_seed(0))
    rec = table.get("file_brain_AXFLAIR_200_6002462", 0)
    full = GOLDEN[("file_brain_AXFLAIR_200_6002462", 0)]
    core = "brain, Slice 0, FLAIR, Pathology: 2 Nonspecific white matter lesion"
    prompts = [contextmri_prompt(rec, enc.fields, {f for f, d in zip(enc.fields, row, strict=True) if d})
               for row in drop.tolist()]
    assert set(prompts) == {"", core, full}
    rates = {k: sum(p == k for p in prompts) / n for k in ("", core, full)}
    want = {"": 0.1, core: 0.9 * 0.5, full: 0.9 * 0.5}
    print(f"\ncontextmri dropout over {n} samples: empty {rates['']:.4f} (0.1), no acquisition block "
          f"{rates[core]:.4f} (0.45), full {rates[full]:.4f} (0.45)")
    for k in want:
        assert _within_4_sigma(rates[k], want[k], n), (k, rates[k])
    assert enc.prompts([rec] * 3, drop[:3]) == prompts[:3]  # the encoder builds the same prompts
    # evaluation / inference: nothing dropped, so the block is always there (ContextMRI's p = 1.0)
    records = [table.get(*key) for key in GOLDEN]
    assert enc.prompts(records) == list(GOLDEN.values())


def test_the_contextmri_module_evaluates_on_full_prompts(tiny_dir, table):
    from metamri.training import MetaDiffusionModule

    module = MetaDiffusionModule(
        unet={"_target_": "metamri.models.unet.build_unet", "pretrained": str(tiny_dir)},
        encoder={"_target_": "metamri.encoders.text.TextEncoder", "path": str(tiny_dir)},
        dropout=OmegaConf.to_container(OmegaConf.load(CONF / "dropout" / "contextmri.yaml")),
        ema_decay=None,
    )
    records = [table.get(*key) for key in GOLDEN]
    with torch.no_grad():  # what validation, the sampler and the CLIs call: no drop mask
        ctx = module.context(records)
        want = module.encoder.embed_prompts(list(GOLDEN.values()))
    assert torch.equal(ctx, want)  # identity projection: the CLIP states of the full prompts
    rates = module.dropout.expected_rates(module.encoder.fields)
    assert dict(zip(module.encoder.fields, rates.tolist(), strict=True)) == pytest.approx(
        {"anatomy": 0.1, "slice": 0.1, "contrast": 0.1, "pathology": 0.1, "sequence": 0.55, "tr": 0.55,
         "te": 0.55, "ti": 0.55, "flip_angle": 0.55})
