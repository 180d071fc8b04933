"""Acquisition protocols: realistic (sequence, TR, TE, TI, flip, B0) per contrast.

Brain ranges follow the fastMRI brain values listed in ``DESIGN.md`` (ContextMRI's
public metadata table), with small jitter where fastMRI shows a single value
(flip 70 deg for FLASH becomes 65-75 deg) so that the numeric metadata vary:

=========  ==============  ============  ==========  ===================  ==========
contrast   sequence        TR (ms)       TE (ms)     TI (ms)              flip (deg)
=========  ==============  ============  ==========  ===================  ==========
AXFLAIR    TurboSpinEcho   8500-9500     78-126      CSF null -50..+100   140-160
AXT1       TurboSpinEcho   400-472       8-10        (placeholder 100)    140-145
AXT1       Flash           250-263       2.5-3.5     (placeholder 300)    65-75
AXT1PRE    Flash           250-264       2-3         (placeholder 300)    65-75
AXT1POST   TurboSpinEcho   450-550       8-10        (placeholder 100)    140-145
AXT1POST   Flash           250-264       2-3         (placeholder 300)    65-75
AXT2       TurboSpinEcho   5120-7340     102-113     (placeholder 100)    120-180
=========  ==============  ============  ==========  ===================  ==========

AXT1 and AXT1POST are TSE or FLASH with equal probability.  FLAIR's TI is drawn
around the CSF null point ``T1 ln(2/(1+e^(-TR/T1)))`` (2445 ms at TR 9000 ms),
as scanners' FLAIR protocols are tuned.  Non-inversion sequences carry fastMRI's
placeholder TI in the header (:attr:`Protocol.header_ti`): readers must discard
it.  AXT1POST is acquired after gadolinium (:attr:`Protocol.gadolinium`); the
anatomy decides which tissues take up the agent.

Cine bSSFP ("TrueFISP"): the paper quotes TR 3.6-50 ms for CMRxRecon; 50 ms is
a cine frame's duration, not a bSSFP repetition time, so TR is drawn from the
realistic bSSFP end of that range, 3.6-4.2 ms.  TE is TR/2 shortened by an
asymmetric (partial) echo of 0.1-0.7 ms and clipped to the paper's 1.1-1.6 ms;
the bSSFP signal equation uses that TE.  Flip 12-60 deg (the paper's range).
No TI (the sidecar leaves it empty).

Other parameter sets (e.g. the ``study`` preset's wider ranges, an absolute FLAIR
TI range, cine TE = TR/2) are passed as ``ranges`` in the same layout
(:mod:`metamri.phantom.presets`); the signal equations do not change.

Field strengths: brain 1.494 T (Siemens Aera / Avanto) or 2.89 T (Skyra / Prisma
fit), the values fastMRI headers carry; cardiac 1.5 T or 3.0 T.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from metamri.phantom.tissue import null_inversion_time, tissue

#: The five fastMRI brain contrasts (the ``acquisition`` attribute).
BRAIN_CONTRASTS: tuple[str, ...] = ("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")
CINE_CONTRAST = "CINE"

#: fastMRI's placeholder TI on sequences without inversion, ms.
PLACEHOLDER_TI: dict[str, float] = {"TurboSpinEcho": 100.0, "Flash": 300.0}

#: ``measurementInformation/protocolName`` per contrast.
PROTOCOL_NAMES: dict[str, str] = {
    "AXT1": "AX T1",
    "AXT1PRE": "AX T1 PRE",
    "AXT1POST": "AX T1 POST",
    "AXT2": "AX T2",
    "AXFLAIR": "AX FLAIR",
    "CINE": "CINE TRUEFISP",
}

#: (low, high) ranges per (contrast, sequence): tr, te, flip in ms / deg, echo spacing in ms
#: (``es``, TSE only).  An optional ``ti`` range (AXFLAIR) draws TI uniformly in it instead of
#: around the CSF null point.
BrainRanges = Mapping[tuple[str, str], Mapping[str, tuple[float, float]]]
BRAIN_RANGES: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("AXFLAIR", "TurboSpinEcho"): {"tr": (8500, 9500), "te": (78, 126), "flip": (140, 160), "es": (9, 11)},
    ("AXT1", "TurboSpinEcho"): {"tr": (400, 472), "te": (8, 10), "flip": (140, 145), "es": (8, 10)},
    ("AXT1", "Flash"): {"tr": (250, 263), "te": (2.5, 3.5), "flip": (65, 75)},
    ("AXT1PRE", "Flash"): {"tr": (250, 264), "te": (2, 3), "flip": (65, 75)},
    ("AXT1POST", "TurboSpinEcho"): {"tr": (450, 550), "te": (8, 10), "flip": (140, 145), "es": (8, 10)},
    ("AXT1POST", "Flash"): {"tr": (250, 264), "te": (2, 3), "flip": (65, 75)},
    ("AXT2", "TurboSpinEcho"): {"tr": (5120, 7340), "te": (102, 113), "flip": (120, 180), "es": (9, 12)},
}
#: FLAIR TI offset from the CSF null point, ms.
FLAIR_TI_OFFSET: tuple[float, float] = (-50.0, 100.0)

#: Cine ranges: ``tr``, ``flip`` and either ``te`` (TR/2 minus a partial echo, clipped to it)
#: or ``te_fraction`` (TE = that fraction of TR exactly, e.g. (0.5, 0.5)).
CINE_RANGES: dict[str, tuple[float, float]] = {"tr": (3.6, 4.2), "te": (1.1, 1.6), "flip": (12, 60)}
_CINE_PARTIAL_ECHO_MS = (0.1, 0.7)

BRAIN_FIELDS: dict[float, tuple[str, ...]] = {1.494: ("Aera", "Avanto"), 2.89: ("Skyra", "Prisma_fit")}
CARDIAC_FIELDS: dict[float, tuple[str, ...]] = {1.5: ("Aera",), 3.0: ("Vida",)}
VENDOR = "SIEMENS"


@dataclass(frozen=True)
class Protocol:
    """One acquisition's parameters.

    Attributes:
        contrast: fastMRI acquisition label (``"AXFLAIR"`` ...) or ``"CINE"``.
        sequence: ``"TurboSpinEcho"`` | ``"Flash"`` | ``"TrueFISP"``.
        tr: Repetition time, ms.
        te: Echo time, ms.
        ti: Inversion time, ms, for inversion-recovery sequences; ``None`` otherwise.
        flip: Flip angle, degrees (refocusing angle for TSE, as fastMRI stores it).
        field_strength: B0, tesla.
        model: Scanner model (vendor is :data:`VENDOR`).
        echo_spacing: TSE echo spacing, ms; ``None`` for gradient echoes.
        gadolinium: Acquired after contrast agent (AXT1POST).
    """

    contrast: str
    sequence: str
    tr: float
    te: float
    ti: float | None
    flip: float
    field_strength: float
    model: str
    echo_spacing: float | None = None
    gadolinium: bool = False

    @property
    def inversion(self) -> bool:
        """Whether the sequence has an inversion pulse (FLAIR)."""
        return self.ti is not None

    @property
    def header_ti(self) -> float | None:
        """TI as a fastMRI header stores it: the real TI, or the placeholder (100 TSE, 300 FLASH)."""
        if self.ti is not None:
            return self.ti
        return PLACEHOLDER_TI.get(self.sequence)

    @property
    def protocol_name(self) -> str:
        """``measurementInformation/protocolName`` (e.g. ``"AX FLAIR"``)."""
        return PROTOCOL_NAMES[self.contrast]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the manifest), with ``header_ti`` added."""
        return {**asdict(self), "header_ti": self.header_ti}


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], decimals: int) -> float:
    return round(float(rng.uniform(*bounds)), decimals)


