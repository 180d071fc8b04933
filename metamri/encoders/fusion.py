"""Fine-grained field tokens fused with the ContextMRI text tokens (paper Sec. 3.4).

* ``additive``: the F field tokens are summed into one vector that is added to
  every text token: ``ctx = text + sum_j field_j`` -> (B, 77, D).
* ``concat``: ``ctx = [text tokens; SEP; field tokens]`` -> (B, 77 + 1 + F, D),
  SEP a learned token; the UNet's cross-attention can then look at each field.

The same drop mask drives both halves: a dropped field leaves the prompt and its
token becomes the empty one, so dropping every field gives the empty prompt plus
the empty tokens (the unconditional context).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metamri.encoders.base import MetadataEncoder
from metamri.encoders.finegrained import FineGrainedEncoder
from metamri.encoders.text import TextEncoder
from metamri.errors import ConfigError
from metamri.metadata import Metadata

FUSIONS = ("additive", "concat")


class FusionEncoder(MetadataEncoder):
    """Text encoder + fine-grained encoder over the same fields, fused additively or by concatenation.

    Args:
        fields: Fields read by both halves (``"paper"``, ``"all"`` or a list).
        context_dim: Token width D (given to both halves).
        mode: ``"additive"`` or ``"concat"``.
        text: Keyword arguments of :class:`~metamri.encoders.text.TextEncoder`
            (``path``, ``max_length`` ...), without ``fields``/``context_dim``.
        finegrained: Keyword arguments of :class:`~metamri.encoders.finegrained.FineGrainedEncoder`,
            without ``fields``/``context_dim``.
    """

    def __init__(
        self,
        fields: str | Sequence[str] | None = "paper",
        context_dim: int = 768,
        mode: str = "additive",
        text: Mapping[str, Any] | None = None,
        finegrained: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(fields, context_dim)
        if mode not in FUSIONS:
            raise ConfigError("encoder.mode", mode, "unknown fusion", hint=f"choose one of {list(FUSIONS)}")
        for key, kwargs in (("text", text), ("finegrained", finegrained)):
            clash = {"fields", "context_dim"} & set(kwargs or {})
            if clash:
                raise ConfigError(f"encoder.{key}", sorted(clash),
                                  "set fields/context_dim on the fusion encoder, not on its parts")
        self.mode = mode
        self.text = TextEncoder(fields=self.fields, context_dim=self.context_dim, **dict(text or {}))
        self.finegrained = FineGrainedEncoder(
            fields=self.fields, context_dim=self.context_dim, **dict(finegrained or {})
        )
        if mode == "concat":
            self.sep = nn.Parameter(torch.randn(self.context_dim) * self.finegrained.init_std)

    @property
    def needs_fit(self) -> bool:
        return self.finegrained.needs_fit

    def fit(self, records: Iterable[Metadata]) -> FusionEncoder:
        self.finegrained.fit(records)
        return self

    def forward(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        """metadata: B records; drop: bool (B, F) or None -> float32 (B, L, D),
        L = max_length (additive) or max_length + 1 + F (concat)."""
        drop = self.check_drop(metadata, drop)
        text = self.text(metadata, drop)
        fields = self.finegrained(metadata, drop)
        if self.mode == "additive":
            return text + fields.sum(dim=1, keepdim=True)
        sep = self.sep.expand(len(metadata), 1, -1)
        return torch.cat([text, sep, fields], dim=1)
