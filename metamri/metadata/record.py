"""The typed metadata record that travels beside every image.

:class:`Metadata` is a frozen dataclass made from :data:`~metamri.metadata.schema.SCHEMA`:
one attribute per field, in schema order, each defaulting to ``None`` (missing), so a
field added to the schema is an attribute of every record with no change here.
Values are checked on construction by :func:`~metamri.metadata.validate.check_value`
(numeric fields: finite numbers in the schema's units, inside the field's valid range;
categorical fields: strings; multi-label fields: tuples of strings); a value that does
not fit raises :class:`~metamri.metadata.validate.FieldValueError`, a
:class:`~metamri.errors.MetadataError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from metamri.errors import MetadataError
from metamri.metadata.schema import (
    FIELD_NAMES,
    SCHEMA,
    STORED_COMPANIONS,
    FieldKind,
    FieldSpec,
    field_spec,
)
from metamri.metadata.validate import check_value


class _Record:
    """The methods of :class:`Metadata` (its attributes come from the schema)."""

    def __post_init__(self) -> None:
        for spec in SCHEMA:
            object.__setattr__(self, spec.name, check_value(spec, getattr(self, spec.name)))

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
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def without(self, fields: Iterable[str]) -> Metadata:
        """Copy with ``fields`` set to missing (used by the drop-one-field ablation).

        A field's stored-value companions go with it: dropping ``ti`` also clears
        ``ti_stored``, so no prompt prints a TI the ablation removed.
        """
        fields = _with_companions(fields)
        return dataclasses.replace(self, **{f: None for f in fields})  # type: ignore[type-var]

    def only(self, fields: Iterable[str]) -> Metadata:
        """Copy that keeps ``fields`` (and their stored-value companions) and sets every
        other field to missing."""
        keep = set(_with_companions(fields))
        return dataclasses.replace(self, **{f: None for f in FIELD_NAMES if f not in keep})  # type: ignore[type-var]

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


_TYPES = {FieldKind.NUMERIC: float, FieldKind.CATEGORICAL: str, FieldKind.MULTILABEL: tuple[str, ...]}


def _attribute_doc(spec: FieldSpec) -> str:
    units = f", {spec.units}" if spec.units else ""
    return f"        {spec.name}: {spec.description.rstrip('.')}{units} ({spec.kind})."


def _make_record() -> type:
    doc = "\n".join([
        "Metadata of one slice: one attribute per schema field, ``None`` where missing.",
        "",
        "    Made from :data:`~metamri.metadata.schema.SCHEMA` (see the module docstring).",
        "",
        "    Attributes:",
        *(_attribute_doc(spec) for spec in SCHEMA),
        "    ",
    ])
    return dataclasses.make_dataclass(
        "Metadata",
        [(spec.name, _TYPES[spec.kind] | None, dataclasses.field(default=None)) for spec in SCHEMA],
        bases=(_Record,),
        frozen=True,
        namespace={"__module__": __name__, "__qualname__": "Metadata", "__doc__": doc},
    )


#: The record class (a frozen dataclass; ``dataclasses.fields(Metadata)`` are the schema's fields).
Metadata = _make_record()
