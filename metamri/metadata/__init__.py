"""Metadata as a first-class, typed object: schema, record, normalisation, prompt."""

from metamri.metadata.normalization import UNKNOWN, NumericRanges, Vocabulary
from metamri.metadata.prompt import build_prompt
from metamri.metadata.record import Metadata
from metamri.metadata.rules import is_inversion_recovery
from metamri.metadata.schema import (
    CATEGORICAL_FIELDS,
    FIELD_NAMES,
    FIELDS,
    MULTILABEL_FIELDS,
    NUMERIC_FIELDS,
    PAPER_FIELDS,
    SCHEMA,
    FieldKind,
    FieldSpec,
    field_spec,
    resolve_fields,
)

__all__ = [
    "CATEGORICAL_FIELDS", "FIELD_NAMES", "FIELDS", "MULTILABEL_FIELDS", "NUMERIC_FIELDS",
    "PAPER_FIELDS", "SCHEMA", "UNKNOWN", "FieldKind", "FieldSpec", "Metadata", "NumericRanges",
    "Vocabulary", "build_prompt", "field_spec", "is_inversion_recovery", "resolve_fields",
]
