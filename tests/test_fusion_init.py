"""Additive and concatenated fusion start at exactly the text model they extend.

Same UNet, same text encoder, same prompts: at step 0 the fused model's noise
prediction equals the text-only model's (additive: the added vector is exactly
zero; concat: the UNet reads the appended tokens through a gate g = 0), the
gradients that open the fusion are not zero, one optimizer step moves the
prediction away, and a checkpoint rebuilds the gated model exactly.  On ContextMRI's
layout (``contextmri_tiny`` + the tiny CLIP text model of the tiny checkpoint) and on
the ``tiny`` preset (Transformer2D blocks) with a tiny BERT.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from metamri.data.batch import ImageBatch
from metamri.encoders.gated_attention import (
    GatedAddedKVProcessor,
    GatedAttentionPooling,
    GatedCrossAttnProcessor,
    gated_group_norm,
    gated_sdpa,
)
from metamri.metadata import Metadata
from metamri.models import build_unet
from metamri.models.tiny_contextmri import write_tiny_contextmri
from metamri.training import MetaDiffusionModule
from tests.helpers import image_batch, write_tiny_bert

FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3,
                 tr=9000, te=86, ti=2500, ti_stored=2500, flip_angle=150)
T1 = Metadata(anatomy="brain", contrast="AXT1", sequence="Flash", slice=0, tr=250, te=3, ti_stored=300,
              flip_angle=70)
CINE = Metadata(anatomy="heart", contrast="CINE", sequence="TrueFISP", slice=7, tr=40, te=1.4, flip_angle=50)
RECORDS = [FLAIR, T1, CINE, FLAIR.replace(te=120.0, slice=12.0)]
NO_DROPOUT = {"_target_": "metamri.training.dropout.FieldDropout", "p": 0.0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fusion_init")
    torch.manual_seed(0)
    build_unet("tiny").save_pretrained(root / "tiny_unet" / "unet")
    return {"contextmri": write_tiny_contextmri(root / "tiny_contextmri"),
            "tiny_unet": root / "tiny_unet", "bert": write_tiny_bert(root / "bert")}


def _pair(arch: str, mode: str, assets) -> tuple[MetaDiffusionModule, MetaDiffusionModule, int]:
    """(text-only module, fused module, image size) over the same pretrained UNet and text model."""
    if arch == "contextmri_tiny":
        unet_dir, text = assets["contextmri"], {"path": str(assets["contextmri"])}  # identity projection
        size = 32
    else:
        unet_dir, text = assets["tiny_unet"], {"path": str(assets["bert"]), "projection": "trainable"}
        size = 16
    unet = {"_target_": "metamri.models.unet.build_unet", "pretrained": str(unet_dir)}
    torch.manual_seed(0)
    text_only = MetaDiffusionModule(
        unet=unet, encoder={"_target_": "metamri.encoders.text.TextEncoder", "fields": "paper", **text},
        dropout=NO_DROPOUT, ema_decay=None)
    fused = MetaDiffusionModule(
        unet=unet, encoder={"_target_": "metamri.encoders.fusion.FusionEncoder", "mode": mode, "text": text},
        dropout=NO_DROPOUT, ema_decay=None,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.0})
    fused.encoder.fit(RECORDS)
    fused.encoder.text.proj.load_state_dict(text_only.encoder.proj.state_dict())  # same text encoder
    for m in (text_only, fused):
        m.log = lambda *a, **k: None  # no Trainer attached
    return text_only, fused, size


def _batch(size: int) -> ImageBatch:
    return image_batch(RECORDS, size, ["brain", "brain", "cardiac", "brain"])


def _eps(module: MetaDiffusionModule, size: int) -> torch.Tensor:
    """Noise predictions (3 drop masks x 4 records, 2, size, size): nothing, two fields, everything dropped."""
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(len(RECORDS), 2, size, size, generator=g)
    t = torch.tensor([5, 300, 650, 999])
    f = len(module.encoder.fields)
    some = torch.zeros(len(RECORDS), f, dtype=torch.bool)
    some[:, [1, 4]] = True
    with torch.no_grad():
        return torch.cat([module.eps(x_t, t, RECORDS, drop)
                          for drop in (None, some, torch.ones(len(RECORDS), f, dtype=torch.bool))])


# -- the maths of the gate --------------------------------------------------------------------
def _reference(q, k, v, gated, g):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    w = torch.exp(s - s.amax(-1, keepdim=True))
    w = torch.where(gated, w * g, w)
    return (w @ v) / w.sum(-1, keepdim=True)


def test_gated_sdpa_is_the_gated_softmax_with_exact_ends_and_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True),
               torch.randn(2, 3, 11, 4, dtype=torch.float64, requires_grad=True),
               torch.randn(2, 3, 11, 6, dtype=torch.float64, requires_grad=True))
    gated = torch.zeros(11, dtype=torch.bool)
    gated[3:6] = True
    for value in (0.0, 1e-7, 1e-3, 0.4, 1.0, 2.5):
        g = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        torch.testing.assert_close(gated_sdpa(q, k, v, gated, g), _reference(q, k, v, gated, g),
                                   rtol=0, atol=1e-13)
        (ga,) = torch.autograd.grad(gated_sdpa(q, k, v, gated, g).sum(), g)
        (gb,) = torch.autograd.grad(_reference(q, k, v, gated, g).sum(), g)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=0)
        if value >= 1e-3:  # gradcheck perturbs g by 1e-6: keep it >= 0
            assert torch.autograd.gradcheck(lambda *a: gated_sdpa(*a[:3], gated, a[3]), (q, k, v, g))
    zero = torch.zeros((), dtype=torch.float64)
    without = nn.functional.scaled_dot_product_attention(q, k[:, :, ~gated], v[:, :, ~gated])
    torch.testing.assert_close(gated_sdpa(q, k, v, gated, zero), without, rtol=0, atol=1e-14)  # g = 0
    plain = nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(gated_sdpa(q, k, v, gated, zero + 1), plain, rtol=0, atol=1e-14)  # g = 1


def test_a_clamped_gate_passes_gradient_at_exactly_zero():
    theta = nn.Parameter(torch.zeros(()))
    (theta.clamp(min=0.0) * 3.0).backward()
    assert theta.grad == 3.0  # PyTorch's clamp passes the gradient at the boundary


def test_gated_group_norm_ends():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    norm = norm.double()
    ones = torch.ones(10, dtype=torch.float64)
    torch.testing.assert_close(gated_group_norm(x, norm, ones), norm(x.transpose(1, 2)).transpose(1, 2))
    text_only = norm(x[:, :7].transpose(1, 2)).transpose(1, 2)
    gated = torch.cat([ones[:7], torch.zeros(3, dtype=torch.float64)])
    torch.testing.assert_close(gated_group_norm(x, norm, gated)[:, :7], text_only)


# -- the fused models at step 0 and after one step ------------------------------------------------
@pytest.mark.parametrize("mode", ["additive", "concat"])
@pytest.mark.parametrize("arch", ["contextmri_tiny", "tiny"])
def test_fusion_starts_at_the_text_model_and_then_moves(arch, mode, assets, one_thread):
    text_only, fused, size = _pair(arch, mode, assets)
    enc = fused.encoder
    if mode == "concat":
        want = ({"cross_attention": 0, "added_kv": 4, "pooling": 1} if arch == "contextmri_tiny"
                else {"cross_attention": 7, "added_kv": 0, "pooling": 0})
        assert enc.gated_modules == want
        assert float(enc.gate_value().detach()) == 0.0
    eps_text, eps_fused = _eps(text_only, size), _eps(fused, size)
    diff0 = (eps_fused - eps_text).abs().max().item()
    # the gradients that open the fusion, from the real training step
    loss = fused.training_step(_batch(size), 0)
    loss.backward()
    if mode == "additive":
        fg = enc.finegrained
        assert torch.count_nonzero(fg(RECORDS).sum(1)) == 0  # the added vector is exactly zero
        grads = {"empty": fg.empty.grad, "contrast rows": fg.tables["contrast"].weight.grad,
                 "tr MLP last layer": fg.numeric["tr"][-1].weight.grad}
        assert all(g is not None and g.abs().max() > 0 for g in grads.values())
        report = ", ".join(f"max|grad {k}| {g.abs().max().item():.3e}" for k, g in grads.items())
    else:
        gate_grad = enc.gate.grad.item()
        assert gate_grad != 0.0
        report = f"d loss / d gate = {gate_grad:+.4e}"
    # one optimizer step of the fusion alone (the UNet frozen: only what the fusion adds moves)
    fused.unet.requires_grad_(False)
    opt = fused.configure_optimizers()
    opt.step()
    moved = (_eps(fused, size) - eps_fused).abs().max().item()
    print(f"\n{arch} {mode}: step 0 max|eps_fused - eps_text| = {diff0:.3e} "
          f"(max|eps| {eps_text.abs().max().item():.2f}); {report}; after one step "
          f"max|eps change| = {moved:.3e}" + (f", g = {float(enc.gate_value().detach()):.4f}" if mode == "concat" else ""))
    if mode == "additive":
        assert diff0 == 0.0  # text + 0: exactly the text model
        assert moved > 1e-4
    else:
        assert diff0 < 1e-5  # the gated attention at g = 0: the text model to float tolerance
        # projected step: the gate opens where the loss asks for it and stays exactly shut otherwise
        g1 = float(enc.gate_value().detach())
        assert (g1 > 0) == (gate_grad < 0) and float(enc.gate.detach()) >= 0
        assert (moved > 1e-6) == (g1 > 0 or enc.text.projection == "trainable")
    # and a step as the experiments train (UNet and fusion together) always moves it
    fused.unet.requires_grad_(True)
    fused.zero_grad()
    opt = fused.configure_optimizers()
    fused.training_step(_batch(size), 1).backward()
    opt.step()
    assert (_eps(fused, size) - eps_fused).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["additive", "concat"])
def test_the_gate_gradient_is_the_derivative_of_the_loss(mode, assets):
    """d loss / d gate at g = 0 against a finite difference through the whole model (concat);
    additive: a zero-initialised bias of the TR MLP's last layer against its."""
    _, fused, size = _pair("contextmri_tiny", mode, assets)
    batch = _batch(size)
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(batch.image.shape, generator=g)
    t = torch.tensor([10, 300, 600, 900])
    x_t = fused.noise_scheduler.add_noise(batch.image, eps, t)

    def loss() -> torch.Tensor:
        return (fused.eps_from_context(x_t, t, fused.context(batch.metadata)) - eps).pow(2).mean()

    param = fused.encoder.gate if mode == "concat" else fused.encoder.finegrained.numeric["tr"][-1].bias
    loss().backward()
    analytic = param.grad.reshape(-1)[0].item()
    h = 1e-3
    with torch.no_grad():
        base = loss().item()
        param.view(-1)[0] += h
        finite = (loss().item() - base) / h
    print(f"\ncontextmri_tiny {mode}: analytic {analytic:+.4e}, finite difference {finite:+.4e}")
    assert analytic != 0 and abs(analytic - finite) < 0.05 * abs(analytic)


