"""The denoiser (diffusers UNet presets, pretrained loading), its noise schedule and EMA."""

from metamri.models.ema import EMA
from metamri.models.scheduler import build_scheduler, load_scheduler
from metamri.models.unet import (
    CONTEXTMRI,
    PRESETS,
    TINY,
    PretrainedComponents,
    build_unet,
    load_pretrained,
    load_unet,
    preset_kwargs,
    unet_context_dim,
)

__all__ = [
    "CONTEXTMRI", "EMA", "PRESETS", "TINY", "PretrainedComponents", "build_scheduler",
    "build_unet", "load_pretrained", "load_scheduler", "load_unet", "preset_kwargs",
    "unet_context_dim",
]
