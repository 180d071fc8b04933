"""Metadata as a first-class, typed object: schema, record, normalisation, prompts, tables.

* :mod:`~metamri.metadata.schema`: every field, with its sources in every file format.
* :mod:`~metamri.metadata.sources`: the kinds of source (header path, table column ...).
* :mod:`~metamri.metadata.extract`: runs the sources on one file (what the readers call).
* :mod:`~metamri.metadata.validate`: the one check of a value against its field.
* :mod:`~metamri.metadata.missing`: metadata a file should give and does not.
* :mod:`~metamri.metadata.record`: :class:`Metadata`, made from the schema.
* :mod:`~metamri.metadata.corruption`: :class:`MetadataCorruption`, bad headers on purpose
  (robustness evaluations).
"""

from metamri.metadata.contextmri_table import ContextMRITable, read_contextmri_table
from metamri.metadata.contrast import acquisition_from_contextmri, contextmri_contrast
from metamri.metadata.corruption import MetadataCorruption
from metamri.metadata.extract import read_values
from metamri.metadata.missing import report_missing
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
    REQUIRED_FIELDS,
    SCHEMA,
    FieldKind,
    FieldSpec,
    field_spec,
    resolve_fields,
)
from metamri.metadata.sources import FileView
from metamri.metadata.validate import FieldValueError, check_value

__all__ = [
    "ACQUISITION_FIELDS", "CATEGORICAL_FIELDS", "CONTEXTMRI_FIELDS", "EMBEDDABLE_FIELDS",
    "FIELD_NAMES", "FIELDS", "MULTILABEL_FIELDS", "NUMERIC_FIELDS", "PAPER_FIELDS", "PROMPT_STYLES",
    "REQUIRED_FIELDS", "SCHEMA", "UNKNOWN", "ContextMRITable", "FieldKind", "FieldSpec", "FieldValueError",
    "FileView", "Metadata", "MetadataCorruption", "NumericRanges", "Vocabulary", "acquisition_from_contextmri", "build_prompt",
    "check_value", "contextmri_contrast", "contextmri_prompt", "field_spec", "is_inversion_recovery",
    "metamri_prompt", "read_contextmri_table", "read_values", "report_missing", "resolve_fields",
]
