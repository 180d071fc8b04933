"""The typed metadata record that travels beside every image.

A :class:`Metadata` has one attribute per field of :data:`~metamri.metadata.schema.SCHEMA`
(a test keeps the two in step).  Values are validated on construction: numeric
fields must be finite numbers in the schema's units, categorical fields strings,
multi-label fields tuples of strings; ``None`` means missing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from metamri.errors import MetadataError
from metamri.metadata.schema import FIELD_NAMES, STORED_COMPANIONS, FieldKind, field_spec


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Metadata of one slice.

    Attributes:
        anatomy: ``"brain"`` | ``"heart"`` | ...
        contrast: fastMRI acquisition label (``"AXFLAIR"`` ...) or ``"CINE"``.
        sequence: Scanner sequence family (``"TurboSpinEcho"``, ``"Flash"``, ``"TrueFISP"``).
        slice: Slice index within the volume, 0-based.
        tr: Repetition time, ms.
        te: Echo time, ms.
        ti: Inversion time, ms; ``None`` unless the sequence is an inversion recovery.
        ti_stored: TI as the file stores it, ms, placeholders included (fastMRI: 100 on
            TSE, 300 on FLASH); prompt-only (ContextMRI's prompts print it).
        flip_angle: Flip angle, degrees.
        field_strength: B0, tesla.
        view: ``"AX"`` | ``"SAX"`` | ``"LAX"``.
        pathology: Tuple of labels, one per annotation in the source's order (repeats
            kept: ContextMRI's prompt counts them), or ``None``.
        age: Years.
        sex: ``"F"`` | ``"M"``.
    """

    anatomy: str | None = None
    contrast: str | None = None
    sequence: str | None = None
    slice: float | None = None
    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    ti_stored: float | None = None
    flip_angle: float | None = None
    field_strength: float | None = None
    view: str | None = None
    pathology: tuple[str, ...] | None = None
    age: float | None = None
    sex: str | None = None

    def __post_init__(self) -> None:
        for name in FIELD_NAMES:
            value = getattr(self, name)
            object.__setattr__(self, name, _validate(name, value))

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = True) -> Metadata:
        """Build a record from a mapping (JSON, a sidecar row, a config).

        Args:
            values: Field name to value; missing keys become ``None``.
            strict: Raise on keys that are not schema fields (otherwise ignore them).
        """
        unknown = sorted(set(values) - set(FIELD_NAMES))
        if unknown and strict:
            raise MetadataError(
                f"unknown metadata field(s) {unknown}; known fields: {', '.join(FIELD_NAMES)}"
            )
        return cls(**{k: v for k, v in values.items() if k in FIELD_NAMES})

    # -- views ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping of every field (tuples become lists, missing stays ``None``)."""
        out: dict[str, Any] = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> Metadata:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def without(self, fields: Iterable[str]) -> Metadata:
        """Copy with ``fields`` set to missing (used by the drop-one-field ablation).

        A field's stored-value companions go with it: dropping ``ti`` also clears
        ``ti_stored``, so no prompt prints a TI the ablation removed.
        """
        fields = _with_companions(fields)
        return dataclasses.replace(self, **{f: None for f in fields})

    def only(self, fields: Iterable[str]) -> Metadata:
        """Copy that keeps ``fields`` (and their stored-value companions) and sets every
        other field to missing."""
        keep = set(_with_companions(fields))
        return dataclasses.replace(self, **{f: None for f in FIELD_NAMES if f not in keep})

    def present(self) -> tuple[str, ...]:
        """Names of the fields that are not missing."""
        return tuple(n for n in FIELD_NAMES if getattr(self, n) is not None)


def _with_companions(fields: Iterable[str]) -> list[str]:
    """``fields`` (validated) plus the prompt-only fields that store their values."""
    out: list[str] = []
    for f in fields:
        field_spec(f)
        out += [f, *STORED_COMPANIONS.get(f, ())]
    return out


def _validate(name: str, value: Any) -> Any:
    """Check ``value`` against the schema kind of ``name`` and return it canonicalised."""
    if value is None:
        return None
    kind = field_spec(name).kind
    if kind is FieldKind.NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_numpy_number(value):
            raise MetadataError(f"metadata field {name!r} = {value!r}: expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise MetadataError(f"metadata field {name!r} = {value!r}: not a finite number")
        return value
    if kind is FieldKind.CATEGORICAL:
        if not isinstance(value, str):
            raise MetadataError(f"metadata field {name!r} = {value!r}: expected a string")
        value = value.strip()
        return value or None
    # multi-label
    if isinstance(value, str):
        value = [v for v in value.split(";")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise MetadataError(f"metadata field {name!r} = {value!r}: expected a list of strings")
    labels = tuple(v.strip() for v in value if v.strip())  # order and repeats kept
    return labels or None


def _is_numpy_number(value: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, (np.integer, np.floating))