def sample_field_strength(rng: np.random.Generator, domain: str) -> tuple[float, str]:
    """Draw (B0 in tesla, scanner model) for ``domain`` (``"brain"`` | ``"cardiac"``), 50/50 low/high."""
    table = {"brain": BRAIN_FIELDS, "cardiac": CARDIAC_FIELDS}[domain]
    fields = sorted(table)
    b0 = fields[int(rng.integers(len(fields)))]
    models = table[b0]
    return b0, models[int(rng.integers(len(models)))]


def sample_brain_protocol(
    contrast: str,
    rng: np.random.Generator,
    *,
    field_strength: float | None = None,
    model: str | None = None,
    sequence: str | None = None,
    ranges: BrainRanges | None = None,
) -> Protocol:
    """Draw a realistic protocol of one fastMRI brain contrast.

    Args:
        contrast: One of :data:`BRAIN_CONTRASTS`.
        rng: Source of randomness.
        field_strength: B0 in tesla; drawn (1.494 or 2.89) when ``None``.
        model: Scanner model; drawn with the field when ``None``.
        sequence: Force ``"TurboSpinEcho"`` or ``"Flash"`` where the contrast allows both.
        ranges: Ranges per (contrast, sequence) in the layout of :data:`BRAIN_RANGES`
            (``None``: :data:`BRAIN_RANGES`).

    Returns:
        A :class:`Protocol` with values inside ``ranges``.
    """
    table = BRAIN_RANGES if ranges is None else ranges
    if contrast not in BRAIN_CONTRASTS:
        raise ValueError(f"unknown brain contrast {contrast!r}; known: {', '.join(BRAIN_CONTRASTS)}")
    if field_strength is None:
        field_strength, drawn_model = sample_field_strength(rng, "brain")
        model = model or drawn_model
    model = model or BRAIN_FIELDS.get(field_strength, ("Aera",))[0]
    options = [seq for (c, seq) in table if c == contrast]
    if sequence is None:
        sequence = options[int(rng.integers(len(options)))]
    elif sequence not in options:
        raise ValueError(f"contrast {contrast} is not acquired with {sequence!r}; options: {options}")
    r = table[(contrast, sequence)]
    tr = _uniform(rng, r["tr"], 0 if sequence == "TurboSpinEcho" else 1)
    te = _uniform(rng, r["te"], 2)
    flip = _uniform(rng, r["flip"], 0)
    es = _uniform(rng, r["es"], 2) if "es" in r else None
    ti = None
    if contrast == "AXFLAIR":
        if "ti" in r:
            ti = round(float(rng.uniform(*r["ti"])))
        else:
            null = float(null_inversion_time(tissue("csf").t1(field_strength), tr))
            ti = round(null + float(rng.uniform(*FLAIR_TI_OFFSET)))
    return Protocol(
        contrast=contrast,
        sequence=sequence,
        tr=tr,
        te=te,
        ti=ti,
        flip=flip,
        field_strength=float(field_strength),
        model=model,
        echo_spacing=es,
        gadolinium=contrast == "AXT1POST",
    )


