"""LoRA ``target_modules: auto``: every projection that reads the context carries an adapter.

Counted per projection type on ContextMRI's layout (``contextmri_tiny``: SimpleCrossAttn
blocks, where the context goes through ``add_k_proj``/``add_v_proj``, plus
``encoder_hid_proj`` and the TextTimeEmbedding pooling) and on the ``tiny`` preset
(Transformer2D blocks), against counts derived from the UNet's config; then one
optimizer step of the real training module changes only adapters and the encoder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention

from metamri.data.batch import ImageBatch
from metamri.metadata import Metadata
from metamri.models import build_unet
from metamri.models.tiny_contextmri import write_tiny_contextmri
from metamri.training import LoraFinetune, MetaDiffusionModule
from metamri.training.finetune import adapter_counts, lora_targets
from tests.helpers import image_batch, tensors_changed_by_one_step

FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3,
                 tr=9000, te=86, ti=2500, ti_stored=2500, flip_angle=150)
LORA = {"_target_": "metamri.training.finetune.LoraFinetune", "rank": 4, "alpha": 4}  # target_modules: auto


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_contextmri(tmp_path_factory.mktemp("tiny_contextmri"))


def expected_counts(config) -> dict[str, int]:
    """Adapters per projection type, from the block types of a UNet config alone.

    Transformer2D blocks (``CrossAttn*``) hold one BasicTransformerBlock per layer, with a
    self-attention and a cross-attention; SimpleCrossAttn blocks one ``Attention`` per layer
    (added K/V for the context); up blocks have ``layers_per_block + 1`` layers, mid blocks 1.
    """
    lpb = config.layers_per_block
    transformer = simple = 0
    for kind in config.down_block_types:
        transformer += lpb * kind.startswith("CrossAttn")
        simple += lpb * kind.startswith("SimpleCrossAttn")
    for kind in config.up_block_types:
        transformer += (lpb + 1) * kind.startswith("CrossAttn")
        simple += (lpb + 1) * kind.startswith("SimpleCrossAttn")
    transformer += config.mid_block_type == "UNetMidBlock2DCrossAttn"
    simple += config.mid_block_type == "UNetMidBlock2DSimpleCrossAttn"
    attentions = 2 * transformer + simple
    out = {p: attentions for p in ("to_q", "to_k", "to_v", "to_out.0")}
    if simple:
        out.update(add_k_proj=simple, add_v_proj=simple)
    if config.encoder_hid_dim is not None:
        out["encoder_hid_proj"] = 1
    if config.addition_embed_type == "text":  # TextTimeEmbedding: pooling q/k/v + proj
        out.update({f"add_embedding.{n}": 1 for n in ("pool.q_proj", "pool.k_proj", "pool.v_proj", "proj")})
    return dict(sorted(out.items()))


@pytest.mark.parametrize("preset", ["contextmri_tiny", "tiny"])
def test_auto_targets_every_projection_that_reads_the_context(preset):
    unet = build_unet(preset)
    targets = lora_targets(unet)
    LoraFinetune(rank=4, alpha=4).apply(unet)
    counts, want = adapter_counts(unet), expected_counts(unet.config)
    print(f"\n{preset}: {len(targets)} adapted layers; per type {counts}")
    assert counts == want
    assert len(targets) == sum(want.values()) == len(set(targets))
    # every attention that reads the context has adapters on the projections of the context
    readers = Counter()
    for name, attn in unet.named_modules():
        if not isinstance(attn, Attention):
            continue
        if attn.added_kv_proj_dim is not None:
            context_projs = ("add_k_proj", "add_v_proj")
        elif attn.is_cross_attention:
            context_projs = ("to_k", "to_v")
        else:
            continue
        readers["cross" if attn.is_cross_attention else "self"] += 1
        for proj in context_projs:
            assert hasattr(getattr(attn, proj), "lora_A"), f"{name}.{proj} has no adapter"
    assert readers["cross"] == (want.get("add_k_proj") or want["to_k"] // 2)


def test_explicit_list_still_works_and_leaves_the_rest_frozen():
    unet = LoraFinetune(target_modules=["add_k_proj", "add_v_proj"]).apply(build_unet("contextmri_tiny"))
    assert adapter_counts(unet) == {"add_k_proj": 4, "add_v_proj": 4}


def _batch(size: int, b: int = 4) -> ImageBatch:
    return image_batch([FLAIR.replace(te=80.0 + 10 * i, slice=float(i)) for i in range(b)], size)


@pytest.mark.parametrize("arch", ["contextmri_tiny", "tiny"])
def test_one_lora_step_changes_only_adapters_and_the_encoder(arch, tiny_dir, one_thread):
    torch.manual_seed(0)
    if arch == "contextmri_tiny":  # the released layout, its own CLIP, additive fine-grained fusion
        unet = {"_target_": "metamri.models.unet.build_unet", "pretrained": str(tiny_dir)}
        encoder = {"_target_": "metamri.encoders.fusion.FusionEncoder", "mode": "additive",
                   "text": {"path": str(tiny_dir)}}
        size = 32
    else:
        unet = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
        encoder = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
        size = 16
    m = MetaDiffusionModule(unet=unet, encoder=encoder, finetune=LORA, ema_decay=None,
                            dropout={"_target_": "metamri.training.dropout.FieldDropout", "p": 0.0})
    m.log = lambda *a, **k: None  # no Trainer attached
    changed, unet_changed, enc_changed = tensors_changed_by_one_step(m, _batch(size))
    print(f"\n{arch}: {len(unet_changed)} UNet tensors changed "
          f"({sum('lora_B' in k for k in unet_changed)} lora_B), {len(enc_changed)} encoder tensors")
    assert set(changed) == set(unet_changed) | set(enc_changed)
    assert unet_changed and all("lora_A" in k or "lora_B" in k for k in unet_changed)
    assert set(k for k in m.state_dict() if "lora_B" in k) <= set(unet_changed)  # every adapter got a gradient
    assert enc_changed
