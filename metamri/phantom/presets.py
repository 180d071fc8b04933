"""Named parameter sets of the phantom: ``default`` (small, for tests and the demo) and ``study``.

A :class:`Preset` fixes, for one population,

* the counts and sizes (:class:`~metamri.phantom.generate.BrainConfig` /
  :class:`~metamri.phantom.generate.CardiacConfig` values; any of them can still be
  overridden: ``brain_config({"preset": "study", "patients": 6})``);
* the protocol ranges (brain per (contrast, sequence), cine), in the layout of
  :data:`metamri.phantom.protocols.BRAIN_RANGES` / ``CINE_RANGES``;
* the per-patient anatomy ranges (:class:`~metamri.phantom.brain.AnatomyVariation`);
* the default output directory name under ``paths.data_dir``.

The signal equations, tissue constants, coils and noise model are the same in every
preset; only what is drawn, and how widely, changes.

``default``: 8 brain patients x 2 volumes x 8 slices, 4 cine patients; the ranges of
``protocols.py`` and ``brain.py`` (byte for byte the phantom as it was before presets).

``study``: a population in which the protocol parameters vary continuously, so that a
metadata encoder can learn how TR, TE, TI and the flip angle shape contrast:
128 brain patients x 3 volumes (3 different contrasts) x 5 slices = 384 volumes,
1920 slices, each volume its own drawn protocol; 24 cine patients (SAX 6 + LAX 3
slices, 12 frames).  64 px like the default (training stays CPU-feasible).  Ranges:
:data:`STUDY_BRAIN_RANGES`, :data:`STUDY_CINE_RANGES`, :data:`STUDY_ANATOMY`
(``docs/phantom.md``, "Study population").

Choose one with ``python -m metamri.phantom preset=study``, ``generate_domain(domain,
root, preset="study")`` or a data config's ``phantom: {preset: study}``
(``conf/data/study.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from metamri.errors import ConfigError
from metamri.phantom.brain import DEFAULT_VARIATION, AnatomyVariation, DeformationBand
from metamri.phantom.protocols import BRAIN_RANGES, CINE_RANGES, BrainRanges


@dataclass(frozen=True)
class Preset:
    """One named phantom population.

    Attributes:
        name: The preset's name (``default`` | ``study``).
        brain: ``BrainConfig`` values of the preset (the dataclass defaults fill the rest).
        cardiac: ``CardiacConfig`` values of the preset.
        brain_ranges: Brain protocol ranges per (contrast, sequence).
        cine_ranges: Cine protocol ranges.
        anatomy: Per-patient brain anatomy ranges.
        dir_name: Default output directory under ``paths.data_dir`` (``phantom``, ``phantom_study``).
    """

    name: str
    brain: Mapping[str, Any] = field(default_factory=dict)
    cardiac: Mapping[str, Any] = field(default_factory=dict)
    brain_ranges: BrainRanges = field(default_factory=lambda: BRAIN_RANGES)
    cine_ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: CINE_RANGES)
    anatomy: AnatomyVariation = DEFAULT_VARIATION
    dir_name: str = "phantom"

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (counts and every range)."""
        return {
            "name": self.name,
            "brain": dict(self.brain),
            "cardiac": dict(self.cardiac),
            "brain_ranges": {f"{c}/{s}": {k: list(v) for k, v in r.items()} for (c, s), r in self.brain_ranges.items()},
            "cine_ranges": {k: list(v) for k, v in self.cine_ranges.items()},
            "anatomy": self.anatomy.to_dict(),
            "dir_name": self.dir_name,
        }


DEFAULT = Preset("default")

_FLASH = {"tr": (200.0, 300.0), "te": (2.0, 5.0), "flip": (60.0, 80.0)}
_T1_TSE = {"tr": (400.0, 700.0), "te": (8.0, 15.0), "flip": (130.0, 160.0), "es": (6.0, 8.0)}

