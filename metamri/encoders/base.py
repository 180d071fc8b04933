"""The interface every metadata encoder implements.

An encoder turns B :class:`~metamri.metadata.Metadata` records and a CFG drop
mask into the context tokens the UNet cross-attends to::

    tokens = encoder(metadata, drop)   # float32 (B, L, context_dim)

``drop`` is a bool (B, F) mask over ``encoder.fields`` (True = the field is
dropped for that sample, i.e. treated as missing); ``None`` drops nothing.
Dropping every field gives the unconditional context used by classifier-free
guidance.

An encoder that changes how the UNet reads its tokens (the concatenated fusion's
gate) does so in :meth:`MetadataEncoder.attach`, which the module calls with its UNet.

Encoders that depend on the data (numeric ranges, category vocabularies) are
fitted once on the training split with :meth:`MetadataEncoder.fit` and keep what
they learned in their state dict (``get_extra_state``), so a checkpoint alone
rebuilds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from metamri.errors import ConfigError
from metamri.metadata import Metadata, resolve_fields


class MetadataEncoder(nn.Module):
    """Base class: ``forward(metadata, drop) -> (B, L, context_dim)`` float32 tokens.

    Attributes:
        fields: Schema field names the encoder reads, in drop-mask column order.
        context_dim: Width D of the output tokens (the UNet's context width).
    """

    fields: tuple[str, ...]
    context_dim: int

    def __init__(self, fields: str | Sequence[str] | None, context_dim: int) -> None:
        super().__init__()
        self.fields = () if fields == () else resolve_fields(_plain(fields))
        if int(context_dim) <= 0:
            raise ConfigError("encoder.context_dim", context_dim, "must be a positive integer")
        self.context_dim = int(context_dim)

    # -- data-dependent state -------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` must run on the training metadata before training."""
        return False

    def fit(self, records: Iterable[Metadata]) -> MetadataEncoder:
        """Fit normalisation ranges / vocabularies on the training split (no-op by default)."""
        return self

    # -- the UNet that reads the tokens ------------------------------------------------
    def attach(self, unet: nn.Module) -> None:
        """Called by the module with the UNet that reads this encoder's tokens, once both
        exist (and again whenever a checkpoint rebuilds them).  Encoders that change how
        the UNet reads their tokens install that here (the gated concatenation's attention
        processors); the default does nothing."""

    # -- helpers --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def check_drop(self, metadata: Sequence[Metadata], drop: torch.Tensor | None) -> torch.Tensor:
        """Validate ``drop`` and return it as a bool (B, F) tensor on ``self.device``."""
        b, f = len(metadata), len(self.fields)
        if drop is None:
            return torch.zeros(b, f, dtype=torch.bool, device=self.device)
        if drop.shape != (b, f):
            raise ValueError(
                f"drop mask has shape {tuple(drop.shape)}; expected (batch={b}, fields={f}) "
                f"for fields {list(self.fields)}"
            )
        return drop.to(device=self.device, dtype=torch.bool)

    def drop_all(self, batch_size: int) -> torch.Tensor:
        """The all-True (B, F) mask: the unconditional context for CFG."""
        return torch.ones(batch_size, len(self.fields), dtype=torch.bool, device=self.device)

    def forward(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def _plain(fields: str | Sequence[str] | None) -> str | list[str] | None:
    """A config value (str, list, ListConfig, tuple) as ``resolve_fields`` takes it."""
    if fields is None or isinstance(fields, str):
        return fields
    return [str(f) for f in fields]
