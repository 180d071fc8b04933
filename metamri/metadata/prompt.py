"""The ContextMRI text prompt, built from a :class:`Metadata` record.

Format (DESIGN.md)::

    "{anatomy}, Slice {n}, {contrast}, Sequence: {seq}, TR: {TR}, TE: {TE}, TI: {TI}, Flip angle: {fa}"

Missing (or dropped) fields are left out of the prompt together with their label.
"""

from __future__ import annotations

from collections.abc import Iterable

from metamri.metadata.record import Metadata
from metamri.metadata.schema import PAPER_FIELDS, field_spec


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def build_prompt(meta: Metadata, fields: Iterable[str] = PAPER_FIELDS) -> str:
    """Render ``meta`` as the ContextMRI prompt, in the order of ``fields``.

    >>> build_prompt(Metadata(anatomy="brain", slice=3, contrast="AXFLAIR", tr=9000.0, ti=None))
    'brain, Slice 3, AXFLAIR, TR: 9000'
    """
    order = ("anatomy", "slice", "contrast", "sequence", "tr", "te", "ti", "flip_angle")
    wanted = set(fields)
    ordered = [f for f in order if f in wanted] + [f for f in fields if f not in order]
    parts: list[str] = []
    for name in ordered:
        spec = field_spec(name)
        value = getattr(meta, name)
        if value is None or spec.prompt_label is None:
            continue
        text = _fmt_number(value) if isinstance(value, float) else (
            ", ".join(value) if isinstance(value, tuple) else str(value)
        )
        if spec.prompt_label == "":
            parts.append(text)
        elif name == "slice":
            parts.append(f"Slice {text}")
        else:
            parts.append(f"{spec.prompt_label}: {text}")
    return ", ".join(parts)
