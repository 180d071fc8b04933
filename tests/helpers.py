"""Small artefacts that several test modules build: kept here so there is one copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metamri.data.ismrmrd_header import HeaderInfo

#: DESIGN.md's real fastMRI AXFLAIR header (Siemens Aera, 1.494 T, 16 channels), every field set.
AXFLAIR_HEADER = HeaderInfo(
    tr=9000.0,
    te=86.0,
    ti=2500.0,
    flip_angle=150.0,
    sequence_type="TurboSpinEcho",
    echo_spacing=9.6,
    field_strength=1.494,
    vendor="SIEMENS",
    model="Aera",
    receiver_channels=16,
    protocol_name="AX FLAIR_FBB",
    encoded_matrix=(640, 264, 1),
    encoded_fov_mm=(440.0, 181.43, 7.5),
    recon_matrix=(320, 260, 1),
    recon_fov_mm=(220.0, 178.75, 5.0),
    ky_center=132,
    ky_maximum=255,
    num_slices=16,
)

#: Enough word pieces for the prompts the schema builds (numbers split into ``##`` pieces).
TINY_BERT_WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ":", ".", "brain", "heart",
    "slice", "tr", "te", "ti", "flip", "angle", "sequence", "axflair", "axt1", "axt2",
    "cine", "turbospinecho", "flash", "truefisp", *[str(i) for i in range(10)],
    *[f"##{i}" for i in range(10)],
]


def write_tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide BERT (model and tokenizer) saved as a Hugging Face folder at ``path``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(TINY_BERT_WORDS) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=len(TINY_BERT_WORDS), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
        BertModel(cfg).save_pretrained(path)
    return path


def assert_names(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    """The error's message names the file and every one of ``words`` (field, value, problem)."""
    msg = str(err.value)
    assert path.name in msg, msg
    for word in words:
        assert word in msg, (word, msg)


def image_batch(metadata, size: int, domains=None):
    """A seeded random :class:`~metamri.data.batch.ImageBatch` (B, 2, size, size) over ``metadata``."""
    from metamri.data.batch import ImageBatch

    b = len(metadata)
    g = torch.Generator().manual_seed(0)
    return ImageBatch(
        image=torch.randn(b, 2, size, size, generator=g), metadata=list(metadata),
        domain=list(domains) if domains is not None else ["brain"] * b,
        fname=[f"f{i}.h5" for i in range(b)], slice_index=torch.arange(b),
        frame=torch.full((b,), -1), scale=torch.ones(b),
    )


def tensors_changed_by_one_step(module, batch) -> tuple[list[str], list[str], list[str]]:
    """One optimizer step of ``module`` (a MetaDiffusionModule without a Trainer) on ``batch``:
    ``(changed, unet_changed, encoder_changed)`` state-dict keys whose tensors changed."""
    opt = module.configure_optimizers()
    before = {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    module.training_step(batch, 0).backward()
    opt.step()
    after = module.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    return (changed, [k for k in changed if k.startswith("unet.")],
            [k for k in changed if k.startswith("encoder.")])
