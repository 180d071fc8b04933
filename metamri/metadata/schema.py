"""The one definition of every metadata field metamri knows.

Readers, the text-prompt builder (ContextMRI baseline), the fine-grained encoder,
classifier-free-guidance dropout and the ablations (drop one field, keep one
field) all read :data:`SCHEMA`.  Adding a field here is the only change needed
for it to be read, normalised, embedded and ablated.

Conventions
-----------
* **Missing** is always ``None`` in a :class:`~metamri.metadata.record.Metadata`
  record, whatever the file stored (fastMRI's placeholder TI, an absent sidecar
  column, an empty string).  Encoders map ``None`` to a learned per-field
  "empty" embedding, the same one used when a field is dropped for CFG.
* **Numeric** values are stored in the units below (ms, degrees, tesla, years)
  and normalised to [0, 1] with :class:`~metamri.metadata.normalization.NumericRanges`,
  computed on the training split.  ``default_range`` is only a fallback for
  code paths that run before any data has been seen.
* **Categorical** values are strings.  ``categories`` is the seed vocabulary;
  the vocabulary actually used by a model is built from the training split and
  stored in the checkpoint, and a value outside it maps to an "unknown"
  embedding.
* **Multi-label** values are tuples of strings (e.g. several pathologies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


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
        sources: Where the value comes from in each file format, keyed by format
            name (``"fastmri"``, ``"cmrxrecon"``); free text for documentation.
        missing: When the field is ``None``.
        categories: Seed vocabulary of a categorical or multi-label field.
        default_range: Fallback (low, high) normalisation range of a numeric field.
        prompt_label: Label of the field in the ContextMRI text prompt; ``None``
            keeps the field out of the prompt.
        in_paper: Whether the paper's ablations (Tables 3 and 4) use the field.
    """

    name: str
    kind: FieldKind
    description: str
    units: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    missing: str = "absent from the file"
    categories: tuple[str, ...] = ()
    default_range: tuple[float, float] | None = None
    prompt_label: str | None = None
    in_paper: bool = False

    def __post_init__(self) -> None:
        if self.kind is FieldKind.NUMERIC and self.default_range is None:
            raise ValueError(f"numeric field {self.name!r} needs a default_range")
        if self.kind is not FieldKind.NUMERIC and self.units is not None:
            raise ValueError(f"only numeric fields carry units; {self.name!r} is {self.kind}")


_HDR = "ismrmrd_header"
_SIDE = "sidecar table cine_info.csv"