#: Study brain ranges (ms, deg): fastMRI's typical values (DESIGN.md) widened to clinical ranges.
#: FLAIR TI is uniform in 2200-2800 ms, independent of TR, so CSF is nulled only near
#: TI = T1 ln(2 / (1 + e^(-TR/T1))) (2328 ms at TR 8000, 2616 at TR 11000) and grows brighter
#: away from it: TI visibly shapes the contrast.
STUDY_BRAIN_RANGES: BrainRanges = MappingProxyType({
    ("AXFLAIR", "TurboSpinEcho"): {
        "tr": (8000.0, 11000.0), "te": (78.0, 126.0), "ti": (2200.0, 2800.0), "flip": (130.0, 170.0),
        "es": (9.0, 11.0),
    },
    ("AXT1", "TurboSpinEcho"): _T1_TSE,
    ("AXT1", "Flash"): _FLASH,
    ("AXT1PRE", "Flash"): _FLASH,
    ("AXT1POST", "TurboSpinEcho"): _T1_TSE,
    ("AXT1POST", "Flash"): _FLASH,
    ("AXT2", "TurboSpinEcho"): {"tr": (4000.0, 8000.0), "te": (80.0, 120.0), "flip": (120.0, 180.0), "es": (9.0, 12.0)},
})

#: Study cine bSSFP: TR 3-5 ms, TE = TR/2 exactly, flip 30-60 deg (per file).
STUDY_CINE_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"tr": (3.0, 5.0), "te_fraction": (0.5, 0.5), "flip": (30.0, 60.0)}
)

#: Study anatomy: wider head size and shape, pose, a two-band elastic field (large-scale
#: shape + gyral-scale wobble, kept folding-free), per-patient shells, ventricular
#: dilation, more and more varied lesions.
STUDY_ANATOMY = AnatomyVariation(
    fov_mm=(220.0, 250.0),
    fov_fits_head=True,
    fov_fit_max_mm=280.0,
    head_scale=(0.88, 1.04),
    axis_scale=(0.94, 1.06),
    angle_std_deg=(6.0, 3.0, 8.0),
    shift_std_mm=6.0,
    deformation=(
        DeformationBand(4, (120.0, 250.0), 5.0),
        DeformationBand(8, (40.0, 90.0), 1.5),
    ),
    min_jacobian=0.3,
    slice_spacing_mm=(5.0, 6.5),
    lesion_radius_mm=(1.5, 8.0),
    lesion_site_wm=0.9,
    enhancing_fraction=0.5,
    csf_mm=(1.5, 5.0),
    skull_mm=(4.0, 8.0),
    scalp_fat_mm=(2.5, 8.0),
    skin_mm=(1.5, 3.0),
    marrow_fat=(0.15, 0.4),
    ventricle_dilation=(0.0, 0.25),
)

STUDY = Preset(
    "study",
    brain=MappingProxyType(
        {"patients": 128, "volumes_per_patient": 3, "slices": 5, "coils": 8, "image_size": 64, "max_lesions": 6}
    ),
    cardiac=MappingProxyType(
        {"patients": 24, "frames": 12, "sax_slices": 6, "lax_slices": 3, "coils": 10, "image_size": 64}
    ),
    brain_ranges=STUDY_BRAIN_RANGES,
    cine_ranges=STUDY_CINE_RANGES,
    anatomy=STUDY_ANATOMY,
    dir_name="phantom_study",
)

#: Every preset by name.
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (DEFAULT, STUDY)})


def get_preset(name: str | Preset | None, key: str = "preset") -> Preset:
    """The preset called ``name`` (``None``: ``default``); unknown names raise ConfigError naming ``key``."""
    if isinstance(name, Preset):
        return name
    if name is None:
        return DEFAULT
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(key, name, "unknown phantom preset", hint=f"known: {sorted(PRESETS)}")
    return PRESETS[name]
