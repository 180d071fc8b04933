"""Metadata encoders: records + CFG drop mask -> context tokens (B, L, D) for the UNet."""

from metamri.encoders.base import MetadataEncoder
from metamri.encoders.finegrained import FineGrainedEncoder
from metamri.encoders.fusion import FUSIONS, FusionEncoder
from metamri.encoders.none import NullEncoder
from metamri.encoders.numeric import LearnedEncoding, SinusoidalEncoding, build_numeric_encoding
from metamri.encoders.text import TextEncoder, default_text_model_path

__all__ = [
    "FUSIONS", "FineGrainedEncoder", "FusionEncoder", "LearnedEncoding", "MetadataEncoder",
    "NullEncoder", "SinusoidalEncoding", "TextEncoder", "build_numeric_encoding",
    "default_text_model_path",
]
