"""The one definition of every metadata field metamri knows.

Readers, validation, the text-prompt builder (ContextMRI baseline), the fine-grained
encoder, classifier-free-guidance dropout and the ablations (drop one field, keep one
field) all read :data:`SCHEMA`.  Adding a field here is the only change needed for it
to be read from every format that names a source for it, checked, carried by
:class:`~metamri.metadata.record.Metadata` (whose attributes are made from this
table), normalised, embedded and ablated; ``tests/test_schema_drives_readers.py``
proves it with a field that exists only in a test.

Conventions
-----------
* **Sources** (``FieldSpec.sources``): per file format (``"fastmri"``, ``"cmrxrecon"``,
  ``"contextmri"``), where the value is and how it becomes the field's value: an
  ISMRMRD header path with a unit factor, a table column, a file-name rule ...
  (:mod:`metamri.metadata.sources`).  The readers run them
  (:func:`metamri.metadata.extract.read_values`); no reader names a field.
* **Missing** is always ``None`` in a :class:`~metamri.metadata.record.Metadata`
  record, whatever the file stored (fastMRI's placeholder TI, an absent sidecar
  column, an empty string).  Where a stored value still matters (ContextMRI's
  prompts print the placeholder TI), a prompt-only companion field keeps it
  (``ti_stored``, ``stored_for="ti"``).  Encoders map ``None`` to a learned per-field
  "empty" embedding, the same one used when a field is dropped for CFG.  A file that
  lacks a value its format should give, for a field the encoder reads (by default the
  ``required`` fields), is reported: a warning, or an error with ``strict``
  (:mod:`metamri.metadata.missing`).
* **Numeric** values are stored in the units below (ms, degrees, tesla, years), must
  lie in ``valid_range`` (:func:`metamri.metadata.validate.check_value`, the one check
  of every value) and are normalised to [0, 1] with
  :class:`~metamri.metadata.normalization.NumericRanges`, computed on the training
  split.  ``default_range`` is only a fallback for code paths that run before any data
  has been seen.
* **Categorical** values are strings.  ``categories`` is the seed vocabulary;
  the vocabulary actually used by a model is built from the training split and
  stored in the checkpoint, and a value outside it maps to an "unknown"
  embedding.
* **Multi-label** values are tuples of strings (e.g. several pathologies).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from metamri.metadata.contrast import acquisition_from_contextmri
from metamri.metadata.rules import axial_view, cine_view, inversion_recovery_scan
from metamri.metadata.sources import (
    FORMATS,
    Column,
    Constant,
    FileAttribute,
    FileName,
    FromField,
    HeaderPath,
    ItemPosition,
    NotStored,
    Source,
)

_ANY = (-math.inf, math.inf)


class FieldKind(StrEnum):
    """How a field is typed and embedded."""

    CATEGORICAL = "categorical"
    NUMERIC = "numeric"
    MULTILABEL = "multilabel"


@dataclass(frozen=True)
class FieldSpec:
    """One metadata field.

    Attributes:
        name: Key in :class:`Metadata` and in configs (``tr``, ``flip_angle`` ...).
        kind: Categorical, numeric or multi-label.
        description: One line for humans (``metamri.inspect`` docs, README).
        units: Physical units of numeric values (``"ms"``, ``"deg"``, ``"T"``), else ``None``.
        sources: Where the value comes from in each file format, keyed by format name
            (:data:`~metamri.metadata.sources.FORMATS`); a format not named stores nothing
            (:meth:`source`).  See :mod:`metamri.metadata.sources`.
        missing: When the field is ``None``.
        categories: Seed vocabulary of a categorical or multi-label field.
        default_range: Fallback (low, high) normalisation range of a numeric field.
        valid_range: (low, high) a numeric value must lie in, bounds included, in
            ``units``; a value outside is an error naming the file, the field and the value.
        required: Readers report a file that lacks the field (when its format should give
            it) unless told which fields the encoder reads (:data:`REQUIRED_FIELDS`).
        prompt_label: Label of the field in the ContextMRI text prompt; ``None``
            keeps the field out of the prompt.
        in_paper: Whether the paper's ablations (Tables 3 and 4) use the field.
        stored_for: For a field that keeps the value a file *stores* for another field
            (``ti_stored``: the header's TI, placeholders included, behind ``ti``), the
            name of that field.  Such a field is prompt-only: ``fields="all"`` leaves it
            out (it is never embedded unless named explicitly), and dropping or keeping
            its field (``Metadata.without`` / ``only``) drops or keeps it too.
    """

    name: str
    kind: FieldKind
    description: str
    units: str | None = None
    sources: Mapping[str, Source] = field(default_factory=dict)
    missing: str = "absent from the file"
    categories: tuple[str, ...] = ()
    default_range: tuple[float, float] | None = None
    valid_range: tuple[float, float] = _ANY
    required: bool = False
    prompt_label: str | None = None
    in_paper: bool = False
    stored_for: str | None = None

    def __post_init__(self) -> None:
        if self.kind is FieldKind.NUMERIC and self.default_range is None:
            raise ValueError(f"numeric field {self.name!r} needs a default_range")
        if self.kind is not FieldKind.NUMERIC and (self.units is not None or self.valid_range != _ANY):
            raise ValueError(f"only numeric fields carry units and a valid range; {self.name!r} is {self.kind}")
        low, high = self.valid_range
        if not low <= high:
            raise ValueError(f"field {self.name!r}: valid_range {self.valid_range} is not an interval")
        unknown = sorted(set(self.sources) - set(FORMATS))
        if unknown:
            raise ValueError(f"field {self.name!r}: unknown format(s) {unknown}; formats are {list(FORMATS)}")
        for fmt, src in self.sources.items():
            if not isinstance(src, Source):
                raise ValueError(f"field {self.name!r}: the {fmt} source must be a metamri.metadata.sources.Source")

    def source(self, fmt: str) -> Source:
        """Where the value is in format ``fmt`` (:class:`NotStored` when the format is not named)."""
        return self.sources.get(fmt, _NOT_STORED)

    def range_text(self) -> str:
        """``valid_range`` for messages: ``[0, 180] deg``, ``[0, inf) ms``."""
        low, high = self.valid_range
        left = "(-inf" if low == -math.inf else f"[{low:g}"
        right = "inf)" if high == math.inf else f"{high:g}]"
        return f"{left}, {right}" + (f" {self.units}" if self.units else "")


_NOT_STORED = NotStored()
_CMRI = "ContextMRI metadata table"
_SIDE = "sidecar table cine_info.csv"
_POSITIVE = (0.0, math.inf)


def _side(column: str, **kwargs) -> Column:
    """A column of the CMRxRecon sidecar table ``cine_info.csv``."""
    return Column(column, table=_SIDE, **kwargs)


def _cmri(column: str, **kwargs) -> Column:
    """A column of ContextMRI's metadata table (``metamri.metadata.contextmri_table``)."""
    return Column(column, table=_CMRI, **kwargs)


SCHEMA: tuple[FieldSpec, ...] = (
    FieldSpec(
        name="anatomy",
        kind=FieldKind.CATEGORICAL,
        description="Body region imaged.",
        sources={"fastmri": Constant("brain"), "cmrxrecon": Constant("heart"), "contextmri": _cmri("anatomy")},
        categories=("brain", "heart"),
        required=True,
        prompt_label="",
        in_paper=True,
    ),
    FieldSpec(
        name="contrast",
        kind=FieldKind.CATEGORICAL,
        description="Acquisition/contrast label (fastMRI's `acquisition` attribute).",
        sources={
            "fastmri": FileAttribute("acquisition"),
            "cmrxrecon": Constant("CINE"),
            # its name ('FLAIR') mapped back to the fastMRI label (AXFLAIR)
            "contextmri": _cmri("contrast", convert=acquisition_from_contextmri),
        },
        categories=("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR", "CINE"),
        required=True,
        prompt_label="",
        in_paper=True,
    ),
    FieldSpec(
        name="sequence",
        kind=FieldKind.CATEGORICAL,
        description="Pulse-sequence family as the scanner names it.",
        sources={"fastmri": HeaderPath("sequenceParameters/sequence_type"), "cmrxrecon": _side("sequence"),
                 "contextmri": _cmri("sequence")},
        categories=("TurboSpinEcho", "Flash", "TrueFISP"),
        required=True,
        prompt_label="Sequence",
        in_paper=True,
    ),
    FieldSpec(
        name="slice",
        kind=FieldKind.NUMERIC,
        description="Slice index within the volume (0-based).",
        units="index",
        sources={"fastmri": ItemPosition(), "cmrxrecon": ItemPosition(), "contextmri": _cmri("slice")},
        missing="never missing for slices read from a file",
        default_range=(0.0, 40.0),
        valid_range=_POSITIVE,
        required=True,
        prompt_label="Slice",
        in_paper=True,
    ),
    FieldSpec(
        name="tr",
        kind=FieldKind.NUMERIC,
        description="Repetition time.",
        units="ms",
        sources={"fastmri": HeaderPath("sequenceParameters/TR"), "cmrxrecon": _side("TR_ms"), "contextmri": _cmri("TR")},
        default_range=(0.0, 10000.0),
        valid_range=_POSITIVE,
        required=True,
        prompt_label="TR",
        in_paper=True,
    ),
    FieldSpec(
        name="te",
        kind=FieldKind.NUMERIC,
        description="Echo time.",
        units="ms",
        sources={"fastmri": HeaderPath("sequenceParameters/TE"), "cmrxrecon": _side("TE_ms"), "contextmri": _cmri("TE")},
        default_range=(0.0, 150.0),
        valid_range=_POSITIVE,
        required=True,
        prompt_label="TE",
        in_paper=True,
    ),
    FieldSpec(
        name="ti",
        kind=FieldKind.NUMERIC,
        description="Inversion time; only meaningful for inversion-recovery sequences (FLAIR).",
        units="ms",
        sources={
            "fastmri": HeaderPath("sequenceParameters/TI", when=inversion_recovery_scan),
            "cmrxrecon": _side("TI_ms", expected=inversion_recovery_scan),
            "contextmri": _cmri("TI", when=inversion_recovery_scan),
        },
        missing=(
            "absent, or the sequence is not an inversion recovery: fastMRI stores a "
            "placeholder TI (100 for TSE, 300 for FLASH) that is discarded here and kept "
            "in ti_stored"
        ),
        default_range=(0.0, 3000.0),
        valid_range=_POSITIVE,
        required=True,
        prompt_label="TI",
        in_paper=True,
    ),
    FieldSpec(
        name="ti_stored",
        kind=FieldKind.NUMERIC,
        description=(
            "TI exactly as the file stores it, placeholders included (fastMRI: 100 on TSE, "
            "300 on FLASH, 500 on some T2 TSE). Prompt-only: ContextMRI's prompts print it, "
            "so a pretrained ContextMRI model must see it; never embedded by default."
        ),
        units="ms",
        sources={"fastmri": HeaderPath("sequenceParameters/TI"), "cmrxrecon": NotStored(), "contextmri": _cmri("TI")},
        missing="the file stores no TI",
        default_range=(0.0, 3000.0),
        valid_range=_POSITIVE,
        prompt_label="TI",
        stored_for="ti",
    ),
    FieldSpec(
        name="flip_angle",
        kind=FieldKind.NUMERIC,
        description="Excitation flip angle (refocusing angle for TSE, as fastMRI headers store it).",
        units="deg",
        sources={"fastmri": HeaderPath("sequenceParameters/flipAngle_deg"), "cmrxrecon": _side("flip_angle_deg"),
                 "contextmri": _cmri("flip_angle")},
        default_range=(0.0, 180.0),
        valid_range=(0.0, 360.0),
        required=True,
        prompt_label="Flip angle",
        in_paper=True,
    ),
    FieldSpec(
        name="field_strength",
        kind=FieldKind.NUMERIC,
        description="Main magnetic field B0.",
        units="T",
        sources={"fastmri": HeaderPath("acquisitionSystemInformation/systemFieldStrength_T"),
                 "cmrxrecon": _side("field_strength_T")},
        default_range=(0.0, 7.0),
        valid_range=_POSITIVE,
    ),
    FieldSpec(
        name="view",
        kind=FieldKind.CATEGORICAL,
        description="Imaging plane: axial brain, cardiac short or long axis.",
        sources={"fastmri": FromField("contrast", axial_view), "cmrxrecon": FileName(cine_view),
                 "contextmri": FromField("contrast", axial_view)},
        categories=("AX", "SAX", "LAX"),
    ),
    FieldSpec(
        name="pathology",
        kind=FieldKind.MULTILABEL,
        description=(
            "Pathology labels, when a dataset provides them: one entry per annotation, in the "
            "order the source lists them (ContextMRI's prompt counts repeated labels)."
        ),
        sources={
            "fastmri": NotStored("fastMRI+ annotations are separate"),
            # the cine table lists a set: sorted, de-duplicated; no label is a normal state
            "cmrxrecon": _side("pathology", separator=";", sort_labels=True, expected=False),
            # one label per annotation, repeats kept
            "contextmri": _cmri("pathology", separator=", "),
        },
        categories=("normal", "lesion"),
    ),
    FieldSpec(
        name="age",
        kind=FieldKind.NUMERIC,
        description="Patient age.",
        units="years",
        sources={"fastmri": NotStored(), "cmrxrecon": _side("age")},
        default_range=(0.0, 100.0),
        valid_range=(0.0, 150.0),
    ),
    FieldSpec(
        name="sex",
        kind=FieldKind.CATEGORICAL,
        description="Patient sex as recorded.",
        sources={"fastmri": NotStored(), "cmrxrecon": _side("sex")},
        categories=("F", "M"),
    ),
)

FIELDS: dict[str, FieldSpec] = {spec.name: spec for spec in SCHEMA}
FIELD_NAMES: tuple[str, ...] = tuple(FIELDS)
if len(FIELDS) != len(SCHEMA):
    raise ValueError(f"metadata fields defined twice: {[s.name for s in SCHEMA]}")
for _spec in SCHEMA:
    for _fmt, _src in _spec.sources.items():
        if isinstance(_src, FromField) and (_src.name not in FIELDS or FIELDS[_src.name].sources.get(_fmt) is None
                                            or FIELDS[_src.name].source(_fmt).dependent):
            raise ValueError(f"{_spec.name!r} ({_fmt}) is read from {_src.name!r}, which that format does not "
                             "read first (a field with a source of its own and no rule)")
for _spec in SCHEMA:
    if _spec.stored_for is not None and (
        _spec.stored_for not in FIELDS or FIELDS[_spec.stored_for].kind is not _spec.kind
    ):
        raise ValueError(f"{_spec.name!r} is stored_for {_spec.stored_for!r}, not a field of the same kind")
#: field -> the prompt-only fields that keep its stored value (``{"ti": ("ti_stored",)}``).
STORED_COMPANIONS: dict[str, tuple[str, ...]] = {
    name: tuple(s.name for s in SCHEMA if s.stored_for == name)
    for name in FIELD_NAMES if any(s.stored_for == name for s in SCHEMA)
}
#: The fields readers report as missing unless told which fields the encoder reads.
REQUIRED_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.required)
#: The eight fields of the paper's ablations, in the order of its Tables 3-4.
PAPER_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.in_paper)
NUMERIC_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.kind is FieldKind.NUMERIC)
CATEGORICAL_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.kind is FieldKind.CATEGORICAL)
MULTILABEL_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.kind is FieldKind.MULTILABEL)
#: Every field except the stored-value companions (``ti_stored``): what ``fields="all"`` gives.
EMBEDDABLE_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.stored_for is None)
#: The fields ContextMRI's prompt reads (``metamri.metadata.prompt``), in its order:
#: the paper's eight plus pathology.
CONTEXTMRI_FIELDS: tuple[str, ...] = (
    "anatomy", "slice", "contrast", "pathology", "sequence", "tr", "te", "ti", "flip_angle",
)
#: Named field sets a config may give instead of a list.
FIELD_SETS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_FIELDS, "contextmri": CONTEXTMRI_FIELDS, "all": EMBEDDABLE_FIELDS,
}


def field_spec(name: str) -> FieldSpec:
    """Return the spec of ``name``; unknown names raise with the list of valid ones."""
    try:
        return FIELDS[name]
    except KeyError:
        raise KeyError(f"unknown metadata field {name!r}; known fields: {', '.join(FIELD_NAMES)}") from None


def resolve_fields(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Turn a config value into a tuple of valid field names.

    ``None`` or ``"paper"`` gives :data:`PAPER_FIELDS`; ``"contextmri"`` the fields of
    ContextMRI's prompt (:data:`CONTEXTMRI_FIELDS`); ``"all"`` every field except the
    stored-value companions such as ``ti_stored`` (:data:`EMBEDDABLE_FIELDS`), which an
    explicit list may still name.
    """
    if names is None:
        return PAPER_FIELDS
    if isinstance(names, str) and names in FIELD_SETS:
        return FIELD_SETS[names]
    if isinstance(names, str):
        names = [names]
    out = tuple(names)
    for n in out:
        field_spec(n)
    if len(set(out)) != len(out):
        raise ValueError(f"metadata fields listed twice: {list(out)}")
    return out
