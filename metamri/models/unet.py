"""The denoiser: a diffusers ``UNet2DConditionModel`` over 2-channel (real, imaginary) images.

Three presets:

* ``tiny``: CPU-sized (about 1.5 M parameters) for tests and smoke runs; plain
  ResNet blocks at full resolution (no attention there), cross-attention at the
  two coarser levels.
* ``contextmri``: the published ContextMRI architecture (its ``configs/unet/
  config_mri.json``: DeepFloyd-IF-style ``SimpleCrossAttn`` blocks, widths
  192/384/576/768, 3 layers a block, 320 x 320 inputs, 768-dim context whose
  pooled tokens are also added to the time embedding, ``addition_embed_type="text"``).

* ``contextmri_tiny``: the same layout at toy width (about 0.2 M parameters), what
  :mod:`metamri.models.tiny_contextmri` saves as a stand-in for the released checkpoint.

All predict epsilon (Eq. 1 of the paper) for ``x_t`` of shape (B, 2, H, W)
float32 given the timestep (B,) int64 and context tokens (B, L, D), where
``D = unet_context_dim(unet)``.

A pretrained checkpoint laid out as diffusers folders (``unet/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/``, as ContextMRI's is) is read from disk only
(``local_files_only=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DConditionModel

from metamri.errors import ConfigError

#: CPU-friendly preset: forward+backward at batch 4, 64 x 64 in well under 1 s on 2 threads.
TINY: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 2,
    "out_channels": 2,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    # For Transformer2D blocks diffusers reads this as the number of heads: 4 heads of 16 channels.
    "attention_head_dim": 4,
    "norm_num_groups": 16,
    "cross_attention_dim": 64,
}

#: ContextMRI's published UNet (configs/unet/config_mri.json of the ContextMRI repository).
CONTEXTMRI: dict[str, Any] = {
    "sample_size": 320,
    "in_channels": 2,
    "out_channels": 2,
    "act_fn": "silu",
    "block_out_channels": (192, 384, 576, 768),
    "layers_per_block": 3,
    "down_block_types": (
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "up_block_types": (
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ),
    "attention_head_dim": 64,
    "cross_attention_dim": 768,
    "cross_attention_norm": "group_norm",
    "encoder_hid_dim": 768,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64,
    "resnet_time_scale_shift": "scale_shift",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "only_cross_attention": False,
    "upcast_attention": False,
    "use_linear_projection": False,
    "time_embedding_type": "positional",
}

def _presets() -> dict[str, dict[str, Any]]:
    from metamri.models.tiny_contextmri import TINY_CONTEXTMRI_UNET

    return {"tiny": TINY, "contextmri": CONTEXTMRI, "contextmri_tiny": TINY_CONTEXTMRI_UNET}


#: ``tiny``, ``contextmri`` and ``contextmri_tiny`` (ContextMRI's layout at toy width, for tests).
PRESETS: dict[str, dict[str, Any]] = _presets()


def preset_kwargs(preset: str | Mapping[str, Any]) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` keyword arguments of a named preset (or a copy of a mapping)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError("model.unet.preset", preset, "unknown UNet preset",
                              hint=f"choose one of {sorted(PRESETS)}")
        return dict(PRESETS[preset])
    return dict(preset)


def build_unet(
    preset: str | Mapping[str, Any] = "tiny",
    cross_attention_dim: int | None = None,
    pretrained: str | PathLike[str] | None = None,
    **overrides: Any,
) -> UNet2DConditionModel:
    """Build a 2-channel epsilon-predicting UNet, randomly initialised or from a checkpoint.

    Args:
        preset: ``"tiny"``, ``"contextmri"`` or a mapping of ``UNet2DConditionModel`` kwargs.
        cross_attention_dim: Width of the attention keys/values over the context
            tokens; ``None`` keeps the preset's. With ``pretrained`` it must equal
            the checkpoint's (or be ``None``).
        pretrained: A diffusers directory holding ``unet/`` (ContextMRI's layout) or a
            ``unet`` folder itself; the weights are read with ``local_files_only=True``
            and ``preset``/``overrides`` are ignored.
        **overrides: Extra ``UNet2DConditionModel`` kwargs on top of the preset.

    Returns:
        The UNet; its input/output are float32 (B, 2, H, W) (real, imaginary).
    """
    if pretrained is not None:
        if overrides:
            raise ConfigError("model.unet", sorted(overrides),
                              "overrides cannot be combined with a pretrained UNet")
        unet = load_unet(pretrained)
        if cross_attention_dim is not None and unet.config.cross_attention_dim != cross_attention_dim:
            raise ConfigError(
                "model.unet.cross_attention_dim", cross_attention_dim,
                f"the pretrained UNet at {pretrained} has cross_attention_dim "
                f"{unet.config.cross_attention_dim}",
                hint="set it to null or to the checkpoint's value",
            )
        return unet
    kwargs = preset_kwargs(preset)
    kwargs.update(overrides)
    if cross_attention_dim is not None:
        kwargs["cross_attention_dim"] = int(cross_attention_dim)
    for key in ("in_channels", "out_channels"):
        if kwargs.get(key, 2) != 2:
            raise ConfigError(f"model.unet.{key}", kwargs[key],
                              "images are 2-channel (real, imaginary)")
    kwargs["in_channels"] = kwargs["out_channels"] = 2
    return UNet2DConditionModel(**kwargs)


def unet_context_dim(unet: UNet2DConditionModel) -> int:
    """Width D of the ``encoder_hidden_states`` (B, L, D) that ``unet`` expects.

    ``encoder_hid_dim`` when the UNet projects its context first (ContextMRI: 768),
    otherwise ``cross_attention_dim``.
    """
    cfg = unet.config
    dim = cfg.encoder_hid_dim if cfg.encoder_hid_dim is not None else cfg.cross_attention_dim
    if not isinstance(dim, int):
        raise ConfigError("model.unet.cross_attention_dim", dim,
                          "per-block cross-attention widths are not supported")
    return dim


def _subfolder(path: str | PathLike[str], name: str) -> Path:
    """``path/name`` when it exists, else ``path`` itself (a component folder given directly)."""
    root = Path(path)
    if (root / name).is_dir():
        return root / name
    if (root / "config.json").is_file() or (root / "scheduler_config.json").is_file():
        return root
    raise FileNotFoundError(f"{root}: no {name}/ folder (expected a diffusers checkpoint directory)")


def load_unet(path: str | PathLike[str]) -> UNet2DConditionModel:
    """Read ``path/unet`` (or ``path`` itself) from disk; no hub access."""
    unet_dir = _subfolder(path, "unet")
    unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
    if unet.config.in_channels != 2 or unet.config.out_channels != 2:
        raise ConfigError("model.unet.pretrained", str(path),
                          f"the UNet has {unet.config.in_channels} input / "
                          f"{unet.config.out_channels} output channels, 2 expected")
    return unet


@dataclass
class PretrainedComponents:
    """What a ContextMRI-style diffusers directory holds.

    Attributes:
        unet: The denoiser.
        scheduler: Its DDPM noise schedule.
        text_encoder: The frozen text model (``None`` when there is no ``text_encoder/``).
        tokenizer: Its tokenizer (``None`` when there is no ``tokenizer/``).
        text_encoder_dir / tokenizer_dir: Where they were read from (what
            :class:`~metamri.encoders.text.TextEncoder` is configured with).
    """

    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    text_encoder: Any | None
    tokenizer: Any | None
    text_encoder_dir: Path | None
    tokenizer_dir: Path | None


def load_pretrained(path: str | PathLike[str]) -> PretrainedComponents:
    """Load a diffusers directory laid out as ContextMRI's checkpoint, from disk only.

    Args:
        path: Directory with ``unet/`` and ``scheduler/`` (required) and, optionally,
            ``text_encoder/`` and ``tokenizer/`` (Hugging Face transformers folders).
    """
    from transformers import AutoModel, AutoTokenizer

    from metamri.models.scheduler import load_scheduler

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: pretrained checkpoint directory does not exist")
    unet = load_unet(root)
    scheduler = load_scheduler(root)
    te_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else None
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else None
    # a directory is data: its own modelling / tokenizer code never runs (trust_remote_code=False)
    text_encoder = (AutoModel.from_pretrained(te_dir, local_files_only=True, trust_remote_code=False)
                    if te_dir else None)
    tokenizer = (AutoTokenizer.from_pretrained(tok_dir, local_files_only=True, trust_remote_code=False)
                 if tok_dir else None)
    return PretrainedComponents(unet, scheduler, text_encoder, tokenizer, te_dir, tok_dir)