def test_a_shut_gate_opens_again(assets):
    """A step that pushes the gate below 0 is projected back to 0, where the gradient still passes."""
    _, fused, size = _pair("contextmri_tiny", "concat", assets)
    enc = fused.encoder
    with torch.no_grad():
        enc.gate.fill_(-0.3)  # as after an optimizer step that overshot
    fused.context(RECORDS)  # the encoder's forward projects it
    assert float(enc.gate.detach()) == 0.0
    fused.log = lambda *a, **k: None
    fused.training_step(_batch(size), 0).backward()
    assert enc.gate.grad.abs() > 0


def test_concat_processors_cover_every_context_reader(assets):
    _, fused, _ = _pair("contextmri_tiny", "concat", assets)
    procs = [type(m.processor) for m in fused.unet.modules() if isinstance(m, Attention)]
    assert procs and all(p is GatedAddedKVProcessor for p in procs)
    assert type(fused.unet.add_embedding.pool) is GatedAttentionPooling
    _, fused, _ = _pair("tiny", "concat", assets)
    cross = [m for m in fused.unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
    assert cross and all(type(m.processor) is GatedCrossAttnProcessor for m in cross)
    # neither the gate nor the encoder shows up in the UNet's own parameters or state dict
    assert not [n for n in fused.unet.state_dict() if "gate" in n]
    assert sum(p is fused.encoder.gate for p in fused.parameters()) == 1


@pytest.mark.parametrize("arch", ["contextmri_tiny", "tiny"])
def test_gate_init_one_is_plain_concatenation(arch, assets):
    """``gate_init=1``: the gated UNet predicts what diffusers' own processors predict for
    ``[text; SEP; fields]`` (the paper's plain concatenation)."""
    from diffusers import UNet2DConditionModel

    _, fused, size = _pair(arch, "concat", assets)
    fused.encoder.gate.data.fill_(1.0 / fused.encoder.gate_scale)
    unet_dir = assets["contextmri"] if arch == "contextmri_tiny" else assets["tiny_unet"]
    plain = UNet2DConditionModel.from_pretrained(unet_dir / "unet", local_files_only=True).eval()
    x_t = torch.randn(len(RECORDS), 2, size, size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([5, 300, 650, 999])
    with torch.no_grad():
        ctx = fused.context(RECORDS)
        ours = fused.eps_from_context(x_t, t, ctx)
        ref = plain(x_t, t, encoder_hidden_states=ctx).sample
    assert float(fused.encoder.gate_value().detach()) == pytest.approx(1.0)
    assert (ours - ref).abs().max().item() < 1e-5


def test_gate_init_is_a_config_value():
    from metamri.encoders.fusion import FusionEncoder
    from metamri.errors import ConfigError

    with pytest.raises(ConfigError, match="gate_init"):
        FusionEncoder(mode="concat", context_dim=32, gate_init=-1.0)
