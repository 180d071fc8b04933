"""Text prompts built from a :class:`Metadata` record, in two styles.

``"contextmri"`` (the default): exactly the prompt ContextMRI's own code builds
from its metadata tables (``utils.row_to_text_string`` of DoHunLee1/ContextMRI),
which its released checkpoint was trained on::

    "{anatomy}, Slice {slice}, {contrast}[, Pathology: {n} {label}, ...]
     [, Sequence: {sequence}, TR: {TR}, TE: {TE}, TI: {TI}, Flip angle: {flip}]"

* contrast in ContextMRI's names (``AXFLAIR`` -> ``FLAIR``, ``AXT1POST`` ->
  ``T1 post-contrast``; :mod:`metamri.metadata.contrast`);
* pathology: the slice's labels counted, in order of first appearance
  (``"2 Nonspecific white matter lesion, 1 Edema"``);
* TI as the file stores it (``ti_stored``), placeholders included (``TI: 100`` on a
  TSE T2), falling back to ``ti`` for records that carry no stored value;
* the acquisition block (sequence, TR, TE, TI, flip angle) is all-or-nothing: it
  is left out whole when any of its fields is dropped (ContextMRI keeps it in
  training with p = 0.5, always at inference; see ``conf/dropout/contextmri.yaml``).
  A value a record lacks (never the case in ContextMRI's tables) is left out alone;
* numbers print as ContextMRI's pandas integers do: ``9000``, not ``9000.0``;
  non-integers as Python prints them (``2.64``).

``"metamri"``: the field-by-field prompt of earlier metamri versions, every field
``Label: value`` with the record's own labels (``AXFLAIR``) and the
inversion-recovery TI only; a dropped or missing field leaves only itself out.

Both read the fields they may show from the schema; a field that is dropped or
missing never appears with its label.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from metamri.errors import ConfigError
from metamri.metadata.contrast import contextmri_contrast
from metamri.metadata.record import Metadata
from metamri.metadata.schema import PAPER_FIELDS, field_spec, resolve_fields

#: The acquisition block of ContextMRI's prompt, in its order.
ACQUISITION_FIELDS: tuple[str, ...] = ("sequence", "tr", "te", "ti", "flip_angle")
_CORE_FIELDS = ("anatomy", "slice", "contrast")
_ACQ_LABELS = {"sequence": "Sequence", "tr": "TR", "te": "TE", "ti": "TI", "flip_angle": "Flip angle"}


def format_number(value: float) -> str:
    """A number as ContextMRI's prompts print it: integers without a decimal point,
    anything else as Python's ``str``.

    >>> format_number(9000.0), format_number(2.64), format_number(1.4)
    ('9000', '2.64', '1.4')
    """
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)


def count_labels(labels: Iterable[str]) -> str:
    """ContextMRI's pathology text: each label with its count, in order of first appearance.

    >>> count_labels(["Lacunar infarct", "Dural thickening", "Dural thickening"])
    '1 Lacunar infarct, 2 Dural thickening'
    """
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in counts.items())


def contextmri_prompt(meta: Metadata, fields: str | Iterable[str] = PAPER_FIELDS,
                      dropped: Collection[str] = ()) -> str:
    """ContextMRI's prompt for ``meta`` (see the module doc): its parts
    (:func:`contextmri_prompt_parts`) joined by ``", "``.

    Args:
        meta: The slice's record.
        fields: Fields the prompt may show (an encoder's fields, or a named set such as
            ``"contextmri"``); pathology appears only when listed (``"contextmri"`` lists it).
        dropped: Fields dropped for this sample (CFG); dropping any acquisition field
            leaves the whole acquisition block out.

    >>> rec = Metadata(anatomy="brain", slice=0, contrast="AXT2", sequence="TurboSpinEcho",
    ...                tr=6190, te=113, ti_stored=100, flip_angle=174)
    >>> contextmri_prompt(rec)
    'brain, Slice 0, T2, Sequence: TurboSpinEcho, TR: 6190, TE: 113, TI: 100, Flip angle: 174'
    >>> contextmri_prompt(rec, dropped={"te"})
    'brain, Slice 0, T2'
    """
    return ", ".join(text for _, text in contextmri_prompt_parts(meta, fields, dropped))


def contextmri_prompt_parts(meta: Metadata, fields: str | Iterable[str] = PAPER_FIELDS,
                            dropped: Collection[str] = ()) -> list[tuple[str, str]]:
    """``(field, text)`` of each part of ContextMRI's prompt, in order (which words spell which field).

    >>> contextmri_prompt_parts(Metadata(anatomy="brain", slice=2, contrast="AXT2", tr=6190.0), "all")[:3]
    [('anatomy', 'brain'), ('slice', 'Slice 2'), ('contrast', 'T2')]
    """
    fields = _fields(fields)
    for f in dropped:
        field_spec(f)
    shown = set(fields) - set(dropped)
    parts: list[tuple[str, str]] = []
    for name in _CORE_FIELDS:
        value = getattr(meta, name)
        if name not in shown or value is None:
            continue
        if name == "slice":
            parts.append((name, f"Slice {format_number(value)}"))
        elif name == "contrast":
            parts.append((name, contextmri_contrast(value)))
        else:
            parts.append((name, str(value)))
    if "pathology" in shown and meta.pathology:
        parts.append(("pathology", f"Pathology: {count_labels(meta.pathology)}"))
    block = [f for f in ACQUISITION_FIELDS if f in fields]
    if block and not set(block) & set(dropped):
        for name in block:
            value = _stored_ti(meta) if name == "ti" else getattr(meta, name)
            if value is None:
                continue
            text = value if isinstance(value, str) else format_number(value)
            parts.append((name, f"{_ACQ_LABELS[name]}: {text}"))
    return parts


def _stored_ti(meta: Metadata) -> float | None:
    return meta.ti_stored if meta.ti_stored is not None else meta.ti


def metamri_prompt(meta: Metadata, fields: str | Iterable[str] = PAPER_FIELDS,
                   dropped: Collection[str] = ()) -> str:
    """The field-by-field prompt: ``fields`` minus ``dropped``, each present one as
    ``Label: value`` in the schema's prompt order (anatomy and contrast bare).

    >>> metamri_prompt(Metadata(anatomy="brain", slice=3, contrast="AXFLAIR", tr=9000.0, ti=None))
    'brain, Slice 3, AXFLAIR, TR: 9000'
    """
    return ", ".join(text for _, text in metamri_prompt_parts(meta, fields, dropped))


def metamri_prompt_parts(meta: Metadata, fields: str | Iterable[str] = PAPER_FIELDS,
                         dropped: Collection[str] = ()) -> list[tuple[str, str]]:
    """``(field, text)`` of each part of the field-by-field prompt, in order."""
    order = ("anatomy", "slice", "contrast", "sequence", "tr", "te", "ti", "flip_angle")
    fields = list(_fields(fields))
    for f in dropped:
        field_spec(f)
    wanted = set(fields) - set(dropped)
    ordered = [f for f in order if f in wanted] + [f for f in fields if f in wanted and f not in order]
    parts: list[tuple[str, str]] = []
    for name in ordered:
        spec = field_spec(name)
        value = getattr(meta, name)
        if value is None or spec.prompt_label is None:
            continue
        text = _fmt_g(value) if isinstance(value, float) else (
            ", ".join(value) if isinstance(value, tuple) else str(value)
        )
        if spec.prompt_label == "":
            parts.append((name, text))
        elif name == "slice":
            parts.append((name, f"Slice {text}"))
        else:
            parts.append((name, f"{spec.prompt_label}: {text}"))
    return parts


def _fields(fields: str | Iterable[str]) -> tuple[str, ...]:
    """A named field set or a list, validated against the schema."""
    if isinstance(fields, str):
        return resolve_fields(fields)
    out = tuple(fields)
    for f in out:
        field_spec(f)
    return out


def _fmt_g(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


#: Prompt style name -> builder ``(meta, fields, dropped) -> str``.
PROMPT_STYLES: dict[str, Callable[..., str]] = {
    "contextmri": contextmri_prompt,
    "metamri": metamri_prompt,
}
#: Prompt style name -> ``(meta, fields, dropped) -> [(field, text), ...]`` (the parts joined by ", ").
PROMPT_PARTS: dict[str, Callable[..., list[tuple[str, str]]]] = {
    "contextmri": contextmri_prompt_parts,
    "metamri": metamri_prompt_parts,
}


def prompt_builder(style: str, key: str = "encoder.prompt") -> Callable[..., str]:
    """The builder of a named style; an unknown name is a :class:`ConfigError` at ``key``."""
    if style not in PROMPT_STYLES:
        raise ConfigError(key, style, "unknown prompt style", hint=f"choose one of {list(PROMPT_STYLES)}")
    return PROMPT_STYLES[style]


def build_prompt(meta: Metadata, fields: str | Iterable[str] = PAPER_FIELDS, dropped: Collection[str] = (),
                 style: str = "contextmri") -> str:
    """The prompt of ``meta`` in ``style`` (``"contextmri"`` or ``"metamri"``).

    >>> build_prompt(Metadata(anatomy="brain", slice=3, contrast="AXFLAIR"), style="metamri")
    'brain, Slice 3, AXFLAIR'
    >>> build_prompt(Metadata(anatomy="brain", slice=3, contrast="AXFLAIR"))
    'brain, Slice 3, FLAIR'
    """
    return prompt_builder(style)(meta, fields, dropped)
