"""A tiny, randomly initialised checkpoint laid out exactly as ContextMRI's release.

``write_tiny_contextmri(path)`` saves, with ``save_pretrained`` and from local
objects only (no hub)::

    path/
      unet/          UNet2DConditionModel, ContextMRI's architecture at toy width:
                     SimpleCrossAttn blocks, addition_embed_type "text", encoder_hid_dim
      scheduler/     DDPMScheduler (linear betas, T = 1000, epsilon)
      text_encoder/  CLIPTextModel, 2 layers, 32 wide
      tokenizer/     CLIPTokenizer over a byte-level vocabulary (every byte, no merges
                     beyond a handful), written as vocab.json + merges.txt

It is what tests (and a new user without the real weights) point
``prior=...`` / ``model.pretrained=...`` at, so the code path is the one the
released 318 M-parameter checkpoint takes.  From the command line::

    python -m metamri.models.tiny_contextmri /tmp/tiny_contextmri
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from metamri.models.unet import CONTEXTMRI

#: ContextMRI's UNet layout (``CONTEXTMRI`` in :mod:`metamri.models.unet`) at toy width:
#: the same block types, norms, text addition embedding and context projection.
TINY_CONTEXTMRI_UNET: dict[str, Any] = {
    **CONTEXTMRI,
    "sample_size": 32,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
    "encoder_hid_dim": 32,
    "addition_embed_type_num_heads": 4,
    "norm_num_groups": 8,
}

TEXT_WIDTH = 32


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_clip_tokenizer_files(path: Path) -> Path:
    """``vocab.json`` and ``merges.txt`` of a byte-level CLIP BPE (every byte, alone and
    word-final, plus the start/end tokens), then the tokenizer saved with ``save_pretrained``."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["t r</w>", "t e</w>", "t i</w>"]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    tok.save_pretrained(path)
    return path


def write_contextmri_dir(path: str | Path, unet_kwargs: dict[str, Any], tokenizer_writer,
                         text_width: int, text_layers: int, text_heads: int, text_ffn: int,
                         seed: int = 0) -> Path:
    """A randomly initialised directory in ContextMRI's layout (see the module doc).

    Args:
        path: Where to write it.
        unet_kwargs: ``UNet2DConditionModel`` keyword arguments.
        tokenizer_writer: ``f(dir) -> dir`` writing the CLIP tokenizer files.
        text_width, text_layers, text_heads, text_ffn: The CLIP text model's size.
        seed: Fixes the UNet's and the text model's initial weights.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer_writer(root / "tokenizer")
    vocab_size = len(CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        UNet2DConditionModel(**unet_kwargs).save_pretrained(root / "unet")
        text_cfg = CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=text_width, intermediate_size=text_ffn,
            num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=77,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        )
        CLIPTextModel(text_cfg).save_pretrained(root / "text_encoder")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon",
                  clip_sample=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "MRIPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }, indent=2))
    return root


def write_tiny_contextmri(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny ContextMRI-layout directory at ``path`` (see the module doc); returns it."""
    return write_contextmri_dir(path, TINY_CONTEXTMRI_UNET, write_clip_tokenizer_files, TEXT_WIDTH,
                                text_layers=2, text_heads=2, text_ffn=64, seed=seed)


if __name__ == "__main__":  # pragma: no cover - command-line convenience
    if len(sys.argv) != 2:
        sys.exit("usage: python -m metamri.models.tiny_contextmri OUT_DIR")
    print(write_tiny_contextmri(sys.argv[1]))
