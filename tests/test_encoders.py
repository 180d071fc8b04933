"""Metadata encoders: fine-grained field tokens, numeric encodings, text prompts, fusion."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.encoders import (
    FineGrainedEncoder,
    FusionEncoder,
    LearnedEncoding,
    NullEncoder,
    SinusoidalEncoding,
    TextEncoder,
)
from metamri.errors import ConfigError
from metamri.metadata import PAPER_FIELDS, Metadata
from tests.helpers import write_tiny_bert

CONF = Path(__file__).resolve().parents[1] / "conf"
D = 16

FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3,
                 tr=9000, te=86, ti=2500, flip_angle=150)
T1 = Metadata(anatomy="brain", contrast="AXT1", sequence="Flash", slice=0, tr=250, te=3, flip_angle=70)
CINE = Metadata(anatomy="heart", contrast="CINE", sequence="TrueFISP", slice=7, tr=40, te=1.4,
                flip_angle=50)
RECORDS = [FLAIR, T1, CINE, FLAIR.replace(te=120, slice=12)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture()
def fitted() -> FineGrainedEncoder:
    torch.manual_seed(0)
    return FineGrainedEncoder(fields="paper", context_dim=D).fit(RECORDS)


# -- fine-grained -------------------------------------------------------------------------
def test_one_token_per_field(fitted):
    tok = fitted([FLAIR, T1, CINE])
    assert fitted.fields == PAPER_FIELDS
    assert tok.shape == (3, len(PAPER_FIELDS), D) and tok.dtype == torch.float32


def test_changing_te_changes_only_the_te_token(fitted):
    j = fitted.fields.index("te")
    a, b = fitted([FLAIR, FLAIR.replace(te=120.0)])
    diff = (a - b).abs().amax(dim=-1)
    print(f"\nTE 86 -> 120 ms: token max|diff| per field {dict(zip(fitted.fields, diff.tolist(), strict=True))}")
    assert diff[j] > 1e-4
    assert torch.equal(torch.cat([a[:j], a[j + 1:]]), torch.cat([b[:j], b[j + 1:]]))


def test_dropped_and_missing_fields_give_exactly_the_empty_token(fitted):
    j = fitted.fields.index("te")
    drop = torch.zeros(2, len(fitted.fields), dtype=torch.bool)
    drop[0, j] = True
    dropped, kept = fitted([FLAIR, FLAIR], drop)
    missing = fitted([FLAIR.without(["te"])])[0]
    assert torch.equal(dropped[j], fitted.empty[j])
    assert torch.equal(missing[j], fitted.empty[j])
    assert not torch.equal(kept[j], fitted.empty[j])
    everything = fitted([CINE], fitted.drop_all(1))[0]
    assert torch.equal(everything, fitted.empty)  # the unconditional context


def test_numeric_ranges_fitted_from_records(fitted):
    ranges = fitted.numeric_ranges
    assert ranges.ranges["tr"] == (40.0, 9000.0)  # min and max over RECORDS
    assert ranges.normalize("tr", 40.0) == 0.0 and ranges.normalize("tr", 9000.0) == 1.0
    j = fitted.fields.index("tr")
    lo, hi, beyond = fitted([CINE, FLAIR, FLAIR.replace(tr=20000.0)])[:, j]
    mlp = fitted.numeric["tr"]
    with torch.no_grad():
        want = mlp(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(lo, want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(hi, want[1], rtol=0, atol=1e-6)
    assert (lo - hi).abs().max() > 1e-3
    assert torch.equal(beyond, hi)  # clipped to the training range


def test_unseen_category_uses_the_unknown_row(fitted):
    j = fitted.fields.index("contrast")
    table = fitted.tables["contrast"].weight
    seen, unseen = fitted([FLAIR, FLAIR.replace(contrast="AXPD")])[:, j]
    assert fitted.vocabulary.index("contrast", "AXPD") == 0
    assert torch.equal(unseen, table[0])
    assert torch.equal(seen, table[fitted.vocabulary.index("contrast", "AXFLAIR")])
    assert not torch.equal(seen, unseen)


def test_multilabel_field_is_the_mean_of_its_labels():
    enc = FineGrainedEncoder(fields=["pathology"], context_dim=D)
    table = enc.tables["pathology"].weight
    tok = enc([Metadata(pathology=("normal", "lesion")), Metadata(pathology=("lesion",))])[:, 0]
    i_n, i_l = enc.vocabulary.index("pathology", "normal"), enc.vocabulary.index("pathology", "lesion")
    torch.testing.assert_close(tok[0], (table[i_n] + table[i_l]) / 2, rtol=0, atol=1e-7)
    assert torch.equal(tok[1], table[i_l])
    # repeated labels (ContextMRI's per-annotation lists) do not re-weight the mean
    again = enc([Metadata(pathology=("lesion", "normal", "lesion"))])[0, 0]
    torch.testing.assert_close(again, tok[0], rtol=0, atol=1e-7)
    assert Metadata(pathology=("b", "a", "b")).pathology == ("b", "a", "b")  # order and repeats kept


def test_state_dict_alone_rebuilds_the_fitted_encoder():
    torch.manual_seed(1)
    enc = FineGrainedEncoder(fields="all", context_dim=D).fit(RECORDS + [FLAIR.replace(contrast="AXPD")])
    assert enc.tables["contrast"].num_embeddings == 8  # unknown + 6 seeds + AXPD
    fresh = FineGrainedEncoder(fields="all", context_dim=D)
    assert fresh.needs_fit and fresh.tables["contrast"].num_embeddings == 7
    fresh.load_state_dict(enc.state_dict())
    assert not fresh.needs_fit
    assert fresh.tables["contrast"].num_embeddings == 8
    assert fresh.numeric_ranges == enc.numeric_ranges and fresh.vocabulary == enc.vocabulary
    batch = [*RECORDS, FLAIR.replace(contrast="AXPD")]
    assert torch.equal(fresh(batch), enc(batch))
    with pytest.raises(ConfigError, match="fields"):
        FineGrainedEncoder(fields="paper", context_dim=D).load_state_dict(enc.state_dict(), strict=False)


def test_bad_drop_mask_shape_is_named(fitted):
    with pytest.raises(ValueError, match="drop mask has shape"):
        fitted([FLAIR], torch.zeros(1, 3, dtype=torch.bool))


# -- numeric encodings --------------------------------------------------------------------
def test_sinusoidal_encoding_closed_form():
    enc = SinusoidalEncoding(8, max_period=10000, scale=1000)
    v = torch.tensor([0.0, 0.25, 1.0])
    k = torch.arange(4, dtype=torch.float64)
    w = torch.exp(-math.log(10000) * k / 4)
    arg = v.double()[:, None] * 1000 * w[None]
    want = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)
    torch.testing.assert_close(enc(v).double(), want, rtol=0, atol=2e-4)
    with pytest.raises(ConfigError):
        SinusoidalEncoding(7)


def test_per_field_learned_encoding():
    enc = FineGrainedEncoder(fields="paper", context_dim=D, per_field={"te": "learned"})
    assert isinstance(enc.numeric["te"][0], LearnedEncoding)
    assert isinstance(enc.numeric["tr"][0], SinusoidalEncoding)
    enc.fit(RECORDS)
    j = enc.fields.index("te")
    a, b = enc([FLAIR, FLAIR.replace(te=120.0)])[:, j]
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="per_field"):
        FineGrainedEncoder(fields="paper", context_dim=D, per_field={"contrast": "learned"})
    with pytest.raises(ConfigError, match="unknown numeric encoding"):
        FineGrainedEncoder(fields="paper", context_dim=D, per_field={"te": "fourier"})


# -- text ---------------------------------------------------------------------------------
def test_text_encoder_prompts_follow_the_drop_mask(bert_dir):
    enc = TextEncoder(fields="paper", context_dim=D, path=bert_dir, projection="trainable", prompt="metamri")
    drop = torch.zeros(2, len(enc.fields), dtype=torch.bool)
    drop[0, enc.fields.index("te")] = True
    drop[1] = True
    p = enc.prompts([FLAIR, FLAIR], drop)
    assert p[0] == "brain, Slice 3, AXFLAIR, Sequence: TurboSpinEcho, TR: 9000, TI: 2500, Flip angle: 150"
    assert p[1] == ""
    # the default style is ContextMRI's: its contrast names, and the acquisition block is
    # all-or-nothing (dropping TE leaves the whole block out)
    cmri = TextEncoder(fields="paper", context_dim=D, path=bert_dir, projection="trainable")
    assert cmri.prompt_style == "contextmri"
    assert cmri.prompts([FLAIR, FLAIR], drop) == ["brain, Slice 3, FLAIR", ""]
    assert cmri.prompts([FLAIR]) == [
        "brain, Slice 3, FLAIR, Sequence: TurboSpinEcho, TR: 9000, TE: 86, TI: 2500, Flip angle: 150"]
    with pytest.raises(ConfigError, match="unknown prompt style"):
        TextEncoder(context_dim=D, path=bert_dir, projection="trainable", prompt="clip")
    tok = enc([FLAIR, FLAIR, T1], torch.cat([drop, torch.zeros(1, len(enc.fields), dtype=torch.bool)]))
    assert tok.shape == (3, 77, D)
    full = enc([FLAIR])
    assert (full[0] - tok[0]).abs().max() > 1e-5  # dropping TE changed the context
    assert (full[0] - tok[1]).abs().max() > 1e-5


def test_text_encoder_keeps_only_the_projection_in_its_state(bert_dir):
    enc = TextEncoder(fields="paper", context_dim=D, path=bert_dir, projection="trainable")
    assert set(enc.state_dict()) == {"proj.weight", "proj.bias"}
    assert [n for n, _ in enc.named_parameters()] == ["proj.weight", "proj.bias"]
    assert all(not p.requires_grad for p in enc.backbone.parameters())
    enc([FLAIR, T1, FLAIR])
    assert len(enc._cache) == 2  # two distinct prompts, embedded once each
    states = enc.embed_prompts([build := enc.prompts([FLAIR])[0]])
    assert torch.equal(states[0], enc._cache[build])


def test_text_projection_starts_as_identity_when_widths_match(bert_dir):
    enc = TextEncoder(fields="paper", context_dim=32, path=bert_dir)  # hidden 32, projection identity
    prompt = enc.prompts([FLAIR])
    assert torch.equal(enc([FLAIR]), enc.embed_prompts(prompt))
    assert enc.projection == "identity" and not list(enc.parameters()) and not enc.state_dict()
    trainable = TextEncoder(fields="paper", context_dim=32, path=bert_dir, projection="trainable")
    assert torch.equal(trainable([FLAIR]), enc([FLAIR]))  # a trainable Linear that starts as the identity
    assert [n for n, _ in trainable.named_parameters()] == ["proj.weight", "proj.bias"]


def test_identity_projection_between_different_widths_is_an_error_naming_both(bert_dir):
    with pytest.raises(ConfigError) as err:
        TextEncoder(fields="paper", context_dim=D, path=bert_dir)
    msg = str(err.value)
    print(f"\n{msg}")
    for word in ("encoder.projection", str(bert_dir), "bert", "width 32", f"width {D}", "trainable"):
        assert word in msg, (word, msg)
    with pytest.raises(ConfigError, match="unknown projection"):
        TextEncoder(context_dim=32, path=bert_dir, projection="linear")
    with pytest.raises(ConfigError, match=r"encoder\.text\.projection"):  # the fusion's text half
        FusionEncoder(context_dim=D, mode="additive", text={"path": bert_dir})


def test_real_minilm_distinguishes_prompts():
    enc = TextEncoder(fields="paper", context_dim=D, projection="trainable")  # MiniLM from the wheel
    assert enc.hidden_dim == 384 and enc.use_attention_mask
    states = enc.embed_prompts(enc.prompts([FLAIR, FLAIR.replace(te=120.0)]))
    diff = (states[0] - states[1]).abs().max().item()
    print(f"\nMiniLM: TE 86 vs 120 prompt states max|diff| = {diff:.4f}")
    assert states.shape == (2, 77, 384) and diff > 1e-3


# -- fusion and unconditional -------------------------------------------------------------
def test_additive_fusion_adds_the_summed_field_tokens_to_every_text_token(bert_dir):
    torch.manual_seed(0)
    enc = FusionEncoder(fields="paper", context_dim=D, mode="additive",
                        text={"path": bert_dir, "projection": "trainable"})
    enc.fit(RECORDS)
    drop = torch.zeros(2, len(enc.fields), dtype=torch.bool)
    drop[1, 2] = True
    out = enc([FLAIR, T1], drop)
    want = enc.text([FLAIR, T1], drop) + enc.finegrained([FLAIR, T1], drop).sum(1, keepdim=True)
    assert out.shape == (2, 77, D)
    assert torch.equal(out, want)


def test_concat_fusion_layout(bert_dir):
    enc = FusionEncoder(fields="paper", context_dim=D, mode="concat",
                        text={"path": bert_dir, "projection": "trainable"})
    enc.fit(RECORDS)
    out = enc([FLAIR, CINE])
    f = len(enc.fields)
    assert out.shape == (2, 77 + 1 + f, D)
    assert torch.equal(out[:, :77], enc.text([FLAIR, CINE]))
    assert torch.equal(out[:, 77], enc.sep.expand(2, D))
    assert torch.equal(out[:, 78:], enc.finegrained([FLAIR, CINE]))
    with pytest.raises(ConfigError, match="unknown fusion"):
        FusionEncoder(context_dim=D, mode="multiply", text={"path": bert_dir})


def test_null_encoder_is_one_zero_token():
    enc = NullEncoder(context_dim=D)
    out = enc([FLAIR, T1, CINE], torch.zeros(3, 0, dtype=torch.bool))
    assert out.shape == (3, 1, D) and torch.count_nonzero(out) == 0
    assert enc.fields == () and not list(enc.parameters())


# -- config files -------------------------------------------------------------------------
def test_encoder_group_files_instantiate(bert_dir):
    assert isinstance(instantiate(OmegaConf.load(CONF / "encoder" / "none.yaml")), NullEncoder)
    fg = instantiate(OmegaConf.load(CONF / "encoder" / "finegrained.yaml"), context_dim=D)
    assert isinstance(fg, FineGrainedEncoder) and fg.fields == PAPER_FIELDS and fg.context_dim == D
    for mode in ("additive", "concat"):
        cfg = OmegaConf.load(CONF / "encoder" / f"{mode}.yaml")
        cfg.text.path = str(bert_dir)
        cfg.text.projection = "trainable"
        enc = instantiate(cfg, context_dim=D)
        assert isinstance(enc, FusionEncoder) and enc.mode == mode
        assert enc([FLAIR]).shape[-1] == D
    text = instantiate(OmegaConf.load(CONF / "encoder" / "text.yaml"), path=str(bert_dir), context_dim=D,
                       projection="trainable")
    assert isinstance(text, TextEncoder) and text.max_length == 77
    assert text.prompt_style == "contextmri" and "pathology" in text.fields
    # the text model and its projection come from the model group: one knob each, for every encoder
    for name in ("text", "additive", "concat"):
        raw = OmegaConf.to_container(OmegaConf.load(CONF / "encoder" / f"{name}.yaml"))
        part = raw if name == "text" else raw["text"]
        assert part["path"] == "${model.text_encoder}"
        assert part["projection"] == "${oc.select:model.text_projection,identity}"
    for model in CONF.glob("model/*.yaml"):
        assert "text_encoder" in OmegaConf.load(model), model