SCHEMA: tuple[FieldSpec, ...] = (
    FieldSpec(
        name="anatomy",
        kind=FieldKind.CATEGORICAL,
        description="Body region imaged.",
        sources={"fastmri": "constant 'brain' (fastMRI brain files)", "cmrxrecon": "constant 'heart'"},
        categories=("brain", "heart"),
        prompt_label="",
        in_paper=True,
    ),
    FieldSpec(
        name="contrast",
        kind=FieldKind.CATEGORICAL,
        description="Acquisition/contrast label (fastMRI's `acquisition` attribute).",
        sources={"fastmri": "attrs['acquisition']", "cmrxrecon": "constant 'CINE' (Cine folder)"},
        categories=("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR", "CINE"),
        prompt_label="",
        in_paper=True,
    ),
    FieldSpec(
        name="sequence",
        kind=FieldKind.CATEGORICAL,
        description="Pulse-sequence family as the scanner names it.",
        sources={"fastmri": f"{_HDR}: sequenceParameters/sequence_type", "cmrxrecon": f"{_SIDE}: sequence"},
        categories=("TurboSpinEcho", "Flash", "TrueFISP"),
        prompt_label="Sequence",
        in_paper=True,
    ),
    FieldSpec(
        name="slice",
        kind=FieldKind.NUMERIC,
        description="Slice index within the volume (0-based).",
        units="index",
        sources={"fastmri": "position along the file's slice axis", "cmrxrecon": "position along the slice axis"},
        missing="never missing for slices read from a file",
        default_range=(0.0, 40.0),
        prompt_label="Slice",
        in_paper=True,
    ),
    FieldSpec(
        name="tr",
        kind=FieldKind.NUMERIC,
        description="Repetition time.",
        units="ms",
        sources={"fastmri": f"{_HDR}: sequenceParameters/TR", "cmrxrecon": f"{_SIDE}: TR_ms"},
        default_range=(0.0, 10000.0),
        prompt_label="TR",
        in_paper=True,
    ),
    FieldSpec(
        name="te",
        kind=FieldKind.NUMERIC,
        description="Echo time.",
        units="ms",
        sources={"fastmri": f"{_HDR}: sequenceParameters/TE", "cmrxrecon": f"{_SIDE}: TE_ms"},
        default_range=(0.0, 150.0),
        prompt_label="TE",
        in_paper=True,
    ),
    FieldSpec(
        name="ti",
        kind=FieldKind.NUMERIC,
        description="Inversion time; only meaningful for inversion-recovery sequences (FLAIR).",
        units="ms",
        sources={"fastmri": f"{_HDR}: sequenceParameters/TI", "cmrxrecon": f"{_SIDE}: TI_ms"},
        missing=(
            "absent, or the sequence is not an inversion recovery: fastMRI stores a "
            "placeholder TI (100 for TSE, 300 for FLASH) that is discarded"
        ),
        default_range=(0.0, 3000.0),
        prompt_label="TI",
        in_paper=True,
    ),
    FieldSpec(
        name="flip_angle",
        kind=FieldKind.NUMERIC,
        description="Excitation flip angle (refocusing angle for TSE, as fastMRI headers store it).",
        units="deg",
        sources={"fastmri": f"{_HDR}: sequenceParameters/flipAngle_deg", "cmrxrecon": f"{_SIDE}: flip_angle_deg"},
        default_range=(0.0, 180.0),
        prompt_label="Flip angle",
        in_paper=True,
    ),
    FieldSpec(
        name="field_strength",
        kind=FieldKind.NUMERIC,
        description="Main magnetic field B0.",
        units="T",
        sources={
            "fastmri": f"{_HDR}: acquisitionSystemInformation/systemFieldStrength_T",
            "cmrxrecon": f"{_SIDE}: field_strength_T",
        },
        default_range=(0.0, 7.0),
    ),
    FieldSpec(
        name="view",
        kind=FieldKind.CATEGORICAL,
        description="Imaging plane: axial brain, cardiac short or long axis.",
        sources={"fastmri": "'AX' from the acquisition label", "cmrxrecon": "file name cine_sax / cine_lax"},
        categories=("AX", "SAX", "LAX"),
    ),
    FieldSpec(
        name="pathology",
        kind=FieldKind.MULTILABEL,
        description="Pathology labels, when a dataset provides them.",
        sources={"fastmri": "not stored (fastMRI+ annotations are separate)", "cmrxrecon": f"{_SIDE}: pathology (';'-separated)"},
        categories=("normal", "lesion"),
    ),
    FieldSpec(
        name="age",
        kind=FieldKind.NUMERIC,
        description="Patient age.",
        units="years",
        sources={"fastmri": "not stored", "cmrxrecon": f"{_SIDE}: age"},
        default_range=(0.0, 100.0),
    ),
    FieldSpec(
        name="sex",
        kind=FieldKind.CATEGORICAL,
        description="Patient sex as recorded.",
        sources={"fastmri": "not stored", "cmrxrecon": f"{_SIDE}: sex"},
        categories=("F", "M"),
    ),
)

FIELDS: dict[str, FieldSpec] = {spec.name: spec for spec in SCHEMA}
FIELD_NAMES: tuple[str, ...] = tuple(FIELDS)
#: The eight fields of the paper's ablations, in the order of its Tables 3-4.
PAPER_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.in_paper)
NUMERIC_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.kind is FieldKind.NUMERIC)
CATEGORICAL_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.kind is FieldKind.CATEGORICAL)
MULTILABEL_FIELDS: tuple[str, ...] = tuple(s.name for s in SCHEMA if s.kind is FieldKind.MULTILABEL)


def field_spec(name: str) -> FieldSpec:
    """Return the spec of ``name``; unknown names raise with the list of valid ones."""
    try:
        return FIELDS[name]
    except KeyError:
        raise KeyError(f"unknown metadata field {name!r}; known fields: {', '.join(FIELD_NAMES)}") from None


def resolve_fields(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Turn a config value into a tuple of valid field names.

    ``None`` or ``"paper"`` gives :data:`PAPER_FIELDS`; ``"all"`` gives every field.
    """
    if names is None or names == "paper":
        return PAPER_FIELDS
    if names == "all":
        return FIELD_NAMES
    if isinstance(names, str):
        names = [names]
    out = tuple(names)
    for n in out:
        field_spec(n)
    if len(set(out)) != len(out):
        raise ValueError(f"metadata fields listed twice: {list(out)}")
    return out
