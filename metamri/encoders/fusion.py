"""Fine-grained field tokens fused with the ContextMRI text tokens (paper Sec. 3.4).

* ``additive``: the F field tokens are summed into one vector that is added to
  every text token: ``ctx = text + sum_j field_j`` -> (B, 77, D).
* ``concat``: ``ctx = [text tokens; SEP; field tokens]`` -> (B, 77 + 1 + F, D),
  SEP a learned token; the UNet's cross-attention can then look at each field.

Both start at exactly the text model they extend (same UNet, same text encoder,
same prompts: the same noise prediction at step 0):

* additive: the fine-grained half is zero-initialised (embedding rows, empty
  tokens, the last ``Linear`` of each numeric MLP), so the added vector is 0 while
  its gradient is not;
* concat: extra keys change every softmax even with zero values, so the UNet reads
  the appended tokens through a learned gate ``g >= 0`` that starts at 0
  (:mod:`metamri.encoders.gated_attention`; g = 1 is plain concatenation).
  :meth:`FusionEncoder.attach` installs the gated attention processors on the UNet;
  the module calls it whenever it builds (or a checkpoint rebuilds) encoder and UNet.
  g is ``gate_scale * max(gate, 0)`` with ``gate`` a parameter of this encoder (it
  trains and is in the checkpoint); after each optimizer step a negative ``gate``
  is projected back to 0, so a gate the loss pushes shut can open again.

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
from metamri.encoders.gated_attention import install_gated_attention
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
            (``path``, ``prompt``, ``projection``, ``max_length`` ...), without ``fields``/``context_dim``.
        finegrained: Keyword arguments of :class:`~metamri.encoders.finegrained.FineGrainedEncoder`,
            without ``fields``/``context_dim``; ``zero_init`` defaults to True in additive mode.
        gate_scale: concat only: g = ``gate_scale * max(gate, 0)``.  Adam moves ``gate`` by
            about the learning rate per step, so with the paper's 5e-5 and 10 000 steps an
            unscaled gate could not pass 0.5; at 10 it can reach plain concatenation
            (g = 1) in about 2 000 steps.
        gate_init: concat only: g at initialisation. 0 (default) starts at the text model
            exactly; 1 is the paper's plain concatenation from the first step. At 0 the
            field tokens receive no gradient until g opens, and g opens only where the
            loss's gradient says so: on the tiny ContextMRI layout it stayed shut over 8
            steps (tests/test_fusion_init.py), so a run whose gate never opens trains the
            text model; ``gate_init: 1`` is the way out.
    """

    def __init__(
        self,
        fields: str | Sequence[str] | None = "paper",
        context_dim: int = 768,
        mode: str = "additive",
        text: Mapping[str, Any] | None = None,
        finegrained: Mapping[str, Any] | None = None,
        gate_scale: float = 10.0,
        gate_init: float = 0.0,
    ) -> None:
        super().__init__(fields, context_dim)
        if mode not in FUSIONS:
            raise ConfigError("encoder.mode", mode, "unknown fusion", hint=f"choose one of {list(FUSIONS)}")
        for key, kwargs in (("text", text), ("finegrained", finegrained)):
            clash = {"fields", "context_dim"} & set(kwargs or {})
            if clash:
                raise ConfigError(f"encoder.{key}", sorted(clash),
                                  "set fields/context_dim on the fusion encoder, not on its parts")
        if float(gate_scale) <= 0:
            raise ConfigError("encoder.gate_scale", gate_scale, "must be positive")
        if not float(gate_init) >= 0:
            raise ConfigError("encoder.gate_init", gate_init, "must be >= 0 (0: the text model; 1: plain concatenation)")
        self.mode = mode
        self.text = TextEncoder(fields=self.fields, context_dim=self.context_dim,
                                **{"config_key": "encoder.text", **dict(text or {})})
        fg = dict(finegrained or {})
        if mode == "additive":
            fg.setdefault("zero_init", True)
        self.finegrained = FineGrainedEncoder(fields=self.fields, context_dim=self.context_dim, **fg)
        self.gate_scale = float(gate_scale)
        self.gated_modules: dict[str, int] = {}
        if mode == "concat":
            self.sep = nn.Parameter(torch.randn(self.context_dim) * self.finegrained.init_std)
            self.gate = nn.Parameter(torch.tensor(float(gate_init) / self.gate_scale))

    @property
    def needs_fit(self) -> bool:
        return self.finegrained.needs_fit

    def fit(self, records: Iterable[Metadata]) -> FusionEncoder:
        self.finegrained.fit(records)
        return self

    # -- concat: the gate and the UNet's gated reading of the appended tokens -------------
    @property
    def num_text_tokens(self) -> int:
        return self.text.max_length

    @property
    def num_extra_tokens(self) -> int:
        """Tokens after the text ones: 0 (additive) or SEP + one per field (concat)."""
        return 0 if self.mode == "additive" else 1 + len(self.fields)

    def gate_value(self) -> torch.Tensor:
        """g >= 0, a scalar float32 tensor (concat only); the gradient passes at g = 0."""
        return self.gate_scale * self.gate.clamp(min=0.0)

    def attach(self, unet: nn.Module) -> None:
        """concat: install the gated processors on every part of ``unet`` that reads the context."""
        if self.mode == "concat":
            self.gated_modules = install_gated_attention(
                unet, self, self.num_text_tokens, self.num_extra_tokens)

    def forward(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        """metadata: B records; drop: bool (B, F) or None -> float32 (B, L, D),
        L = max_length (additive) or max_length + 1 + F (concat)."""
        drop = self.check_drop(metadata, drop)
        text = self.text(metadata, drop)
        fields = self.finegrained(metadata, drop)
        if self.mode == "additive":
            return text + fields.sum(dim=1, keepdim=True)
        with torch.no_grad():  # projected gradient step: g >= 0 stays trainable (no host sync)
            self.gate.clamp_(min=0.0)
        sep = self.sep.expand(len(metadata), 1, -1)
        return torch.cat([text, sep, fields], dim=1)
