"""UNet presets, the DDPM schedule, and loading a ContextMRI-style diffusers directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metamri.errors import ConfigError
from metamri.models import (
    CONTEXTMRI,
    build_scheduler,
    build_unet,
    load_pretrained,
    unet_context_dim,
)
from tests.helpers import write_tiny_bert

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_tiny_preset_shapes_and_size():
    torch.manual_seed(0)
    unet = build_unet("tiny")
    n = sum(p.numel() for p in unet.parameters())
    assert 1_000_000 < n < 3_000_000, n
    assert unet.config.down_block_types[0] == "DownBlock2D"  # no attention at full resolution
    assert unet_context_dim(unet) == 64
    x = torch.randn(2, 2, 32, 32)
    out = unet(x, torch.tensor([10, 900]), encoder_hidden_states=torch.randn(2, 5, 64)).sample
    assert out.shape == (2, 2, 32, 32) and out.dtype == torch.float32


def test_cross_attention_dim_override_sets_context_width():
    unet = build_unet("tiny", cross_attention_dim=48)
    assert unet_context_dim(unet) == 48
    out = unet(torch.randn(1, 2, 16, 16), torch.tensor([3]),
               encoder_hidden_states=torch.randn(1, 3, 48)).sample
    assert out.shape == (1, 2, 16, 16)


def test_only_two_channel_images():
    with pytest.raises(ConfigError, match="in_channels"):
        build_unet("tiny", in_channels=3)
    with pytest.raises(ConfigError, match="unknown UNet preset"):
        build_unet("huge")


def test_contextmri_preset_matches_published_config():
    # Architecture facts from ContextMRI's configs/unet/config_mri.json; built on the meta
    # device (no memory, no compute) to count parameters and check the forward's shapes.
    with torch.device("meta"):
        unet = build_unet("contextmri")
        out = unet(torch.empty(1, 2, 320, 320), torch.tensor([500]),
                   encoder_hidden_states=torch.empty(1, 77, 768)).sample
    assert out.shape == (1, 2, 320, 320)
    cfg = unet.config
    assert tuple(cfg.block_out_channels) == (192, 384, 576, 768)
    assert cfg.layers_per_block == 3 and cfg.sample_size == 320
    assert cfg.mid_block_type == "UNetMidBlock2DSimpleCrossAttn"
    assert cfg.addition_embed_type == "text" and cfg.encoder_hid_dim_type == "text_proj"
    assert unet_context_dim(unet) == 768 == CONTEXTMRI["encoder_hid_dim"]
    n = sum(p.numel() for p in unet.parameters())
    assert n == 317_903_234, n


def test_linear_ddpm_schedule_closed_form():
    sched = build_scheduler()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.prediction_type == "epsilon"
    torch.testing.assert_close(sched.alphas_cumprod.double(), abar, rtol=1e-5, atol=1e-7)
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 499, 999])
    a, s = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
    want = a * x0.double() + s * eps.double()
    torch.testing.assert_close(sched.add_noise(x0, eps, t).double(), want, rtol=0, atol=1e-5)


def test_pretrained_directory_round_trip(tmp_path):
    """unet/ + scheduler/ + text_encoder/ + tokenizer/ saved, then read back from disk only."""
    torch.manual_seed(0)
    unet = build_unet("tiny")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    write_tiny_bert(tmp_path / "text_encoder")
    write_tiny_bert(tmp_path / "tokenizer")

    loaded = load_pretrained(tmp_path)
    x, t, c = torch.randn(2, 2, 32, 32), torch.tensor([5, 700]), torch.randn(2, 4, 64)
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=c).sample
        b = loaded.unet(x, t, encoder_hidden_states=c).sample
    assert torch.equal(a, b)
    assert loaded.scheduler.config.beta_schedule == "squaredcos_cap_v2"  # not the linear default
    assert torch.equal(loaded.scheduler.alphas_cumprod, sched.alphas_cumprod)
    ids = loaded.tokenizer(["brain, slice 3"], return_tensors="pt").input_ids
    assert ids[0, 0].item() == 2  # [CLS]
    assert loaded.text_encoder.config.hidden_size == 32

    # the same weights through build_unet / build_scheduler (what the model config uses)
    again = build_unet(pretrained=tmp_path, cross_attention_dim=64)
    with torch.no_grad():
        assert torch.equal(again(x, t, encoder_hidden_states=c).sample, a)
    assert build_scheduler(pretrained=tmp_path).config.beta_schedule == "squaredcos_cap_v2"
    with pytest.raises(ConfigError, match="cross_attention_dim"):
        build_unet(pretrained=tmp_path, cross_attention_dim=768)


def test_missing_pretrained_directory_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="unet"):
        build_unet(pretrained=tmp_path)


def test_model_group_files_instantiate():
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    unet = instantiate(cfg.unet)
    sched = instantiate(cfg.scheduler)
    assert isinstance(unet, UNet2DConditionModel) and unet_context_dim(unet) == 64
    assert isinstance(sched, DDPMScheduler) and sched.config.num_train_timesteps == 1000

    cfg = OmegaConf.load(CONF / "model" / "contextmri.yaml")
    with torch.device("meta"):
        unet = instantiate(cfg.unet)
    assert tuple(unet.config.block_out_channels) == (192, 384, 576, 768)
    assert cfg.scheduler.pretrained is None  # follows model.unet.pretrained
    assert instantiate(cfg.scheduler).config.beta_schedule == "linear"
