"""Full vs LoRA fine-tuning: what trains, what the optimizer sees, what one step changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.data.batch import ImageBatch
from metamri.errors import ConfigError
from metamri.metadata import Metadata
from metamri.models import build_unet
from metamri.training import (
    FullFinetune,
    LoraFinetune,
    MetaDiffusionModule,
    parameter_counts,
    trainable_parameters,
)
from tests.helpers import image_batch, tensors_changed_by_one_step

CONF = Path(__file__).resolve().parents[1] / "conf"
UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
ENCODER = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3,
                 tr=9000, te=86, ti=2500, flip_angle=150)


def _batch(b: int = 4, size: int = 32) -> ImageBatch:
    return image_batch([FLAIR.replace(te=80.0 + 10 * i, slice=float(i)) for i in range(b)], size)


def _module(finetune: dict) -> MetaDiffusionModule:
    torch.manual_seed(0)
    m = MetaDiffusionModule(unet=UNET, encoder=ENCODER, finetune=finetune,
                            dropout={"_target_": "metamri.training.dropout.FieldDropout", "p": 0.0},
                            ema_decay=None)
    m.log = lambda *a, **k: None  # no Trainer attached
    return m


def test_lora_trainable_parameter_counts():
    full = _module({"_target_": "metamri.training.finetune.FullFinetune"})
    lora = _module({"_target_": "metamri.training.finetune.LoraFinetune", "rank": 4, "alpha": 4})
    cf, cl = full.parameter_counts(), lora.parameter_counts()
    lora_elems = sum(p.numel() for n, p in lora.unet.named_parameters() if "lora_" in n)
    print(f"\nfull: {cf}\nlora: {cl}; LoRA adapter elements {lora_elems}")
    assert cf["trainable"] == cf["total"]
    assert cl["trainable"] == lora_elems + cl["encoder"]
    assert cl["total"] == cf["total"] + lora_elems  # the base UNet is unchanged, adapters added
    assert cl["trainable"] < 0.1 * cf["trainable"]
    # the optimizer sees exactly the trainable parameters
    opt = lora.configure_optimizers()
    seen = {id(p) for group in opt.param_groups for p in group["params"]}
    assert seen == {id(p) for p in lora.parameters() if p.requires_grad}


def test_lora_adapters_start_as_the_identity():
    torch.manual_seed(0)
    unet = build_unet("tiny")
    x, t, c = torch.randn(2, 2, 32, 32), torch.tensor([1, 800]), torch.randn(2, 3, 64)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=c).sample
        LoraFinetune(rank=4, alpha=4).apply(unet)
        after = unet(x, t, encoder_hidden_states=c).sample
    assert torch.equal(before, after)  # lora_B is zero-initialised
    names = [n for n, _ in unet.named_parameters() if "lora_A" in n]
    assert names and all(any(k in n for k in ("to_q", "to_k", "to_v", "to_out.0")) for n in names)
    counts = parameter_counts(unet)
    assert counts["trainable"] == sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


def test_one_lora_step_changes_only_adapters_and_encoder():
    m = _module({"_target_": "metamri.training.finetune.LoraFinetune", "rank": 4, "alpha": 4})
    changed, unet_changed, enc_changed = tensors_changed_by_one_step(m, _batch())
    print(f"\n{len(changed)} tensors changed: {len(unet_changed)} in the UNet "
          f"({sum('lora_A' in k for k in unet_changed)} lora_A, {sum('lora_B' in k for k in unet_changed)} lora_B), "
          f"{len(enc_changed)} in the encoder: {enc_changed}")
    assert unet_changed and all(("lora_A" in k or "lora_B" in k) for k in unet_changed)
    all_lora_b = [k for k in m.state_dict() if "lora_B" in k]
    assert set(all_lora_b) <= set(unet_changed)  # every adapter got a gradient step
    assert enc_changed
    assert set(changed) == set(unet_changed) | set(enc_changed)


def test_full_finetune_trains_every_parameter():
    unet = FullFinetune().apply(build_unet("tiny"))
    assert len(trainable_parameters(unet)) == len(list(unet.parameters()))


def test_bad_lora_configs():
    with pytest.raises(ConfigError, match="rank"):
        LoraFinetune(rank=0)
    with pytest.raises((ConfigError, ValueError)):
        LoraFinetune(target_modules=["no_such_projection"]).apply(build_unet("tiny"))
    with pytest.raises(ConfigError, match="auto"):
        LoraFinetune(target_modules="everything")


def test_finetune_group_files_instantiate():
    assert isinstance(instantiate(OmegaConf.load(CONF / "finetune" / "full.yaml")), FullFinetune)
    lora = instantiate(OmegaConf.load(CONF / "finetune" / "lora.yaml"))
    assert isinstance(lora, LoraFinetune)
    assert (lora.rank, lora.alpha, lora.target_modules) == (4, 4.0, "auto")
    explicit = LoraFinetune(target_modules=["to_k", "to_v"])  # an explicit list still works
    unet = explicit.apply(build_unet("tiny"))
    adapted = {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for n, _ in unet.named_parameters() if "lora_A" in n}
    assert adapted == {"to_k", "to_v"} and explicit.resolved_targets == ["to_k", "to_v"]
