"""Attention by token: agreement with diffusers' explicit attention, the gate, and token labels.

Uses the study's committed concatenated prior (experiments/study/priors/concat: the
ContextMRI layout with SimpleCrossAttn blocks and the gated concatenation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor

from metamri.interpret.attention import (
    IMAGE_GROUP,
    AttentionRecorder,
    attention_table,
    token_labels,
)
from metamri.metadata import Metadata

REPO = Path(__file__).resolve().parents[1]
CONCAT = REPO / "experiments" / "study" / "priors" / "concat"
META = Metadata(anatomy="brain", slice=2.0, contrast="AXFLAIR", sequence="TurboSpinEcho", tr=9000.0, te=120.0,
                ti=2500.0, ti_stored=2500.0, flip_angle=150.0)


@pytest.fixture(scope="module")
def concat():
    from metamri.priors import load_prior

    torch.manual_seed(0)
    return load_prior(CONCAT).eval()


def explicit_shares(module, x, t, ctx) -> dict[str, torch.Tensor]:
    """diffusers' non-fused AttnAddedKVProcessor on every context-reading block, capturing the
    probabilities of ``Attention.get_attention_scores``: block -> (B, Lk) mean over heads, queries."""
    unet = module.unet
    saved = dict(unet.attn_processors)
    captured: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in unet.named_modules() if isinstance(m, Attention) and m.added_kv_proj_dim is not None}
    original = Attention.get_attention_scores

    def capture(self, query, key, attention_mask=None):
        probs = original(self, query, key, attention_mask)
        b = x.shape[0]
        captured[names[self]] = probs.view(b, self.heads, *probs.shape[1:]).mean(dim=(1, 2)).double()
        return probs

    try:
        for m in names:
            m.set_processor(AttnAddedKVProcessor())
        Attention.get_attention_scores = capture
        with torch.no_grad():
            module.eps_from_context(x, t, ctx)
    finally:
        Attention.get_attention_scores = original
        unet.set_attn_processor(saved)
    return captured


def record(module, x, t, ctx) -> AttentionRecorder:
    with AttentionRecorder(module.unet) as rec, torch.no_grad():
        module.eps_from_context(x, t, ctx)
    return rec


def test_shares_agree_with_diffusers_explicit_attention_at_gate_one(concat):
    enc = concat.encoder
    old = enc.gate.detach().clone()
    try:
        with torch.no_grad():
            enc.gate.fill_(1.0 / enc.gate_scale)  # g = 1: the gated concatenation is plain concatenation
        assert float(enc.gate_value().detach()) == pytest.approx(1.0)
        x = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(0))
        ctx = concat.context([META, META.replace(contrast="AXT2")])
        rec = record(concat, x, 300, ctx)
        ref = explicit_shares(concat, x, 300, ctx)
    finally:
        with torch.no_grad():
            enc.gate.copy_(old)
    assert len(rec.shares) == len(ref) == len(rec.blocks) >= 4
    n_ctx = ctx.shape[1]
    for _call, block, shares, image in rec.shares:
        np.testing.assert_allclose(shares, ref[block][:, :n_ctx].numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(image, ref[block][:, n_ctx:].sum(-1).numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(shares.sum(-1) + image, 1.0, rtol=1e-6)
    assert rec.timesteps == [300]


def test_a_shut_gate_gives_the_appended_tokens_no_attention_and_the_text_its_own(concat):
    enc = concat.encoder
    old = enc.gate.detach().clone()
    x = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            enc.gate.zero_()
        ctx = concat.context([META])
        rec = record(concat, x, 500, ctx)
    finally:
        with torch.no_grad():
            enc.gate.copy_(old)
    n_text = enc.text.max_length
    # the text model alone: the first 77 tokens through diffusers' own processor, no gating
    pool = concat.unet.add_embedding.pool  # the gated pooling: told the context has no appended tokens
    gate_info = pool.__dict__["_metamri_gate"]
    try:
        object.__setattr__(pool, "_metamri_gate", (gate_info[0], n_text, 0))
        ref = explicit_shares(concat, x, 500, ctx[:, :n_text])
    finally:
        object.__setattr__(pool, "_metamri_gate", gate_info)
    for _call, block, shares, image in rec.shares:
        assert np.all(shares[:, n_text:] == 0.0)
        np.testing.assert_allclose(shares[:, :n_text], ref[block][:, :n_text].numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(image, ref[block][:, n_text:].sum(-1).numpy(), rtol=1e-4, atol=1e-7)


def test_token_labels_name_the_prompt_fields_and_the_field_tokens(concat):
    enc = concat.encoder
    ctx = concat.context([META])
    labels = token_labels(enc, META, ctx.shape[1])
    assert len(labels) == ctx.shape[1] == enc.text.max_length + 1 + len(enc.fields)
    assert labels[0] == "text:start" and labels[enc.text.max_length - 1] == "text:end"
    assert labels[enc.text.max_length] == "sep"
    assert labels[enc.text.max_length + 1:] == [f"field:{f}" for f in enc.fields]
    text = labels[:enc.text.max_length]
    for name in ("anatomy", "slice", "contrast", "sequence", "tr", "te", "ti", "flip_angle"):
        assert f"text:{name}" in text, name
    # the prompt's words in order: anatomy before slice before contrast ... before flip angle
    firsts = [text.index(f"text:{n}") for n in ("anatomy", "slice", "contrast", "sequence", "tr", "te")]
    assert firsts == sorted(firsts)
    # the tokens of "FLAIR" (the contrast's ContextMRI name) are the contrast's
    tok = enc.text.tokenizer
    ids = tok("brain, Slice 2, FLAIR", padding="max_length", max_length=enc.text.max_length, truncation=True)["input_ids"]
    flair = tok("FLAIR", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i:i + len(flair)] == flair)
    assert text[start:start + len(flair)] == ["text:contrast"] * len(flair)


def test_attention_table_sums_to_one_per_block_and_call(concat):
    x = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(2))
    ctx = concat.context([META])
    with AttentionRecorder(concat.unet) as rec, torch.no_grad():
        concat.eps_from_context(x, 700, ctx)
        concat.eps_from_context(x, 100, ctx)
    table = attention_table(rec, token_labels(concat.encoder, META, ctx.shape[1]))
    totals = table.groupby(["block", "call"])["share"].sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0, rtol=1e-6)
    assert set(table["timestep"]) == {700, 100} and IMAGE_GROUP in set(table["group"])
    assert set(table["call"]) == {0, 1}
    one = table[(table["call"] == 0) & (table["block"] == rec.blocks[0])]
    assert one.loc[one["group"] != IMAGE_GROUP, "n_tokens"].sum() == ctx.shape[1]
    assert one.loc[one["group"] == IMAGE_GROUP, "n_tokens"].item() == 32 * 32  # down block 1 of a 64 px input
