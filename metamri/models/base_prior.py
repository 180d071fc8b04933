"""The phantom-scale ContextMRI: the architecture, tokenizer and initial directory of
the base prior that metamri ships (``pretrained/phantom_contextmri``).

The base prior plays the part ContextMRI's released checkpoint plays in the paper: a
text-conditioned prior that the study's arms fine-tune from.  It is ContextMRI's
layout (:data:`metamri.models.unet.CONTEXTMRI`: ``SimpleCrossAttn`` blocks, the pooled
text added to the time embedding, ``encoder_hid_dim``) at 64 x 64 and about 1/100 of
the width, with a frozen 2-layer CLIP text model whose byte-level BPE vocabulary holds
the words of ContextMRI's prompts whole (so that a prompt fits CLIP's 77 tokens: digits
are single tokens, as in CLIP).

``write_base_init(path)`` writes the randomly initialised directory (``unet/``,
``scheduler/``, ``text_encoder/``, ``tokenizer/``, ``model_index.json``) that
``experiments/base_prior/train.sh`` trains from, through the same
``model=pretrained model.path=...`` path as the real checkpoint::

    python -m metamri.models.base_prior OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from metamri.models.tiny_contextmri import _bytes_to_unicode, write_contextmri_dir
from metamri.models.unet import CONTEXTMRI

#: ContextMRI's UNet layout at 64 x 64: widths 32/64/96 (ContextMRI: 192/384/576/768),
#: one layer a block (3), cross-attention at the two coarser levels and the middle,
#: 64-wide context (768).  About 2.3 M parameters.
PHANTOM_CONTEXTMRI_UNET: dict[str, Any] = {
    **CONTEXTMRI,
    "sample_size": 64,
    "block_out_channels": (32, 64, 96),
    "layers_per_block": 1,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"),
    "attention_head_dim": 16,
    "cross_attention_dim": 64,
    "encoder_hid_dim": 64,
    "addition_embed_type_num_heads": 4,
    "norm_num_groups": 16,
}

#: Width of the base prior's CLIP text model (= the UNet's context width).
TEXT_WIDTH = 64

#: Words of ContextMRI's prompts (lower case, as CLIP's tokenizer sees them), kept whole
#: by the tokenizer.  Anything else still tokenizes, byte by byte.
PROMPT_WORDS: tuple[str, ...] = (
    # anatomy, contrast, labels of the prompt
    "brain", "heart", "knee", "slice", "flair", "pre", "post", "contrast", "pd", "pdfs", "cine",
    "pathology", "sequence", "tr", "te", "ti", "flip", "angle",
    # sequences
    "turbospinecho", "flash", "truefisp",
    # fastMRI+ brain labels and the phantom's
    "normal", "for", "age", "nonspecific", "white", "matter", "lesion", "lesions", "edema",
    "lacunar", "infarct", "dural", "thickening", "enlarged", "ventricles", "craniotomy",
    "mass", "resection", "cavity", "encephalomalacia", "extra", "axial", "posttreatment",
    "change", "absent", "septum", "pellucidum", "dcm", "hcm", "sax", "lax",
)


def write_prompt_tokenizer(path: str | Path) -> Path:
    """A CLIP BPE tokenizer at ``path`` whose merges (learnt by ``tokenizers``' BPE trainer
    on :data:`PROMPT_WORDS`) make each of those words one token; every byte, alone and
    word-final, stays in the vocabulary, so any text still tokenizes.

    Returns ``path``.  The files are ``vocab.json`` and ``merges.txt`` (CLIP's format) and
    what ``CLIPTokenizer.save_pretrained`` adds.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator(list(PROMPT_WORDS), trainer=trainers.BpeTrainer(
        vocab_size=10_000, min_frequency=1, initial_alphabet=chars, end_of_word_suffix="</w>",
        show_progress=False))
    learnt = json.loads(bpe.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in learnt["merges"]]
    tokens = chars + [c + "</w>" for c in chars]
    tokens += [t for t in sorted(learnt["vocab"], key=learnt["vocab"].get) if t not in set(tokens)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
    tok.save_pretrained(root)
    return root


def write_base_init(path: str | Path, seed: int = 0) -> Path:
    """Write the randomly initialised base-prior directory at ``path``; returns it.

    ``seed`` fixes the UNet's and the text model's initial weights (the text model is
    never trained: it stays as initialised, as ContextMRI's CLIP stays as released).
    """
    return write_contextmri_dir(path, PHANTOM_CONTEXTMRI_UNET, write_prompt_tokenizer, TEXT_WIDTH,
                                text_layers=2, text_heads=4, text_ffn=4 * TEXT_WIDTH, seed=seed)


if __name__ == "__main__":  # pragma: no cover - command-line convenience
    if len(sys.argv) != 2:
        sys.exit("usage: python -m metamri.models.base_prior OUT_DIR")
    print(write_base_init(sys.argv[1]))
