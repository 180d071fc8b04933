"""The unconditional "encoder": one constant all-zero token.

diffusers' ``UNet2DConditionModel`` always cross-attends, so an unconditional
model still needs some ``encoder_hidden_states``; a single zero token carries
no information and has no parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metamri.encoders.base import MetadataEncoder
from metamri.metadata import Metadata


class NullEncoder(MetadataEncoder):
    """Unconditional context: zeros of shape (B, 1, context_dim); reads no fields.

    Args:
        context_dim: Width D of the token.
    """

    def __init__(self, context_dim: int = 768) -> None:
        super().__init__(fields=(), context_dim=context_dim)
        self.register_buffer("zero", torch.zeros(1, 1, self.context_dim), persistent=False)

    def forward(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        self.check_drop(metadata, drop)
        return self.zero.expand(len(metadata), 1, self.context_dim)
