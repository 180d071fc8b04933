"""Fine-grained metadata embeddings (paper Sec. 3.4): one token per field.

* categorical field -> row of a learned embedding table (row 0 = "unknown",
  used for categories never seen in training);
* multi-label field -> mean of the rows of its distinct labels (repeats, which
  ContextMRI's prompt counts, do not re-weight the mean);
* numeric field -> value normalised to [0, 1] with the training split's
  :class:`~metamri.metadata.NumericRanges` -> sinusoidal (or learned) encoding
  -> ``Linear-SiLU-Linear`` to the context width;
* a missing value **or** a field dropped for classifier-free guidance -> that
  field's learned "empty" token (exactly the same vector in both cases).

Output: float32 (B, F, context_dim), token j for ``fields[j]``.  On its own
(``encoder=finegrained``) the field tokens are the UNet's whole context; the
additive and concatenated fusions with a text encoder are in
:mod:`metamri.encoders.fusion`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metamri.encoders.base import MetadataEncoder
from metamri.encoders.numeric import NUMERIC_ENCODINGS, build_numeric_encoding
from metamri.errors import ConfigError
from metamri.metadata import FieldKind, Metadata, NumericRanges, Vocabulary, field_spec


class FineGrainedEncoder(MetadataEncoder):
    """One learned token per metadata field.

    Args:
        fields: ``"paper"`` (the 8 fields of the paper's ablations), ``"all"`` or a list.
        context_dim: Token width D.
        numeric_encoding: ``"sinusoidal"`` (paper) or ``"learned"``, for every numeric field...
        per_field: ...except those named here, e.g. ``{"te": "learned"}``.
        numeric_dim: Width of the numeric encoding fed to the per-field MLP.
        init_std: Std of the normal initialisation of embedding rows and empty tokens.
        zero_init: Start every token at exactly zero: embedding rows, empty tokens and
            the last ``Linear`` of each numeric MLP are zero-initialised (their gradients
            are not zero, so they train from the first step).  The additive fusion sets
            it, so that it starts at exactly the text-only model.
        numeric_ranges / vocabulary: Pre-computed statistics (``NumericRanges.to_dict()``,
            ``Vocabulary.to_dict()``); when both are given the encoder counts as fitted.
    """

    def __init__(
        self,
        fields: str | Sequence[str] | None = "paper",
        context_dim: int = 768,
        numeric_encoding: str = "sinusoidal",
        per_field: Mapping[str, str] | None = None,
        numeric_dim: int = 128,
        init_std: float = 0.02,
        zero_init: bool = False,
        numeric_ranges: Mapping[str, Any] | None = None,
        vocabulary: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(fields, context_dim)
        if not self.fields:
            raise ConfigError("encoder.fields", fields, "the fine-grained encoder needs at least one field")
        per_field = dict(per_field or {})
        for name, kind in per_field.items():
            if name not in self.fields or field_spec(name).kind is not FieldKind.NUMERIC:
                raise ConfigError(f"encoder.per_field.{name}", kind,
                                  "per_field names numeric fields among encoder.fields")
            if kind not in NUMERIC_ENCODINGS:
                raise ConfigError(f"encoder.per_field.{name}", kind, "unknown numeric encoding",
                                  hint=f"choose one of {list(NUMERIC_ENCODINGS)}")
        self.init_std = float(init_std)
        self.zero_init = bool(zero_init)
        self.encodings = {
            f: per_field.get(f, numeric_encoding) for f in self.fields if self._kind(f) == "numeric"
        }
        self.numeric_ranges = (
            NumericRanges.from_dict(numeric_ranges) if numeric_ranges else NumericRanges.defaults()
        )
        self.vocabulary = Vocabulary.from_dict(vocabulary) if vocabulary else Vocabulary.defaults()
        self.fitted = numeric_ranges is not None and vocabulary is not None

        d = self.context_dim
        empty = torch.zeros(len(self.fields), d) if self.zero_init else torch.randn(len(self.fields), d)
        self.empty = nn.Parameter(empty * self.init_std)
        self.tables = nn.ModuleDict(
            {f: self._new_table(f) for f in self.fields if self._kind(f) != "numeric"}
        )
        self.numeric = nn.ModuleDict({
            f: nn.Sequential(
                build_numeric_encoding(kind, numeric_dim),
                nn.Linear(numeric_dim, d), nn.SiLU(), nn.Linear(d, d),
            )
            for f, kind in self.encodings.items()
        })
        if self.zero_init:
            for mlp in self.numeric.values():
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)

    # -- statistics -------------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        return not self.fitted

    def fit(self, records: Iterable[Metadata]) -> FineGrainedEncoder:
        """Fit numeric ranges and vocabularies on the training records (tables are re-sized)."""
        records = list(records)
        self._set_stats(NumericRanges.fit(records), Vocabulary.fit(records))
        self.fitted = True
        return self

    def _set_stats(self, ranges: NumericRanges, vocab: Vocabulary) -> None:
        self.numeric_ranges = ranges
        old, self.vocabulary = self.vocabulary, vocab
        for f in self.tables:
            if vocab.size(f) != old.size(f):
                self.tables[f] = self._new_table(f).to(self.empty.device)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "numeric_ranges": self.numeric_ranges.to_dict(),
            "vocabulary": self.vocabulary.to_dict(),
            "fitted": self.fitted,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Runs before the child tables load (torch loads a module's own state first),
        # so tables re-sized here receive the checkpoint's rows right after.
        if list(state["fields"]) != list(self.fields):
            raise ConfigError("encoder.fields", list(self.fields),
                              f"the checkpoint's encoder was built for fields {state['fields']}")
        self._set_stats(NumericRanges.from_dict(state["numeric_ranges"]),
                        Vocabulary.from_dict(state["vocabulary"]))
        self.fitted = bool(state["fitted"])

    # -- embedding --------------------------------------------------------------------
    @staticmethod
    def _kind(name: str) -> str:
        return str(field_spec(name).kind)

    def _new_table(self, name: str) -> nn.Embedding:
        table = nn.Embedding(self.vocabulary.size(name), self.context_dim)
        if self.zero_init:
            nn.init.zeros_(table.weight)
        else:
            nn.init.normal_(table.weight, std=self.init_std)
        return table

    def field_token(self, name: str, values: Sequence[Any]) -> torch.Tensor:
        """Tokens (B, D) of one field for B present values (``None`` entries give zeros here;
        :meth:`forward` replaces them with the empty token)."""
        dev = self.empty.device
        kind = self._kind(name)
        if kind == "categorical":
            idx = [0 if v is None else self.vocabulary.index(name, v) for v in values]
            return self.tables[name](torch.tensor(idx, dtype=torch.long, device=dev))
        if kind == "multilabel":
            table = self.tables[name]
            rows = []
            for labels in values:
                if not labels:
                    rows.append(torch.zeros(self.context_dim, device=dev))
                    continue
                distinct = dict.fromkeys(labels)
                idx = torch.tensor([self.vocabulary.index(name, lab) for lab in distinct], device=dev)
                rows.append(table(idx).mean(0))
            return torch.stack(rows)
        x = [0.0 if v is None else self.numeric_ranges.normalize(name, v) for v in values]
        return self.numeric[name](torch.tensor(x, dtype=torch.float32, device=dev))

    def forward(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        """metadata: B records; drop: bool (B, F) or None -> float32 (B, F, context_dim)."""
        drop = self.check_drop(metadata, drop)
        b = len(metadata)
        tokens = []
        for j, name in enumerate(self.fields):
            values = [getattr(m, name) for m in metadata]
            missing = torch.tensor([v is None for v in values], device=drop.device)
            empty = (missing | drop[:, j]).unsqueeze(-1)
            tok = self.field_token(name, values)
            tokens.append(torch.where(empty, self.empty[j].expand(b, -1), tok))
        return torch.stack(tokens, dim=1)
