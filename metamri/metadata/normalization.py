"""Numeric normalisation ranges and categorical vocabularies, fitted on a training split.

Both are plain data (JSON-serialisable) so that they are stored in checkpoints
and run directories, and a checkpoint alone rebuilds the encoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamri.errors import MetadataError
from metamri.metadata.record import Metadata
from metamri.metadata.schema import (
    CATEGORICAL_FIELDS,
    FIELDS,
    MULTILABEL_FIELDS,
    NUMERIC_FIELDS,
    field_spec,
)


@dataclass(frozen=True)
class NumericRanges:
    """Per-field (low, high) ranges that map numeric values to [0, 1].

    Values outside the range are clipped to [0, 1]: a TR twice the largest
    training TR is "as long as the longest TR we have seen", not an
    extrapolation the sinusoidal encoding was never trained on.
    """

    ranges: Mapping[str, tuple[float, float]]

    def __post_init__(self) -> None:
        for name, (lo, hi) in self.ranges.items():
            if name not in NUMERIC_FIELDS:
                raise MetadataError(f"normalisation range for non-numeric field {name!r}")
            if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
                raise MetadataError(f"normalisation range of {name!r} = ({lo}, {hi}) is not a valid interval")

    @classmethod
    def defaults(cls) -> NumericRanges:
        """The schema's fallback ranges (used before any data has been seen)."""
        return cls({n: tuple(FIELDS[n].default_range) for n in NUMERIC_FIELDS})  # type: ignore[arg-type]

    @classmethod
    def fit(cls, records: Iterable[Metadata]) -> NumericRanges:
        """Min/max of every numeric field over ``records`` (missing values ignored).

        A field never observed keeps its schema default; a field with a single
        value gets a zero-width range, which normalises that value to 0.
        """
        lo: dict[str, float] = {}
        hi: dict[str, float] = {}
        for rec in records:
            for name in NUMERIC_FIELDS:
                v = getattr(rec, name)
                if v is None:
                    continue
                lo[name] = min(lo.get(name, v), v)
                hi[name] = max(hi.get(name, v), v)
        base = dict(cls.defaults().ranges)
        base.update({n: (lo[n], hi[n]) for n in lo})
        return cls(base)

    def normalize(self, name: str, value: float | None) -> float | None:
        """Map ``value`` of field ``name`` into [0, 1] (``None`` stays ``None``)."""
        if value is None:
            return None
        lo, hi = self.ranges[name]
        if hi == lo:
            return 0.0
        return min(1.0, max(0.0, (value - lo) / (hi - lo)))

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(a), float(b)] for k, (a, b) in self.ranges.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericRanges:
        return cls({k: (float(v[0]), float(v[1])) for k, v in data.items()})


UNKNOWN = "<unknown>"


@dataclass(frozen=True)
class Vocabulary:
    """Category lists of the categorical and multi-label fields.

    Index 0 of every field is reserved for :data:`UNKNOWN`; the schema's seed
    categories come first so that models trained on different splits agree on
    the indices of the common categories.
    """

    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def fit(cls, records: Iterable[Metadata]) -> Vocabulary:
        seen: dict[str, set[str]] = {n: set() for n in (*CATEGORICAL_FIELDS, *MULTILABEL_FIELDS)}
        for rec in records:
            for name in seen:
                v = getattr(rec, name)
                if v is None:
                    continue
                seen[name].update(v if isinstance(v, tuple) else (v,))
        cats = {}
        for name, values in seen.items():
            seed = field_spec(name).categories
            extra = sorted(values - set(seed))
            cats[name] = (UNKNOWN, *seed, *extra)
        return cls(cats)

    @classmethod
    def defaults(cls) -> Vocabulary:
        return cls.fit([])

    def index(self, name: str, value: str) -> int:
        """Index of ``value`` in field ``name``; 0 (unknown) for unseen categories."""
        cats = self.categories[name]
        try:
            return cats.index(value)
        except ValueError:
            return 0

    def size(self, name: str) -> int:
        return len(self.categories[name])

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.categories.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        return cls({k: tuple(v) for k, v in data.items()})


def save_json(path: str | Path, ranges: NumericRanges, vocab: Vocabulary) -> None:
    """Write both to one JSON file (``metadata_stats.json`` in a run dir)."""
    Path(path).write_text(
        json.dumps({"numeric_ranges": ranges.to_dict(), "vocabulary": vocab.to_dict()}, indent=2)
    )


def load_json(path: str | Path) -> tuple[NumericRanges, Vocabulary]:
    data = json.loads(Path(path).read_text())
    return NumericRanges.from_dict(data["numeric_ranges"]), Vocabulary.from_dict(data["vocabulary"])