def sample_cine_protocol(
    rng: np.random.Generator,
    *,
    field_strength: float | None = None,
    model: str | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> Protocol:
    """Draw a cine bSSFP ("TrueFISP") protocol (ranges in the module docstring).

    ``ranges`` (layout of :data:`CINE_RANGES`, ``None``: that table): with a
    ``te_fraction`` entry TE is that fraction of TR (drawn in the range; rounded to 3
    decimals), with ``te`` it is TR/2 minus a partial echo of 0.1-0.7 ms, clipped to ``te``.
    """
    r = CINE_RANGES if ranges is None else ranges
    if field_strength is None:
        field_strength, drawn_model = sample_field_strength(rng, "cardiac")
        model = model or drawn_model
    model = model or CARDIAC_FIELDS.get(field_strength, ("Aera",))[0]
    tr = _uniform(rng, r["tr"], 2)
    if "te_fraction" in r:
        lo, hi = r["te_fraction"]
        te = round(tr * (lo if lo == hi else float(rng.uniform(lo, hi))), 3)
    else:
        te = round(float(np.clip(tr / 2.0 - rng.uniform(*_CINE_PARTIAL_ECHO_MS), *r["te"])), 2)
    flip = _uniform(rng, r["flip"], 0)
    return Protocol(
        contrast=CINE_CONTRAST,
        sequence="TrueFISP",
        tr=tr,
        te=te,
        ti=None,
        flip=flip,
        field_strength=float(field_strength),
        model=model,
    )
