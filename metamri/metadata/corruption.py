"""Bad headers on purpose: a seeded corruption of the metadata records an encoder sees.

How much does a metadata-conditioned prior lose when the header is wrong or incomplete?
:class:`MetadataCorruption` changes a slice's :class:`~metamri.metadata.record.Metadata`
the way a faulty file would, in four independent ways (each off by default):

* ``shuffle``: the volume gets the record of another volume of the evaluated split (a
  derangement over the split's sorted volume names, :meth:`~MetadataCorruption.with_volumes`,
  built with :func:`metamri.analysis.information.volume_derangement`). The slice keeps its
  own slice number: that is the image's position in its volume, not a header value (and a
  donor with fewer slices may have no slice of that number), so only the header moves;
* ``wrong_fields``: each listed categorical field is replaced by a category drawn uniformly
  from the schema's vocabulary for that field (``FieldSpec.categories``), never the true one
  (a value outside the vocabulary may become any category);
* ``numeric_scale`` s: every numeric field but the slice number (TR, TE, TI in ms, flip angle
  in degrees, field strength in T, age in years) is multiplied by ``1 + s`` or ``1 - s``,
  the sign drawn per volume and field; a stored-value companion (``ti_stored``) moves with its
  field by the same factor. A product outside the field's ``valid_range`` is clipped to it;
* ``missing_rate`` p: each field but the slice number is missing with probability p
  (``Metadata.without``: its stored-value companion goes with it).

A header error belongs to a file, so every draw is per *volume*: it depends only on
``(seed, fname, field)`` (a generator seeded with ``crc32("<kind>|<fname>|<field>")``), so
all slices of a volume are corrupted alike, whatever the batching, the sharding over DDP
ranks or the order of the slices. Missing values stay missing (no corruption fills one in).
Applied in that order: shuffle, wrong categories, numeric scale, missing. With every
setting off the call returns its input unchanged (the same object).

Example:
    >>> from metamri.metadata import Metadata
    >>> c = MetadataCorruption(numeric_scale=0.1, seed=3)
    >>> m = c(Metadata(tr=1000.0, slice=4.0), "file_brain_AXT2_1.h5")
    >>> m.tr in (1100.0, 900.0), m.slice
    (True, 4.0)
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metamri.errors import ConfigError
from metamri.metadata.record import Metadata
from metamri.metadata.schema import (
    EMBEDDABLE_FIELDS,
    FIELD_NAMES,
    FIELDS,
    NUMERIC_FIELDS,
    FieldKind,
)
from metamri.utils import checks

#: The position of the slice in its volume: never corrupted.
SLICE_FIELD = "slice"
#: Fields ``numeric_scale`` multiplies (companions such as ``ti_stored`` included).
SCALED_FIELDS: tuple[str, ...] = tuple(n for n in NUMERIC_FIELDS if n != SLICE_FIELD)
#: Fields ``missing_rate`` may remove (a companion goes with its field).
MISSABLE_FIELDS: tuple[str, ...] = tuple(n for n in EMBEDDABLE_FIELDS if n != SLICE_FIELD)
#: The config keys (``corrupt.<key>``), in order.
KEYS = ("missing_rate", "numeric_scale", "wrong_fields", "shuffle", "seed")


@dataclass(frozen=True)
class MetadataCorruption:
    """A seeded, per-volume corruption of metadata records (see the module docstring).

    Attributes:
        missing_rate: Probability in [0, 1] that a field of a volume is missing.
        numeric_scale: s in [0, 1): numeric fields are multiplied by ``1 + s`` or ``1 - s``.
        wrong_fields: Categorical fields replaced by another category of their vocabulary.
        shuffle: Each volume gets the record of another volume of the split.
        seed: Seed of every draw (and of the derangement).
        donors: ``fname -> (donor fname, the donor's record)`` for ``shuffle`` (set by
            :meth:`with_volumes`); ``None`` until then.

    Raises:
        ConfigError: A value outside its range or an unusable field, naming ``corrupt.<key>``.
    """

    missing_rate: float = 0.0
    numeric_scale: float = 0.0
    wrong_fields: tuple[str, ...] = ()
    shuffle: bool = False
    seed: int = 0
    donors: Mapping[str, tuple[str, Metadata]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        rate = checks.number(self.missing_rate, "corrupt.missing_rate", minimum=0.0, maximum=1.0,
                             hint="the probability that a field of a volume is missing")
        scale = checks.number(self.numeric_scale, "corrupt.numeric_scale", minimum=0.0, below=1.0,
                              hint="s: numeric fields are multiplied by 1 + s or 1 - s (0.1 = 10%)")
        wrong = checks.string_list(self.wrong_fields, "corrupt.wrong_fields")
        for name in wrong:
            if name not in FIELDS:
                raise ConfigError("corrupt.wrong_fields", wrong, f"unknown metadata field {name!r}",
                                  hint=f"known: {list(FIELD_NAMES)}")
            if FIELDS[name].kind is not FieldKind.CATEGORICAL:
                raise ConfigError("corrupt.wrong_fields", wrong, f"{name!r} is a {FIELDS[name].kind} field",
                                  hint="wrong_fields replaces categories; perturb numbers with numeric_scale")
        checks.boolean(self.shuffle, "corrupt.shuffle")
        object.__setattr__(self, "missing_rate", rate)
        object.__setattr__(self, "numeric_scale", scale)
        object.__setattr__(self, "wrong_fields", tuple(dict.fromkeys(wrong)))
        object.__setattr__(self, "seed", checks.integer(self.seed, "corrupt.seed"))

    @classmethod
    def from_config(cls, cfg: Any = None) -> MetadataCorruption:
        """The ``corrupt`` block: a mapping (a Hydra node) of some of :data:`KEYS`, an instance,
        or ``None`` (no corruption).

        Raises:
            ConfigError: An unknown key (``corrupt.<key>``) or an invalid value.
        """
        if isinstance(cfg, cls):
            return cfg
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise ConfigError("corrupt", cfg, f"must be a mapping of {list(KEYS)}")
        for key in cfg:
            if key not in KEYS:
                raise ConfigError(f"corrupt.{key}", cfg[key], "unknown metadata-corruption setting",
                                  hint=f"known: {list(KEYS)}")
        return cls(**dict(cfg))

    # -- what it is ---------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether any record changes (``False``: the call is the identity)."""
        return bool(self.missing_rate or self.numeric_scale or self.wrong_fields or self.shuffle)

    def to_dict(self) -> dict[str, Any]:
        """The settings, plain values in :data:`KEYS` order (lists for ``wrong_fields``)."""
        return {"missing_rate": self.missing_rate, "numeric_scale": self.numeric_scale,
                "wrong_fields": list(self.wrong_fields), "shuffle": self.shuffle, "seed": self.seed}

    def summary(self) -> str:
        """One line of the settings that are on, and the seed (``"off"`` when inactive)."""
        if not self.active:
            return "off"
        parts = [f"missing_rate={self.missing_rate:g}"] if self.missing_rate else []
        parts += [f"numeric_scale={self.numeric_scale:g}"] if self.numeric_scale else []
        parts += [f"wrong_fields=[{', '.join(self.wrong_fields)}]"] if self.wrong_fields else []
        parts += ["shuffle"] if self.shuffle else []
        return ", ".join([*parts, f"seed={self.seed}"])

    # -- the split's volumes (shuffle) ----------------------------------------------------------
    def with_volumes(self, records: Mapping[str, Metadata]) -> MetadataCorruption:
        """A copy whose ``shuffle`` draws donors among ``records`` (fname -> the volume's record).

        The derangement is over the *sorted* names, so every process that holds the split
        computes the same map whatever order it read the volumes in.

        Raises:
            ConfigError: ``shuffle`` with fewer than two volumes.
        """
        from metamri.analysis.information import volume_derangement

        names = sorted(str(n) for n in records)
        if len(names) < 2:
            raise ConfigError("corrupt.shuffle", True, f"needs at least two volumes in the split, got {len(names)}",
                              hint="evaluate a split with more volumes, or corrupt.shuffle=false")
        donor = volume_derangement(names, self.seed)
        table = {name: (names[int(j)], records[names[int(j)]]) for name, j in zip(names, donor, strict=True)}
        return dataclasses.replace(self, donors=table)

    def donor(self, fname: str) -> tuple[str, Metadata]:
        """``(donor fname, its record)``: whose header volume ``fname`` gets under ``shuffle``.

        Raises:
            ValueError: :meth:`with_volumes` was not called, or ``fname`` is not one of its volumes.
        """
        if self.donors is None:
            raise ValueError("corrupt.shuffle needs the split's volumes: call with_volumes(records) first")
        try:
            return self.donors[str(fname)]
        except KeyError:
            raise ValueError(f"{fname}: not a volume of the split the shuffle was drawn over") from None

    # -- the corruption -------------------------------------------------------------------------
    def _rng(self, kind: str, fname: str, name: str) -> np.random.Generator:
        """The generator of one draw: depends only on (seed, kind, fname, field)."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, zlib.crc32(f"{kind}|{fname}|{name}".encode())])

    def __call__(self, meta: Metadata, fname: str) -> Metadata:
        """The corrupted record of a slice of volume ``fname`` (``meta`` itself when inactive)."""
        if not self.active:
            return meta
        fname = str(fname)
        if self.shuffle:
            meta = self.donor(fname)[1].replace(slice=meta.slice)
        changes: dict[str, Any] = {}
        for name in self.wrong_fields:
            value = getattr(meta, name)
            if value is not None:
                choices = [c for c in FIELDS[name].categories if c != value]
                changes[name] = choices[int(self._rng("wrong", fname, name).integers(len(choices)))]
        if self.numeric_scale:
            s = self.numeric_scale
            for name in SCALED_FIELDS:
                value = getattr(meta, name)
                if value is None:
                    continue
                spec = FIELDS[name]
                up = self._rng("scale", fname, spec.stored_for or name).random() < 0.5
                low, high = spec.valid_range
                changes[name] = min(max(value * (1.0 + s) if up else value * (1.0 - s), low), high)
        if changes:
            meta = meta.replace(**changes)
        if self.missing_rate:
            lost = [n for n in MISSABLE_FIELDS if self._rng("missing", fname, n).random() < self.missing_rate]
            if lost:
                meta = meta.without(lost)
        return meta
