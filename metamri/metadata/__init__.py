"""Metadata as a first-class, typed object: schema, record, normalisation, prompts, tables."""

from metamri.metadata.contextmri_table import ContextMRITable, read_contextmri_table
from metamri.metadata.contrast import acquisition_from_contextmri, contextmri_contrast
from metamri.metadata.normalization import UNKNOWN, NumericRanges, Vocabulary
from metamri.metadata.prompt import (
    ACQUISITION_FIELDS,
    PROMPT_STYLES,
    build_prompt,
    contextmri_prompt,
    metamri_prompt,
)
from metamri.metadata.record import Metadata
from metamri.metadata.rules import is_inversion_recovery
from metamri.metadata.schema import (
    CATEGORICAL_FIELDS,
    CONTEXTMRI_FIELDS,
    EMBEDDABLE_FIELDS,
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
    "ACQUISITION_FIELDS", "CATEGORICAL_FIELDS", "CONTEXTMRI_FIELDS", "EMBEDDABLE_FIELDS",
    "FIELD_NAMES", "FIELDS", "MULTILABEL_FIELDS", "NUMERIC_FIELDS", "PAPER_FIELDS", "PROMPT_STYLES",
    "SCHEMA", "UNKNOWN", "ContextMRITable", "FieldKind", "FieldSpec", "Metadata", "NumericRanges",
    "Vocabulary", "acquisition_from_contextmri", "build_prompt", "contextmri_contrast",
    "contextmri_prompt", "field_spec", "is_inversion_recovery", "metamri_prompt",
    "read_contextmri_table", "resolve_fields",
]
