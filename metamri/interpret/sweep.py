"""Does the prior's contrast follow the physics? Sweep one metadata field from one seed.

One concept: an SDEdit **metadata sweep** on a phantom slice whose tissue maps are known.

1. One brain phantom patient (:func:`~metamri.phantom.brain.make_brain_phantom`, the preset's
   anatomy, ``seed``), a stack of 5 axial slices centred at template z ``slice_z_mm``; the
   central slice (index 2, the metadata's ``slice``) is used. Images are real, zero-phase
   renders (``render_brain_volume(phantom, protocol)``, ``rng=None``: the magnitude is the
   signal equation times the fractions), normalised as preprocessing does
   (:func:`~metamri.preprocess.mvue.p99_normalize`,
   :func:`~metamri.preprocess.mvue.to_two_channel`: float32 (2, H, W), real and imaginary).
2. Per sweep value v, ``protocol_v`` is the base protocol (:func:`base_protocol`: the middle
   of the preset's ranges for ``base_contrast``) with that one field set to v; for
   ``contrast`` it is each contrast's own base protocol, for ``field_strength`` the base
   protocol at v tesla. Its metadata are what the phantom writer's ISMRMRD header gives the
   fastMRI reader (:func:`protocol_metadata`: the same header, the same schema sources).
3. SDEdit (:func:`sdedit`): x0 is the slice rendered with the BASE protocol, the same for every
   v; ``x_t = add_noise(x0, eps, t_start)`` with eps drawn once from ``torch.Generator``
   seeded by ``seed``; then deterministic DDIM (eta 0, the project's
   :class:`~metamri.sampling.ddim.DDIMSampler` on the grid of :func:`sdedit_grid`) from
   ``t_start`` to 0 with the context of ``protocol_v``'s metadata. The control runs the same
   with every field dropped (``module.encoder.drop_all``): it cannot depend on v.
4. Tissue ratios (:func:`tissue_ratios`): masks of nearly pure tissue (fraction > ``purity``)
   for ``gm``, ``wm`` and ``csf`` (:data:`~metamri.phantom.brain.BRAIN_COMPONENTS`); mean
   magnitude over the GM mask / WM mask and CSF / WM. The signal equation's ratios
   (:func:`equation_ratios`) are ``|S_gm| / |S_wm|`` and ``|S_csf| / |S_wm|`` of
   :func:`~metamri.phantom.tissue.component_signals` (noiseless, pure tissue). Across the sweep,
   the Pearson correlation of the prior's values with the equation's, per ratio and pooled
   (both ratios' points together, each ratio standardised over the sweep), and the same for the
   dropped-metadata control (:func:`correlations`; ``None`` where one side does not vary:
   undefined). :func:`fidelity` says how much of x0's anatomy each sample kept (the masks are
   x0's: at a large ``t_start`` the prior may draw other anatomy, and the ratios then mix
   tissues).

:func:`run_sweep` does it all and returns a :class:`SweepResult`; :func:`write_sweep` writes
``sweep_<field>.png`` / ``.csv`` / ``.json`` atomically. The command line is
:mod:`metamri.interpret.sweep_cli` (``python -m metamri.interpret sweep prior=...``).

Units: TE, TR, TI in ms, flip angle in degrees, field strength in tesla; ratios are unitless.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metamri.errors import ConfigError
from metamri.phantom.brain import (
    BRAIN_COMPONENTS,
    BrainPhantom,
    make_brain_phantom,
    render_brain_volume,
)
from metamri.phantom.presets import get_preset
from metamri.phantom.protocols import BRAIN_CONTRASTS, BRAIN_FIELDS, BrainRanges, Protocol
from metamri.phantom.tissue import component_signals

#: The fields a sweep can vary (metadata names), in the order of the docs.
FIELDS: tuple[str, ...] = ("te", "tr", "ti", "flip_angle", "contrast", "field_strength")
#: Units of each field's values (titles, JSON).
UNITS: dict[str, str] = {"te": "ms", "tr": "ms", "ti": "ms", "flip_angle": "deg", "contrast": "",
                         "field_strength": "T"}
#: Metadata field -> :class:`~metamri.phantom.protocols.Protocol` attribute.
PROTOCOL_ATTRS: dict[str, str] = {"te": "te", "tr": "tr", "ti": "ti", "flip_angle": "flip",
                                  "field_strength": "field_strength"}
#: Ranges-table key of each numeric protocol field (``BRAIN_RANGES`` layout).
_RANGE_KEYS: dict[str, str] = {"te": "te", "tr": "tr", "ti": "ti", "flip_angle": "flip"}
#: The tissues whose pure-tissue masks the ratios use (phantom component names).
TISSUES: tuple[str, ...] = ("gm", "wm", "csf")
#: The ratios: name -> (numerator tissue, denominator tissue).
RATIOS: dict[str, tuple[str, str]] = {"gm_wm": ("gm", "wm"), "csf_wm": ("csf", "wm")}
#: CSV columns of ``sweep_<field>.csv``.
CSV_COLUMNS: tuple[str, ...] = ("value", "prior_gm_wm", "prior_csf_wm", "eq_gm_wm", "eq_csf_wm",
                                "uncond_gm_wm", "uncond_csf_wm")
#: Slices in the phantom stack (as the study's volumes) and the one used (the central one).
STACK_SLICES = 5
CENTRAL_SLICE = STACK_SLICES // 2
#: Fewest pixels a pure-tissue mask may have.
MIN_MASK_PIXELS = 3
#: Points of a default grid over a numeric field's range.
DEFAULT_POINTS = 7
#: A side whose values vary less than this (relative to their mean) counts as constant.
_CONSTANT_RTOL = 1e-9


# ------------------------------------------------------------------ settings and protocols
def check_settings(
    field_name: Any,
    values: Sequence[Any] | None,
    t_start: Any,
    steps: Any,
    base_contrast: Any = "AXFLAIR",
    num_train_timesteps: int | None = None,
) -> None:
    """Check a sweep's settings before anything is loaded; a bad one raises :class:`ConfigError`.

    Args:
        field_name: One of :data:`FIELDS` (config key ``field``).
        values: The sweep values (``values``): ``None`` for the default grid, else a non-empty
            list of positive numbers (of contrast labels of :data:`BRAIN_CONTRASTS` for
            ``contrast``).
        t_start: SDEdit start timestep, an integer in [1, T) (``t_start``); T is
            ``num_train_timesteps`` when given (the prior's), else only ``>= 1`` is checked.
        steps: DDIM steps from ``t_start`` to 0, an integer in [1, t_start + 1] (``steps``).
        base_contrast: The base protocol's contrast (``base_contrast``); ``ti`` needs an
            inversion-recovery base (AXFLAIR).
        num_train_timesteps: T of the prior's schedule, or ``None``.
    """
    if field_name not in FIELDS:
        raise ConfigError("field", field_name, "unknown sweep field", hint=f"choose one of {list(FIELDS)}")
    if base_contrast not in BRAIN_CONTRASTS:
        raise ConfigError("base_contrast", base_contrast, "unknown brain contrast",
                          hint=f"choose one of {list(BRAIN_CONTRASTS)}")
    if field_name == "ti" and base_contrast != "AXFLAIR":
        raise ConfigError("field", field_name, f"TI has no effect on {base_contrast} (no inversion pulse)",
                          hint="sweep ti with base_contrast=AXFLAIR")
    if values is not None:
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ConfigError("values", values, "must be a list of values or null (the default grid)")
        if len(values) == 0:
            raise ConfigError("values", list(values), "is empty",
                              hint="give at least one value, or values=null for the default grid")
        for v in values:
            if field_name == "contrast":
                if v not in BRAIN_CONTRASTS:
                    raise ConfigError("values", list(values), f"{v!r} is not a brain contrast",
                                      hint=f"choose from {list(BRAIN_CONTRASTS)}")
            elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError("values", list(values), f"{v!r} is not a positive number",
                                  hint=f"{field_name} values in {UNITS[field_name]}")
    if isinstance(t_start, bool) or not isinstance(t_start, int) or t_start < 1:
        raise ConfigError("t_start", t_start, "must be an integer >= 1 (the SDEdit start timestep)")
    if num_train_timesteps is not None and t_start >= num_train_timesteps:
        raise ConfigError("t_start", t_start, f"must lie in [1, {num_train_timesteps}) (the prior's T)",
                          hint="e.g. t_start=600")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", steps, "must be a positive integer (DDIM steps from t_start to 0)")
    if steps > t_start + 1:
        raise ConfigError("steps", steps, f"must be at most t_start + 1 = {t_start + 1} (one per timestep)")


def _round(value: float, decimals: int) -> float:
    return float(round(float(value), decimals))


def _sequence_for(contrast: str, ranges: BrainRanges, sequence: str | None = None) -> str:
    options = [seq for (c, seq) in ranges if c == contrast]
    if not options:
        raise ConfigError("base_contrast", contrast, "has no protocol ranges in the preset")
    if sequence is None:
        return options[0]
    if sequence not in options:
        raise ValueError(f"contrast {contrast} is not acquired with {sequence!r}; options: {options}")
    return sequence


def base_protocol(
    contrast: str,
    field_strength: float,
    ranges: BrainRanges,
    sequence: str | None = None,
) -> Protocol:
    """The middle of ``ranges`` for ``contrast``: the sweep's base protocol.

    Args:
        contrast: One of :data:`~metamri.phantom.protocols.BRAIN_CONTRASTS`.
        field_strength: B0, tesla (the phantom's brain fields are 1.494 and 2.89).
        ranges: Ranges per (contrast, sequence) (``BRAIN_RANGES`` layout, e.g. a preset's
            ``brain_ranges``).
        sequence: The sequence; ``None``: the first the table lists for the contrast
            (TurboSpinEcho for AXT1 and AXT1POST in both presets, Flash for AXT1PRE).

    Returns:
        A :class:`~metamri.phantom.protocols.Protocol` with TR, TE, flip (and echo spacing, and
        for AXFLAIR TI) at the middle of their ranges, rounded as
        :func:`~metamri.phantom.protocols.sample_brain_protocol` rounds (TR to 1 ms for TSE and
        0.1 ms for FLASH, TE 0.01 ms, flip 1 deg, TI 1 ms). AXFLAIR without a ``ti`` range (the
        default preset) gets TI at the CSF null point plus 25 ms, the middle of that preset's
        offsets.
    """
    from metamri.phantom.protocols import FLAIR_TI_OFFSET
    from metamri.phantom.tissue import null_inversion_time, tissue

    sequence = _sequence_for(contrast, ranges, sequence)
    r = ranges[(contrast, sequence)]

    def mid(key: str) -> float:
        lo, hi = r[key]
        return (float(lo) + float(hi)) / 2.0

    tr = _round(mid("tr"), 0 if sequence == "TurboSpinEcho" else 1)
    ti = None
    if contrast == "AXFLAIR":
        if "ti" in r:
            ti = float(round(mid("ti")))
        else:
            null = float(null_inversion_time(tissue("csf").t1(field_strength), tr))
            ti = float(round(null + sum(FLAIR_TI_OFFSET) / 2.0))
    return Protocol(
        contrast=contrast, sequence=sequence, tr=tr, te=_round(mid("te"), 2), ti=ti,
        flip=_round(mid("flip"), 0), field_strength=float(field_strength),
        model=BRAIN_FIELDS.get(float(field_strength), ("Aera",))[0],
        echo_spacing=_round(mid("es"), 2) if "es" in r else None,
        gadolinium=contrast == "AXT1POST",
    )


def default_values(field_name: str, base: Protocol, ranges: BrainRanges,
                   points: int = DEFAULT_POINTS) -> list[Any]:
    """The default sweep of ``field_name``: the study's clinical range for the base contrast.

    Numeric protocol fields: ``points`` values evenly over the base (contrast, sequence)'s range
    in ``ranges`` (rounded to 0.1 ms / 1 deg / 1 ms TI); ``contrast``: every brain contrast
    (:data:`~metamri.phantom.protocols.BRAIN_CONTRASTS`); ``field_strength``: the phantom's
    two brain fields (1.494 and 2.89 T, fastMRI's header values for 1.5 and 3 T).
    """
    if field_name == "contrast":
        return list(BRAIN_CONTRASTS)
    if field_name == "field_strength":
        return sorted(BRAIN_FIELDS)
    key = _RANGE_KEYS[field_name]
    r = ranges[(base.contrast, base.sequence)]
    if key not in r:
        raise ConfigError("field", field_name, f"the preset has no {key} range for {base.contrast}",
                          hint="give the sweep values=[...]")
    lo, hi = (float(x) for x in r[key])
    decimals = 1 if field_name in ("te", "tr") else 0
    return [_round(v, decimals) for v in np.linspace(lo, hi, points)]


def sweep_protocol(base: Protocol, field_name: str, value: Any, ranges: BrainRanges) -> Protocol:
    """``base`` with ``field_name`` set to ``value`` (see the module docstring, step 2)."""
    if field_name == "contrast":
        return base_protocol(str(value), base.field_strength, ranges)
    if field_name == "field_strength":
        b0 = float(value)
        return dataclasses.replace(base, field_strength=b0, model=BRAIN_FIELDS.get(b0, (base.model,))[0])
    if field_name == "ti" and not base.inversion:
        raise ConfigError("field", field_name, f"TI has no effect on {base.contrast} (no inversion pulse)")
    return dataclasses.replace(base, **{PROTOCOL_ATTRS[field_name]: float(value)})


def value_label(field_name: str, value: Any) -> str:
    """Panel title of one value: ``TE 78 ms``, ``flip 150 deg``, ``B0 2.89 T``, ``AXT2``."""
    if field_name == "contrast":
        return str(value)
    name = {"te": "TE", "tr": "TR", "ti": "TI", "flip_angle": "flip", "field_strength": "B0"}[field_name]
    v = float(value)
    text = f"{v:g}" if field_name == "field_strength" else (str(int(v)) if v.is_integer() else f"{v:g}")
    return f"{name} {text} {UNITS[field_name]}"


# ------------------------------------------------------------------ the phantom slice
@dataclass(frozen=True)
class SweepSlice:
    """The phantom slice a sweep works on.

    Attributes:
        phantom: The patient (maps float32 (STACK_SLICES, N, N) per component).
        index: The slice used (:data:`CENTRAL_SLICE`), also the metadata's ``slice``.
        masks: tissue (:data:`TISSUES`) -> bool (N, N), fraction > ``purity``.
        purity: The fraction threshold of the masks.
    """

    phantom: BrainPhantom
    index: int
    masks: dict[str, np.ndarray]
    purity: float

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """component -> float32 (N, N) fractions of the slice."""
        return {k: v[self.index] for k, v in self.phantom.maps.items()}

    def mask_pixels(self) -> dict[str, int]:
        """Pixels in each mask."""
        return {k: int(m.sum()) for k, m in self.masks.items()}


def make_slice(
    seed: int = 0,
    *,
    image_size: int = 64,
    slice_z_mm: float = 75.0,
    preset: str = "study",
    purity: float = 0.9,
    max_lesions: int | None = None,
) -> SweepSlice:
    """One phantom patient (``np.random.default_rng(seed)``) and its central slice's masks.

    Args:
        seed: Seeds the patient's anatomy (pose, deformation, shells, lesions).
        image_size: N (the study's priors are 64 x 64).
        slice_z_mm: Template z (mm above the template box's bottom) of the central slice; the
            stack holds :data:`STACK_SLICES` slices at the preset's mean spacing around it.
            75 mm (just below the lateral ventricles) has pure GM, WM and CSF pixels at 64 px.
        preset: Phantom preset of the anatomy (``study``: the study's priors' population).
        purity: A mask holds pixels whose tissue fraction exceeds it.
        max_lesions: Up to this many lesions (``None``: the preset's ``max_lesions``, else 3).

    Raises:
        ConfigError: A mask has fewer than :data:`MIN_MASK_PIXELS` pixels (key ``slice_z_mm``).
    """
    p = get_preset(preset)
    spacing = sum(p.anatomy.slice_spacing_mm) / 2.0
    zs = tuple(float(slice_z_mm) + spacing * (i - CENTRAL_SLICE) for i in range(STACK_SLICES))
    lesions = int(p.brain.get("max_lesions", 3) if max_lesions is None else max_lesions)
    phantom = make_brain_phantom(np.random.default_rng(int(seed)), slices=STACK_SLICES,
                                 image_size=int(image_size), max_lesions=lesions, template_z=zs,
                                 variation=p.anatomy)
    masks = {t: phantom.maps[t][CENTRAL_SLICE] > float(purity) for t in TISSUES}
    small = {t: int(m.sum()) for t, m in masks.items() if m.sum() < MIN_MASK_PIXELS}
    if small:
        raise ConfigError("slice_z_mm", slice_z_mm,
                          f"the slice has too few pixels of pure tissue (fraction > {purity}): {small}",
                          hint="try another slice_z_mm (60-85 mm), seed, or a lower purity")
    return SweepSlice(phantom, CENTRAL_SLICE, masks, float(purity))


def render_slice(sl: SweepSlice, protocol: Protocol) -> np.ndarray:
    """The slice under ``protocol`` as preprocessing stores it: float32 (2, N, N).

    A real (zero-phase) render (``rng=None``), divided by the 99th percentile of its magnitude
    (``p99_normalize``), as (real, imaginary) channels (``to_two_channel``).
    """
    from metamri.preprocess.mvue import p99_normalize, to_two_channel

    image = render_brain_volume(sl.phantom, protocol).image[sl.index]
    return to_two_channel(p99_normalize(image)[0])


def protocol_metadata(sl: SweepSlice, protocol: Protocol, coils: int = 8) -> Any:
    """The :class:`~metamri.metadata.Metadata` the study's data give a slice of ``protocol``.

    The phantom writer's ISMRMRD header (``SimulatedBrainVolume.header_xml``: TR, TE, header TI
    with fastMRI's placeholder, flip, sequence, field strength, protocol name) and its
    ``acquisition`` attribute are read by the fastMRI reader's schema sources
    (``read_values("fastmri", ...)``), and ``slice`` is the slice's index, as
    ``CachedSliceDataset`` sets it.
    """
    from metamri.data.ismrmrd_header import header_info, parse_document
    from metamri.metadata import Metadata
    from metamri.metadata.extract import read_values
    from metamri.metadata.sources import FileView
    from metamri.phantom.brain import BrainVolume
    from metamri.phantom.generate import SimulatedBrainVolume

    s, n = sl.phantom.shape[0], sl.phantom.shape[-1]
    # header_xml reads the protocol, the anatomy (FOV, thickness), the image's (slices, ..., N)
    # shape and the coil count; the pixel values are not needed.
    volume = BrainVolume(np.zeros((s, 1, n), np.complex64), sl.phantom.maps, {},
                         np.zeros((s, 1, n), np.float32), protocol)
    sim = SimulatedBrainVolume(f"sweep_{protocol.contrast}.h5", "sweep", sl.phantom, volume,
                               np.zeros((int(coils), 1, 1), np.complex64), np.zeros(0, np.complex64), 0.0)
    document = parse_document(sim.header_xml())
    view = FileView(None, header=document, attrs={"acquisition": protocol.contrast, "patient_id": "sweep"},
                    name=Path(sim.name).stem, protocol=header_info(document).protocol_name)
    return Metadata(**read_values("fastmri", view)).replace(slice=float(sl.index))


# ------------------------------------------------------------------ ratios
def tissue_ratios(magnitude: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean magnitude over each numerator mask / over the denominator mask (:data:`RATIOS`).

    Args:
        magnitude: float (N, N) image magnitude (any scale: the ratios do not depend on it).
        masks: tissue -> bool (N, N).
    """
    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    mean = {t: float(mag[masks[t]].mean()) for t in TISSUES}
    return {name: mean[a] / mean[b] if mean[b] != 0 else float("nan") for name, (a, b) in RATIOS.items()}


def equation_ratios(protocol: Protocol) -> dict[str, float]:
    """``|S_a| / |S_b|`` of the pure tissues' signals (:func:`component_signals`) per ratio."""
    s = component_signals(protocol, BRAIN_COMPONENTS)
    return {name: abs(s[a]) / abs(s[b]) if s[b] != 0 else float("nan") for name, (a, b) in RATIOS.items()}


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r of two equal-length series; ``None`` when undefined (< 2 points, a constant
    side, or a non-finite value)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    for v in (a, b):
        if v.std() <= _CONSTANT_RTOL * max(abs(v.mean()), 1e-300):
            return None
    return float(np.corrcoef(a, b)[0, 1])


def correlations(model: Mapping[str, Sequence[float]],
                 equation: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    """Pearson r of a model's ratios with the equation's, per ratio and ``pooled``.

    ``pooled``: the ratios' points as one series after standardising each ratio over the sweep
    (on each side), so the difference in level between GM/WM and CSF/WM does not count as
    agreement; it is the mean of the per-ratio r over the ratios where both are defined, and
    ``None`` where none is. (Pooling the raw values would correlate the two ratios' levels:
    a model constant over the sweep could score +-1.)
    """
    out: dict[str, float | None] = {name: pearson(model[name], equation[name]) for name in RATIOS}
    za, zb = [], []
    for name in RATIOS:
        if out[name] is None:
            continue
        for series, acc in ((model[name], za), (equation[name], zb)):
            v = np.asarray(series, dtype=np.float64)
            acc.append((v - v.mean()) / v.std())
    out["pooled"] = pearson(np.concatenate(za), np.concatenate(zb)) if za else None
    return out


def fidelity(image: np.ndarray, reference: np.ndarray) -> float | None:
    """Pixelwise Pearson r of two images' magnitudes (float32 (2, H, W) each): how much of the
    SDEdit input's anatomy a sample kept (1: the same up to scale; masks stay meaningful)."""
    return pearson(_magnitude(image).ravel(), _magnitude(reference).ravel())


# ------------------------------------------------------------------ SDEdit
def sdedit_grid(alphas_cumprod: torch.Tensor | Sequence[float], t_start: int, steps: int):
    """The DDIM grid of an SDEdit run: ``steps`` timesteps from ``t_start`` down to 0.

    ``round(linspace(t_start, 0, steps))`` (``steps`` = 1: ``t_start`` alone); the step after
    the last goes to ``alpha_bar = 1`` (the clean estimate), as the project's DDIM grids do.

    Returns:
        :class:`~metamri.sampling.schedule.DDIMGrid` (timesteps int64 (steps,), alpha_bar and
        alpha_bar_prev float64 (steps,)).
    """
    from metamri.sampling.schedule import DDIMGrid

    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if steps > 1:
        t = np.round(np.linspace(int(t_start), 0, int(steps))).astype(np.int64)
    else:
        t = np.array([int(t_start)], dtype=np.int64)
    if len(np.unique(t)) != len(t) or not 0 <= int(t.min()) <= int(t.max()) < ab.numel():
        raise ConfigError("steps", steps, f"gives a degenerate grid from t_start = {t_start}")
    ts = torch.from_numpy(t)
    alpha_bar = ab[ts]
    return DDIMGrid(ts, alpha_bar, torch.cat([alpha_bar[1:], torch.ones(1, dtype=torch.float64)]))


def sdedit_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """float32 standard normal ``shape``, from ``torch.Generator().manual_seed(seed)`` (CPU)."""
    return torch.randn(tuple(int(s) for s in shape), generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def sdedit(module: Any, x0: np.ndarray | torch.Tensor, ctx: torch.Tensor, t_start: int, steps: int,
           seed: int) -> np.ndarray:
    """SDEdit: noise ``x0`` to ``t_start`` and run deterministic DDIM (eta 0) to 0 under ``ctx``.

    Args:
        module: The prior (``eps_from_context``, ``noise_scheduler`` with ``add_noise`` and
            ``alphas_cumprod``), on the device it runs on; call it under
            :func:`metamri.analysis.information.measuring` (eval mode, EMA weights).
        x0: float32 (2, N, N) starting image (real, imaginary; p99-normalised).
        ctx: (1, L, D) context of one metadata record.
        t_start: Start timestep in [1, T).
        steps: DDIM network evaluations from ``t_start`` to 0.
        seed: Seeds the noise eps (drawn on the CPU, the same on every device).

    Returns:
        float32 (2, N, N): the final clean estimate.
    """
    from metamri.sampling.complex_image import to_channels
    from metamri.sampling.ddim import DDIMSampler

    device = ctx.device
    x0_t = torch.as_tensor(np.asarray(x0, dtype=np.float32))[None].to(device)
    eps = sdedit_noise(x0_t.shape, seed).to(device)
    sched = module.noise_scheduler
    x_t = sched.add_noise(x0_t, eps, torch.tensor([int(t_start)], dtype=torch.long, device=device))
    grid = sdedit_grid(sched.alphas_cumprod, t_start, steps)
    sampler = DDIMSampler(num_steps=len(grid.timesteps), eta=0.0, guidance_scale=1.0,
                          alphas_cumprod=sched.alphas_cumprod)
    sampler.grid = grid  # SDEdit: start at t_start, not at the top of the schedule
    result = sampler.sample(module.eps_from_context, ctx, None, tuple(x_t.shape), [torch.Generator()],
                            x_init=x_t, device=device)
    return to_channels(result.image)[0].float().cpu().numpy()


# ------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    """Everything one sweep measured (N values, images float32 (2, H, W) per value).

    Attributes:
        field: The swept field.
        values: The N values (floats; contrast labels for ``contrast``).
        labels: Panel titles (:func:`value_label`).
        base: The base protocol (its render is the SDEdit input of every value).
        protocols: ``protocol_v`` per value.
        metadata: The metadata records of ``protocols``.
        x0: float32 (2, H, W), the SDEdit input.
        prior: float32 (N, 2, H, W) SDEdit outputs with each value's metadata.
        uncond: float32 (N, 2, H, W) SDEdit outputs with every field dropped (the control).
        equation: float32 (N, 2, H, W) the phantom rendered with each ``protocol_v``.
        ratios: ``prior_gm_wm`` ... (:data:`CSV_COLUMNS` minus ``value``) and ``phantom_*``
            (the same masks on ``equation``) -> float64 (N,).
        correlations: ``prior`` and ``uncond`` -> :func:`correlations` against the equation.
        context_change: per value, max |ctx_v - ctx_0| of the conditional contexts (0: the
            prior's encoder does not see the field).
        fidelity: ``prior`` and ``uncond`` -> per value :func:`fidelity` of the sample to x0.
        mask_pixels: tissue -> pixels in its mask.
        settings: What was run (seed, t_start, steps, grid, slice, preset, ...).
    """

    field: str
    values: list[Any]
    labels: list[str]
    base: Protocol
    protocols: list[Protocol]
    metadata: list[Any]
    x0: np.ndarray
    prior: np.ndarray
    uncond: np.ndarray
    equation: np.ndarray
    ratios: dict[str, np.ndarray]
    correlations: dict[str, dict[str, float | None]]
    context_change: list[float]
    fidelity: dict[str, list[float | None]]
    mask_pixels: dict[str, int]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


def _magnitude(two_channel: np.ndarray) -> np.ndarray:
    return np.hypot(two_channel[0], two_channel[1])


def run_sweep(
    module: Any,
    field_name: str,
    values: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    t_start: int = 600,
    steps: int = 50,
    base_contrast: str = "AXFLAIR",
    base_field_strength: float = 2.89,
    preset: str = "study",
    slice_z_mm: float = 75.0,
    purity: float = 0.9,
    image_size: int = 64,
    sweep_slice: SweepSlice | None = None,
) -> SweepResult:
    """Run the sweep of the module docstring with the prior ``module``.

    Args:
        module: The prior (:func:`metamri.priors.load_prior`), already on its device; run in
            eval mode with its EMA weights (:func:`~metamri.analysis.information.measuring`).
        field_name: One of :data:`FIELDS`.
        values: The sweep values (``None``: :func:`default_values`).
        seed: Seeds the phantom patient and the SDEdit noise.
        t_start, steps: SDEdit start timestep and DDIM steps (:func:`sdedit`).
        base_contrast, base_field_strength: The base protocol (:func:`base_protocol`).
        preset: Phantom preset: the anatomy and the protocol ranges.
        slice_z_mm, purity, image_size: The slice (:func:`make_slice`).
        sweep_slice: A slice made already (then ``slice_z_mm``, ``purity``, ``image_size`` are
            not used).
    """
    from metamri.analysis.information import measuring

    values = None if values is None else list(values)
    t_total = int(getattr(module, "num_train_timesteps", None)
                  or module.noise_scheduler.config.num_train_timesteps)
    check_settings(field_name, values, t_start, steps, base_contrast, t_total)
    ranges = get_preset(preset).brain_ranges
    base = base_protocol(base_contrast, float(base_field_strength), ranges)
    if values is None:
        values = default_values(field_name, base, ranges)
    values = [str(v) if field_name == "contrast" else float(v) for v in values]
    sl = sweep_slice if sweep_slice is not None else make_slice(
        seed, image_size=image_size, slice_z_mm=slice_z_mm, preset=preset, purity=purity)
    protocols = [sweep_protocol(base, field_name, v, ranges) for v in values]
    metas = [protocol_metadata(sl, p) for p in protocols]
    x0 = render_slice(sl, base)
    equation = np.stack([render_slice(sl, p) for p in protocols])

    prior, uncond = [], []
    with measuring(module):
        # one record at a time: a value's context (and sample) does not depend on the others
        cond_ctx = torch.cat([module.context([m]) for m in metas])
        drop_ctx = torch.cat([module.context([m], module.encoder.drop_all(1)) for m in metas])
        for i in range(len(values)):
            prior.append(sdedit(module, x0, cond_ctx[i:i + 1], t_start, steps, seed))
            uncond.append(sdedit(module, x0, drop_ctx[i:i + 1], t_start, steps, seed))
    change = [float((cond_ctx[i] - cond_ctx[0]).abs().max()) for i in range(len(values))]
    prior_a, uncond_a = np.stack(prior), np.stack(uncond)

    ratios: dict[str, np.ndarray] = {}
    for side, images in (("prior", prior_a), ("uncond", uncond_a), ("phantom", equation)):
        per = [tissue_ratios(_magnitude(im), sl.masks) for im in images]
        for name in RATIOS:
            ratios[f"{side}_{name}"] = np.array([r[name] for r in per])
    eq = [equation_ratios(p) for p in protocols]
    for name in RATIOS:
        ratios[f"eq_{name}"] = np.array([r[name] for r in eq])

    eq_side = {n: ratios[f"eq_{n}"] for n in RATIOS}
    corr = {side: correlations({n: ratios[f"{side}_{n}"] for n in RATIOS}, eq_side)
            for side in ("prior", "uncond")}
    grid = sdedit_grid(module.noise_scheduler.alphas_cumprod, t_start, steps)
    settings = {
        "field": field_name, "units": UNITS[field_name], "values": values, "seed": int(seed),
        "t_start": int(t_start), "steps": int(steps), "num_train_timesteps": t_total,
        "timesteps": [int(t) for t in grid.timesteps], "eta": 0.0,
        "base_protocol": base.to_dict(), "base_contrast": base_contrast,
        "base_field_strength": float(base_field_strength), "preset": preset,
        "slice_index": int(sl.index), "template_z_mm": [float(z) for z in sl.phantom.template_z],
        "fov_mm": float(sl.phantom.fov_mm), "image_size": int(sl.phantom.shape[-1]), "purity": sl.purity,
        "encoder_fields": list(getattr(module.encoder, "fields", ())),
    }
    return SweepResult(
        field=field_name, values=values, labels=[value_label(field_name, v) for v in values], base=base,
        protocols=protocols, metadata=metas, x0=x0, prior=prior_a, uncond=uncond_a, equation=equation,
        ratios=ratios, correlations=corr, context_change=change,
        fidelity={side: [fidelity(im, x0) for im in images]
                  for side, images in (("prior", prior_a), ("uncond", uncond_a))},
        mask_pixels=sl.mask_pixels(),
        settings=settings,
    )


# ------------------------------------------------------------------ output
def _notes(result: SweepResult) -> list[str]:
    notes = []
    n = len(result.values)
    if n < 3:
        notes.append(f"{n} sweep values: a Pearson r of {n} points is +-1 or undefined, not evidence")
    for name in RATIOS:
        if pearson(result.ratios[f"eq_{name}"], np.arange(n)) is None and n >= 2:
            notes.append(f"the signal equation's {name} does not change over the sweep: its correlations "
                         "are undefined (null)")
    if n >= 2 and max(result.context_change) == 0.0:
        fields = result.settings.get("encoder_fields")
        notes.append(f"the prior's context is the same for every value (its encoder reads {fields}): "
                     "the conditional samples cannot follow the field")
    return notes


def relative_range(values: Sequence[float]) -> float | None:
    """(max - min) / mean of a ratio over the sweep: how much it moves (r says only in which
    direction; a tiny range can correlate perfectly). ``None`` for a non-finite or zero mean."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean()) if v.size else float("nan")
    return float((v.max() - v.min()) / mean) if math.isfinite(mean) and mean != 0 else None


def csv_text(result: SweepResult) -> str:
    """``sweep_<field>.csv``: one row per value, columns :data:`CSV_COLUMNS`."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, v in enumerate(result.values):
        writer.writerow([v, *(repr(float(result.ratios[c][i])) for c in CSV_COLUMNS[1:])])
    return buf.getvalue()


def summary(result: SweepResult, prior_path: str | PathLike[str] | None = None,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready record of ``sweep_<field>.json``: correlations, settings, per-value details."""
    return {
        "field": result.field,
        "prior": None if prior_path is None else str(Path(str(prior_path)).expanduser().resolve()),
        "correlations": result.correlations,
        "n_values": len(result.values),
        "notes": _notes(result),
        "settings": {**result.settings, **dict(extra or {})},
        "mask_pixels": result.mask_pixels,
        "relative_range": {k: relative_range(v) for k, v in result.ratios.items()},
        "mean_fidelity_to_x0": {k: (None if any(f is None for f in v) else float(np.mean(v)))
                                for k, v in result.fidelity.items()},
        "per_value": [
            {"value": v, "label": lab, "protocol": p.to_dict(), "metadata": m.to_dict(),
             "context_change": c,
             "fidelity_to_x0": {k: result.fidelity[k][i] for k in result.fidelity},
             "phantom_image_ratios": {n: float(result.ratios[f"phantom_{n}"][i]) for n in RATIOS}}
            for i, (v, lab, p, m, c) in enumerate(zip(result.values, result.labels, result.protocols,
                                                      result.metadata, result.context_change, strict=True))
        ],
    }


def _fmt(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def plot_sweep(result: SweepResult, out_png: str | PathLike[str]) -> Path:
    """``sweep_<field>.png``: row 1 the prior's SDEdit samples, row 2 the signal-equation images.

    Magnitudes, each panel scaled to [0, its 99.5th percentile]; titles give the value and unit;
    the figure's title the correlations (prior and dropped-metadata control). Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from metamri.utils.io import atomic_output

    n = len(result.values)
    fig = Figure(figsize=(1.9 * n + 1.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    rows = ((result.prior, f"prior (SDEdit t={result.settings.get('t_start')})"),
            (result.equation, "signal equation"))
    for r, (images, name) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            mag = _magnitude(images[i])
            ax.imshow(mag, cmap="gray", vmin=0.0, vmax=float(np.percentile(mag, 99.5)) or 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(result.labels[i], fontsize=9)
            if i == 0:
                ax.set_ylabel(name, fontsize=9)
    c, u = result.correlations["prior"], result.correlations["uncond"]
    fig.suptitle(f"{result.field} sweep, base {result.base.contrast}: r(prior, equation) "
                 f"GM/WM {_fmt(c['gm_wm'])}, CSF/WM {_fmt(c['csf_wm'])}, pooled {_fmt(c['pooled'])};  "
                 f"dropped metadata: {_fmt(u['gm_wm'])}, {_fmt(u['csf_wm'])}, {_fmt(u['pooled'])}",
                 fontsize=8)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(out_png)


def write_sweep(result: SweepResult, out_dir: str | PathLike[str],
                prior_path: str | PathLike[str] | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``sweep_<field>.png``, ``.csv`` and ``.json`` under ``out_dir`` (atomically).

    Returns:
        ``{"png": ..., "csv": ..., "json": ...}``.
    """
    from metamri.utils.io import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sweep_{result.field}"
    paths = {"png": out / f"{stem}.png", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    plot_sweep(result, paths["png"])
    write_text_atomic(paths["csv"], csv_text(result))
    write_json_atomic(paths["json"], summary(result, prior_path, extra))
    return paths
