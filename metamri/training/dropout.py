"""Classifier-free-guidance dropout of metadata fields (paper Sec. 3.4, DESIGN "CFG").

A drop mask is bool (B, F) over an encoder's fields; True means "treat the field
as missing for this sample" (the fine-grained encoder then uses its empty token,
the text encoder leaves the field out of the prompt).

* ``independent``: field f of sample b is dropped with probability ``p[f]``
  (the paper: "each fine-grained embedding is independently dropped"); on top of
  that, with probability ``prompt_p`` every field of the sample is dropped, so
  that the fully unconditional context, which CFG needs at inference, is trained
  too (eight fields each dropped with p = 0.1 are all dropped together only
  1e-8 of the time).  Field f is then dropped with probability
  ``1 - (1 - p[f]) (1 - prompt_p)``.
* ``joint``: all fields of a sample are dropped together with probability ``p``
  (ContextMRI: the prompt is emptied with p = 0.1).

In either mode, ``groups`` add joint drops of named field sets: each group's
fields (those the encoder reads) are dropped together with the group's
probability, independently of the rest.  ContextMRI's training prompts are
``joint`` p = 0.1 plus the acquisition group (sequence, TR, TE, TI, flip angle)
with p = 0.5 (``conf/dropout/contextmri.yaml``): the prompt is empty 10% of the
time, otherwise its acquisition block is there half of the time; at evaluation
and inference nothing is dropped, so the block is always there (ContextMRI's
``p = 1.0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from metamri.errors import ConfigError
from metamri.metadata import field_spec

MODES = ("independent", "joint")


class FieldDropout:
    """Samples CFG drop masks.

    Args:
        p: Drop probability, one for every field or a mapping field -> probability
            (``independent`` mode only; every field the encoder reads must be listed).
        mode: ``"independent"`` or ``"joint"``.
        prompt_p: Probability of dropping all fields of a sample at once
            (``independent`` mode; 0 disables).
        seed: Seed of the generator used when :meth:`sample` gets none.
        groups: ``{name: {"fields": [...], "p": probability}}``: each group's fields are
            dropped together with probability ``p``, independently of ``p``/``mode``.
    """

    def __init__(
        self,
        p: float | Mapping[str, float] = 0.1,
        mode: str = "independent",
        prompt_p: float = 0.0,
        seed: int = 0,
        groups: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError("dropout.mode", mode, "unknown dropout mode", hint=f"choose one of {list(MODES)}")
        self.mode = mode
        if isinstance(p, Mapping):
            if mode == "joint":
                raise ConfigError("dropout.p", dict(p), "joint dropout takes one probability")
            self.p: float | dict[str, float] = {}
            for name, value in p.items():
                field_spec(str(name))
                self.p[str(name)] = _probability(f"dropout.p.{name}", value)
        else:
            self.p = _probability("dropout.p", p)
        self.prompt_p = _probability("dropout.prompt_p", prompt_p)
        if mode == "joint" and self.prompt_p:
            raise ConfigError("dropout.prompt_p", prompt_p, "joint mode already drops whole prompts; use p")
        self.groups: dict[str, tuple[tuple[str, ...], float]] = {}
        for name, group in dict(groups or {}).items():
            if not isinstance(group, Mapping) or set(group) != {"fields", "p"}:
                raise ConfigError(f"dropout.groups.{name}", group, "a group is {fields: [...], p: probability}")
            names = [group["fields"]] if isinstance(group["fields"], str) else list(group["fields"])
            if not names:
                raise ConfigError(f"dropout.groups.{name}.fields", names, "name at least one field")
            for f in names:
                field_spec(str(f))
            self.groups[str(name)] = (tuple(str(f) for f in names),
                                      _probability(f"dropout.groups.{name}.p", group["p"]))
        self.generator = torch.Generator().manual_seed(int(seed))

    def probabilities(self, fields: Sequence[str]) -> torch.Tensor:
        """Configured per-field probabilities (F,) float64, before ``prompt_p``."""
        if isinstance(self.p, dict):
            missing = [f for f in fields if f not in self.p]
            if missing:
                raise ConfigError("dropout.p", self.p, f"no drop probability for field(s) {missing}")
            return torch.tensor([self.p[f] for f in fields], dtype=torch.float64)
        return torch.full((len(fields),), self.p, dtype=torch.float64)

    def expected_rates(self, fields: Sequence[str]) -> torch.Tensor:
        """Marginal probability (F,) that each field is dropped."""
        if self.mode == "joint":
            kept = 1.0 - self.probabilities(fields)
        else:
            kept = (1.0 - self.probabilities(fields)) * (1.0 - self.prompt_p)
        for members, p in self.groups.values():
            kept = kept * torch.tensor([1.0 - p if f in members else 1.0 for f in fields],
                                       dtype=torch.float64)
        return 1.0 - kept

    def sample(
        self, batch_size: int, fields: Sequence[str], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A drop mask, bool (batch_size, len(fields)) on the CPU."""
        gen = self.generator if generator is None else generator
        f = len(fields)
        probs = self.probabilities(fields)
        if self.mode == "joint":
            whole = torch.rand(batch_size, 1, generator=gen, dtype=torch.float64) < self.p
            drop = whole.expand(batch_size, f).clone()
        else:
            drop = torch.rand(batch_size, f, generator=gen, dtype=torch.float64) < probs
            if self.prompt_p:
                drop |= torch.rand(batch_size, 1, generator=gen, dtype=torch.float64) < self.prompt_p
        for members, p in self.groups.values():
            cols = torch.tensor([name in members for name in fields], dtype=torch.bool)
            hit = torch.rand(batch_size, 1, generator=gen, dtype=torch.float64) < p
            drop |= hit & cols
        return drop


def _probability(key: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, value, "expected a probability") from None
    if not 0.0 <= v <= 1.0:
        raise ConfigError(key, value, "a probability must lie in [0, 1]")
    return v
