"""A diffusers directory in ContextMRI's layout is a first-class prior.

Scored as-is: the module built from the directory predicts exactly what diffusers'
own components (CLIP tokenizer -> CLIPTextModel without attention mask -> UNet, as
ContextMRI's pipeline calls them) predict for the same prompt. Fine-tuned: training
from ``model=pretrained`` starts at the directory's weights and moves off them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metamri.errors import ConfigError
from metamri.metadata import Metadata
from metamri.models.tiny_contextmri import write_tiny_contextmri
from metamri.priors import load_prior

META = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3.0, tr=9000.0,
                te=86.0, ti=2500.0, flip_angle=150.0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_contextmri(tmp_path_factory.mktemp("prior") / "tiny_contextmri")


def _reference_eps(root: Path, prompt: str, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """eps of the directory's own diffusers/transformers objects, called as ContextMRI calls them."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    text = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True).eval()
    unet = UNet2DConditionModel.from_pretrained(root / "unet", local_files_only=True).eval()
    ids = tok([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = text(ids, attention_mask=None)[0]
        return unet(x_t, torch.tensor([t]), encoder_hidden_states=states).sample


def test_directory_prior_predicts_what_the_release_predicts(tiny_dir):
    module = load_prior(tiny_dir)
    x_t = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    prompt = module.encoder.prompts([META])[0]
    assert prompt.startswith("brain, Slice 3, ")
    with torch.no_grad():
        ours = module.eps(x_t, 500, [META])
        uncond = module.eps(x_t, 500, [META], module.encoder.drop_all(1))
    ref = _reference_eps(tiny_dir, prompt, x_t, 500)
    ref_uncond = _reference_eps(tiny_dir, "", x_t, 500)
    assert (ours - ref).abs().max().item() < 1e-6
    assert (uncond - ref_uncond).abs().max().item() < 1e-6
    assert (ours - uncond).abs().max().item() > 1e-4  # the prompt matters to the UNet
    assert module.ema_decay is None


def test_directory_prior_errors_name_the_missing_part(tmp_path, tiny_dir):
    import shutil

    broken = tmp_path / "no_text"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(ConfigError, match="text_encoder"):
        load_prior(broken)
    with pytest.raises(ConfigError, match="unet"):
        load_prior(tmp_path)
    with pytest.raises(ConfigError, match="no such"):
        load_prior(tmp_path / "missing.ckpt")


def test_train_fine_tunes_a_directory_prior(tiny_data, tiny_dir, tmp_path):
    """``+experiment=contextmri model=pretrained model.path=DIR`` trains from the directory's weights."""
    from diffusers import UNet2DConditionModel
    from omegaconf import open_dict

    from metamri.train import train
    from metamri.training.module import MetaDiffusionModule
    from tests.conftest import compose_train

    cfg = compose_train(["+experiment=contextmri", "model=pretrained", f"model.path={tiny_dir}",
                         "trainer.max_steps=2", "optimizer.lr=1e-3"], tmp_path, tiny_data)
    with open_dict(cfg):
        cfg.callbacks = {"ckpt": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                  "dirpath": str(tmp_path / "run" / "checkpoints"), "save_last": True}}
    assert cfg.module.encoder.path == str(tiny_dir)
    train(cfg)
    tuned = MetaDiffusionModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt",
                                                     map_location="cpu")
    start = UNet2DConditionModel.from_pretrained(tiny_dir / "unet", local_files_only=True)
    moved = {n: (p - start.state_dict()[n]).abs().max().item() for n, p in tuned.unet.state_dict().items()}
    assert max(moved.values()) > 0  # it trained
    assert tuned.unet.config.addition_embed_type == "text"  # the released architecture, not a preset
    assert len(moved) == len(start.state_dict())
