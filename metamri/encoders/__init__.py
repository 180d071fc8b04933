"""Metadata encoders: records + CFG drop mask -> context tokens (B, L, D) for the UNet."""

from metamri.encoders.base import MetadataEncoder
from metamri.encoders.finegrained import FineGrainedEncoder
from metamri.encoders.fusion import FUSIONS, FusionEncoder
from metamri.encoders.gated_attention import gated_sdpa, install_gated_attention
from metamri.encoders.none import NullEncoder
from metamri.encoders.numeric import LearnedEncoding, SinusoidalEncoding, build_numeric_encoding
from metamri.encoders.text import (
    PROJECTIONS,
    ProjectionWidthError,
    TextEncoder,
    default_text_model_path,
)

__all__ = [
    "FUSIONS", "PROJECTIONS", "FineGrainedEncoder", "FusionEncoder", "LearnedEncoding", "MetadataEncoder",
    "NullEncoder", "ProjectionWidthError", "SinusoidalEncoding", "TextEncoder", "build_numeric_encoding",
    "default_text_model_path", "gated_sdpa", "install_gated_attention",
]
