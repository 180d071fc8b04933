"""The shipped base prior's parts: its tokenizer, its initial directory, and the export
of a trained text-conditioned checkpoint back to ContextMRI's diffusers layout.

The export is checked as a round trip: the exported directory, loaded as a prior,
predicts what the module predicted with its EMA weights (not its raw ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metamri.errors import ConfigError
from metamri.export import export_module
from metamri.metadata import Metadata
from metamri.models.base_prior import PROMPT_WORDS, write_base_init, write_prompt_tokenizer
from metamri.models.tiny_contextmri import write_tiny_contextmri
from metamri.priors import diffusers_prior_config, load_prior
from metamri.training.module import MetaDiffusionModule

META = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3.0, tr=9000.0,
                te=86.0, ti=2500.0, ti_stored=2500.0, flip_angle=150.0,
                pathology=("Nonspecific white matter lesion", "Nonspecific white matter lesion"))


#: ContextMRI's own prompts for rows of its brain table (tests/test_contextmri_prompt.py).
GOLDEN_PROMPTS = (
    "brain, Slice 0, FLAIR, Pathology: 2 Nonspecific white matter lesion, 3 Dural thickening, "
    "1 Encephalomalacia, Sequence: TurboSpinEcho, TR: 9000, TE: 81, TI: 2500, Flip angle: 150",
    "brain, Slice 0, T2, Sequence: TurboSpinEcho, TR: 6190, TE: 113, TI: 100, Flip angle: 174",
    "brain, Slice 0, T1 post-contrast, Pathology: 1 Normal for age, Sequence: Flash, TR: 250, TE: 2, "
    "TI: 300, Flip angle: 70",
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    path = write_prompt_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def test_prompt_words_are_single_tokens(tokenizer):
    for word in PROMPT_WORDS:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))  # start, word, end


def test_contextmri_prompts_fit_clip_context(tokenizer):
    """ContextMRI's golden prompts tokenize well within 77 tokens, words whole, digits alone
    (as CLIP splits them), and decode back to the lower-cased prompt."""
    from metamri.metadata.prompt import contextmri_prompt

    prompts = [contextmri_prompt(META), *GOLDEN_PROMPTS]
    for prompt in prompts:
        ids = tokenizer(prompt).input_ids
        assert len(ids) <= 60, (prompt, len(ids))
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert "turbospinecho</w>" in tokens or "flash</w>" in tokens
        decoded = tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")
        assert decoded == prompt.lower().replace(" ", "")


def test_base_init_is_a_directory_prior(tmp_path):
    root = write_base_init(tmp_path / "init")
    module = load_prior(root)
    cfg = json.loads((root / "unet" / "config.json").read_text())
    assert cfg["block_out_channels"] == [32, 64, 96] and cfg["sample_size"] == 64
    assert cfg["addition_embed_type"] == "text" and cfg["cross_attention_dim"] == 64
    x = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = module.eps(x, 10, [META])
    assert eps.shape == (1, 2, 64, 64) and torch.isfinite(eps).all()
    # the same seed writes the same weights
    again = write_base_init(tmp_path / "again")
    a = (root / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (again / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_contextmri(tmp_path_factory.mktemp("prior") / "tiny_contextmri")


def _module_with_distinct_ema(tiny_dir: Path) -> MetaDiffusionModule:
    module = MetaDiffusionModule(**{**diffusers_prior_config(tiny_dir), "ema_decay": 0.999})
    ema = module.ema
    with torch.no_grad():
        for name, shadow in ema.shadow.items():  # averages that differ from the raw weights
            shadow.add_(0.05 * torch.randn_like(shadow) if "weight" in name else 0.0)
    return module.eval()


def test_export_round_trip_carries_the_ema_weights(tiny_dir, tmp_path):
    torch.manual_seed(0)
    module = _module_with_distinct_ema(tiny_dir)
    x = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = module.eps(x, 300, [META, META])
        with module.ema_weights():
            averaged = module.eps(x, 300, [META, META])
    assert (raw - averaged).abs().max() > 1e-3  # the EMA is distinguishable

    out = export_module(module, tmp_path / "exported", source="test", extra={"global_step": 7})
    info = json.loads((out / "export.json").read_text())
    assert info["weights"] == "ema" and info["global_step"] == 7
    assert {p.name for p in out.iterdir()} >= {"unet", "scheduler", "text_encoder", "tokenizer",
                                              "model_index.json", "export.json"}
    reloaded = load_prior(out)
    with torch.no_grad():
        again = reloaded.eps(x, 300, [META, META])
    assert (again - averaged).abs().max().item() < 1e-6
    # the raw weights are untouched after the export
    with torch.no_grad():
        assert (module.eps(x, 300, [META, META]) - raw).abs().max().item() == 0.0


def test_export_refuses_what_has_no_diffusers_layout(tiny_dir, tmp_path):
    cfg = diffusers_prior_config(tiny_dir)
    additive = MetaDiffusionModule(**{**cfg, "encoder": {
        "_target_": "metamri.encoders.fusion.FusionEncoder", "fields": "paper", "mode": "additive",
        "text": {"path": str(tiny_dir), "projection": "identity"}}})
    with pytest.raises(ConfigError, match="only a text-conditioned prior"):
        export_module(additive, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    module = load_prior(tiny_dir)
    export_module(module, tmp_path / "b")
    with pytest.raises(ConfigError, match="exists already"):
        export_module(module, tmp_path / "b")


def test_failed_export_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    module = load_prior(tiny_dir)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module.encoder.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_module(module, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
