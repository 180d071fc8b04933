"""Brain anatomy from the MNI ICBM152 2009 templates, deformed per patient.

Tissue model
------------
The grey- and white-matter probability maps and the brain mask of the MNI
ICBM152 2009 templates (1 mm, 197 x 233 x 189, shipped inside nilearn's wheel:
no download) give, at every point, the fractions

* ``gm``, ``wm``: the template probabilities;
* ``csf``: brain mask minus (GM + WM), which holds the ventricles, sulci and
  the interhemispheric fissure, plus a 3 mm shell of extra-axial CSF outside the mask;
* outside the brain, shells at a distance d from the mask: skull (3-9 mm,
  signal void except 25 % yellow marrow counted as ``fat``), scalp ``fat``
  (9-14 mm) and skin/``muscle`` (14-16 mm), with 1 mm soft edges;
* ``blood``: the superior sagittal sinus, a 0.5-5 mm band of the extra-axial
  space within 4 mm of the midline, above the template's mid-height;
* ``lesion`` / ``lesion_enhancing``: a few ellipsoidal white-matter plaques
  (radii 2-6 mm) replacing brain tissue; about half take up gadolinium.

A slice's complex image is ``sum_k fraction_k * signal_k(protocol) * e^(i phi)``
(:func:`render_brain_volume`), with ``signal_k`` the signed tissue signal of
``tissue.py`` and ``phi`` a smooth random phase (below).

Gadolinium (AXT1POST only), mM: sinus blood 0.5, enhancing lesions 0.3, scalp
muscle 0.1, everything else 0 (intact blood-brain barrier; fat and CSF do not enhance).

Per patient (:func:`make_brain_phantom`, all drawn from the ``rng`` passed in)
---------------------------------------------------------------------------
The ranges below are :data:`DEFAULT_VARIATION` (the default preset); an
:class:`AnatomyVariation` passed as ``variation`` widens them and adds per-patient
shell thicknesses and a ventricular dilation (the ``study`` preset,
:mod:`metamri.phantom.presets`).

* head size: a global scale 0.92-1.06 times per-axis jitter 0.97-1.03;
* pose: rotations about the three axes (std 5 deg in-plane, 3 deg pitch and roll)
  and an in-plane shift (std 4 mm);
* an elastic deformation: the sum of 6 random sinusoidal modes per axis, with
  wavelengths 50-120 mm and an RMS displacement of about 2 mm per axis (smooth;
  its gradient stays well below 1, so it does not fold);
* slices: ``slices`` contiguous axial slices, 5 mm thick, spacing 5-6 mm
  (shrunk if the stack would not fit), at a random height between the template's
  z = 25 and z = 150 mm (temporal lobes to vertex; the templates have no face or neck);
* field of view 230-250 mm, square, ``image_size`` pixels; each pixel is the mean
  of s x s sub-samples and each slice the mean over its thickness at <= 1 mm
  spacing (partial volume, no aliasing of the 1 mm template).

Image orientation: rows run anterior (row 0) to posterior and are the readout
axis of the brain k-space; columns run from the patient's right to left
(radiological convention) and are the phase-encode axis.

Flowing blood in the sinus is a flow void in spin echoes: its TSE signal is
scaled by :data:`SPIN_ECHO_FLOW_FACTOR` (0.3); FLASH keeps it (inflow), so the
sinus enhances visibly on AXT1POST.

The image phase is :func:`metamri.phantom.phase.smooth_phase`, drawn per volume.

Limitations: no face, eyes, skull base or neck; no vessels except the sinus; no
flow (beyond the sinus factor), susceptibility or chemical-shift effects; TSE echo trains and refocusing
angles are not modelled (``tissue.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from metamri.phantom.phase import smooth_phase
from metamri.phantom.protocols import Protocol
from metamri.phantom.tissue import component_signals

#: Map components -> (tissue in ``tissue.TISSUES``, gadolinium concentration in mM after contrast).
BRAIN_COMPONENTS: dict[str, tuple[str, float]] = {
    "gm": ("gm", 0.0),
    "wm": ("wm", 0.0),
    "csf": ("csf", 0.0),
    "fat": ("fat", 0.0),
    "muscle": ("muscle", 0.1),
    "blood": ("blood", 0.5),
    "lesion": ("lesion", 0.0),
    "lesion_enhancing": ("lesion", 0.3),
}

#: Flowing sinus blood leaves the slice between excitation and refocusing: spin-echo
#: signal of ``blood`` is scaled by this factor (flow void); gradient echoes keep it (inflow).
SPIN_ECHO_FLOW_FACTOR = 0.3

# Shells outside the brain mask, mm from the mask: (start, end).
_CSF_SHELL = (0.0, 3.0)
_SKULL = (3.0, 9.0)
_SCALP_FAT = (9.0, 14.0)
_SKIN = (14.0, 16.0)
_MARROW_FAT_FRACTION = 0.25
_SINUS = (0.5, 5.0)
_SINUS_HALF_WIDTH_MM = 4.0
_Z_RANGE_MM = (25.0, 150.0)  # template z (voxel index) range that slices may cover
_DIST_STEP = 2  # the outside-distance map is computed on a 2 mm grid
_DIST_PAD = 12  # voxels (of 2 mm) of padding around the template box for the distance map
_VENTRICLE_SIGMA_MM = (18.0, 30.0, 20.0)  # extent (x, y, z) of the ventricular dilation's Gaussian


@dataclass(frozen=True)
class Shells:
    """Thicknesses (mm, template space) of the layers outside the brain mask, inner to outer.

    Attributes:
        csf: Extra-axial CSF (subarachnoid space).
        skull: Bone (void) with ``marrow_fat`` of its volume yellow marrow (``fat``).
        scalp_fat: Subcutaneous fat.
        skin: Skin / galea / muscle (``muscle``).
        marrow_fat: Fraction of the skull that is marrow fat.
    """

    csf: float = 3.0
    skull: float = 6.0
    scalp_fat: float = 5.0
    skin: float = 2.0
    marrow_fat: float = _MARROW_FAT_FRACTION

    def bands(self) -> dict[str, tuple[float, float]]:
        """(start, end) distance from the brain mask of each layer, mm."""
        skull_end = self.csf + self.skull
        fat_end = skull_end + self.scalp_fat
        return {
            "csf": (0.0, self.csf),
            "skull": (self.csf, skull_end),
            "scalp_fat": (skull_end, fat_end),
            "skin": (fat_end, fat_end + self.skin),
        }

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


#: The fixed shells of the default preset (CSF 0-3, skull 3-9, scalp fat 9-14, skin 14-16 mm).
DEFAULT_SHELLS = Shells()
assert DEFAULT_SHELLS.bands() == {"csf": _CSF_SHELL, "skull": _SKULL, "scalp_fat": _SCALP_FAT, "skin": _SKIN}


@dataclass(frozen=True)
class DeformationBand:
    """``modes`` random sinusoidal modes per axis, wavelengths in ``wavelength_mm``, RMS ``rms_mm`` per axis."""

    modes: int
    wavelength_mm: tuple[float, float]
    rms_mm: float


@dataclass(frozen=True)
class AnatomyVariation:
    """Ranges of the per-patient anatomy draws of :func:`make_brain_phantom`.

    The defaults are the default preset's (:data:`DEFAULT_VARIATION`), and with them
    the random stream is the one the phantom always drew.  Fields set to ``None``
    at the end are not drawn (the fixed default is used); when set, they are drawn
    after everything else, in the order listed, so the earlier draws do not move.

    Attributes:
        fov_mm: Square in-plane field of view, uniform range, mm.
        fov_fits_head: Widen the drawn field of view where the head would cross an
            image edge, as an operator would: a coarse probe (3 mm, slice centres) measures
            the head's in-plane half extent h over the patient's slices and the FOV becomes
            at least 2 (h + 6 mm); then, should more than half a pixel of tissue still lie
            along an edge row or column, x 1.05 steps (at most 4); never beyond
            ``fov_fit_max_mm``.  ``False``: keep the draw.
        fov_fit_max_mm: Largest field of view ``fov_fits_head`` may widen to, mm.
        head_scale: Global head scale, uniform range.
        axis_scale: Per-axis scale factor on top of it (x, y, z independently), uniform range.
        angle_std_deg: Std of the rotations about x (pitch), y (roll), z (in-plane), deg.
        shift_std_mm: Std of the in-plane shift, mm.
        deformation: Bands of elastic sinusoidal modes (each: modes, wavelength range, RMS).
        min_jacobian: If set, the elastic field is shrunk (x 0.85 until it holds) so that
            ``det(I + grad d) >= min_jacobian`` on a 10 mm grid over the head: strong
            fields stay folding-free.  ``None``: no check (the default's 2 mm field
            never comes near folding).
        slice_spacing_mm: Centre-to-centre slice spacing, uniform range, mm.
        z_range_mm: Template z range the slice stack may cover, mm.
        lesion_radius_mm: Uniform range of each lesion semi-axis, mm.
        lesion_site_wm: Lesion centres lie where the WM probability exceeds this.
        enhancing_fraction: Probability that a lesion enhances (AXT1POST).
        csf_mm, skull_mm, scalp_fat_mm, skin_mm: Per-patient shell thickness ranges
            (``None``: :data:`DEFAULT_SHELLS`).
        marrow_fat: Range of the skull's marrow fat fraction (``None``: 0.25).
        ventricle_dilation: Range of the central dilation strength ``alpha`` in [0, 1):
            template points are pulled towards the ventricles' centre by
            ``q -> c + (q - c)(1 - alpha g(q))``, ``g`` a Gaussian of extent
            (18, 30, 20) mm, which enlarges the ventricles and deep structures by up to
            ``1 / (1 - alpha)`` and compresses the surrounding white matter (the map is
            monotonic for alpha < 1: no folding).  ``None``: no dilation.
    """

    fov_mm: tuple[float, float] = (230.0, 250.0)
    fov_fits_head: bool = False
    fov_fit_max_mm: float = 280.0
    head_scale: tuple[float, float] = (0.92, 1.06)
    axis_scale: tuple[float, float] = (0.97, 1.03)
    angle_std_deg: tuple[float, float, float] = (3.0, 3.0, 5.0)
    shift_std_mm: float = 4.0
    deformation: tuple[DeformationBand, ...] = (DeformationBand(6, (50.0, 120.0), 2.0),)
    min_jacobian: float | None = None
    slice_spacing_mm: tuple[float, float] = (5.0, 6.0)
    z_range_mm: tuple[float, float] = _Z_RANGE_MM
    lesion_radius_mm: tuple[float, float] = (2.0, 6.0)
    lesion_site_wm: float = 0.95
    enhancing_fraction: float = 0.5
    csf_mm: tuple[float, float] | None = None
    skull_mm: tuple[float, float] | None = None
    scalp_fat_mm: tuple[float, float] | None = None
    skin_mm: tuple[float, float] | None = None
    marrow_fat: tuple[float, float] | None = None
    ventricle_dilation: tuple[float, float] | None = None

    @property
    def draws_head(self) -> bool:
        """Whether shells or a dilation are drawn per patient."""
        return any(
            v is not None
            for v in (self.csf_mm, self.skull_mm, self.scalp_fat_mm, self.skin_mm, self.marrow_fat,
                      self.ventricle_dilation)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ranges (for the manifest and the docs)."""
        out = asdict(self)
        out["deformation"] = [asdict(b) for b in self.deformation]
        return out


#: The default preset's per-patient anatomy ranges.
DEFAULT_VARIATION = AnatomyVariation()


@dataclass(frozen=True)
class BrainTemplates:
    """The MNI ICBM152 2009 maps used by the phantom (1 mm voxels, MNI voxel order x, y, z).

    Attributes:
        gm, wm: float32 (197, 233, 189) tissue probabilities.
        mask: float32 (197, 233, 189) brain mask (0 / 1).
        dist: float32 distance (mm) outside the brain mask on a 2 mm grid padded by
            ``_DIST_PAD`` voxels on each side; 0 inside the brain.
        center: Centroid of the brain mask, voxel coordinates (x, y, z).
        wm_core: int64 flat indices of voxels with WM probability > 0.95 (lesion sites).
    """

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    dist: np.ndarray
    center: tuple[float, float, float]
    wm_core: np.ndarray


@lru_cache(maxsize=1)
def load_templates() -> BrainTemplates:
    """Load (once per process) the templates that ship with nilearn; no network access."""
    from nilearn import datasets

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0.5)
    coarse = np.pad(mask, _DIST_PAD * _DIST_STEP)[::_DIST_STEP, ::_DIST_STEP, ::_DIST_STEP]
    dist = (ndi.distance_transform_edt(~coarse) * _DIST_STEP).astype(np.float32)
    center = tuple(float(c) for c in np.argwhere(mask).mean(axis=0))
    wm_core = np.flatnonzero(wm > 0.95)
    return BrainTemplates(gm, wm, mask.astype(np.float32), dist, center, wm_core)


# -- per-patient geometry -------------------------------------------------------------------


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal white-matter lesion in template voxel coordinates (mm)."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    enhancing: bool


@dataclass(frozen=True)
class HeadPose:
    """Patient geometry: scanner (head-centred, RAS, mm) -> template voxel coordinates.

    ``q = center + R (p - shift) / scale + disp(p)`` with ``R`` the rotation
    from the Euler angles (deg, about x, y, z) and ``disp`` the sum of sinusoidal
    modes ``amp[m, i] * sin(2 pi k[m] . p + phase[m, i])``.
    """

    scale: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    mode_k: np.ndarray  # (M, 3) spatial frequencies, 1/mm
    mode_amp: np.ndarray  # (M, 3) amplitudes, mm
    mode_phase: np.ndarray  # (M, 3) phases, rad

    def rotation(self) -> np.ndarray:
        ax, ay, az = np.deg2rad(self.angles_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
        ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
        rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
        return rz @ ry @ rx

    def displacement(self, p: np.ndarray) -> np.ndarray:
        """Elastic displacement (mm) at scanner points ``p`` of shape (..., 3)."""
        arg = 2 * np.pi * (p @ self.mode_k.T)  # (..., M)
        out = np.empty(p.shape, dtype=np.float64)
        for i in range(3):
            out[..., i] = np.sin(arg + self.mode_phase[:, i]) @ self.mode_amp[:, i]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": list(self.scale),
            "angles_deg": list(self.angles_deg),
            "shift_mm": list(self.shift_mm),
            "deformation_modes": len(self.mode_k),
            "deformation_amplitude_mm": float(np.abs(self.mode_amp).max()),
        }


def _draw_pose(rng: np.random.Generator, variation: AnatomyVariation = DEFAULT_VARIATION) -> HeadPose:
    v = variation
    scale = float(rng.uniform(*v.head_scale)) * rng.uniform(*v.axis_scale, size=3)
    angles = rng.normal(0.0, list(v.angle_std_deg))
    shift = np.array([rng.normal(0, v.shift_std_mm), rng.normal(0, v.shift_std_mm), 0.0])
    ks, amps, phases = [], [], []
    for band in v.deformation:
        n = band.modes
        directions = rng.normal(size=(n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*band.wavelength_mm, size=(n, 1))
        ks.append(directions / wavelengths)
        amps.append(rng.normal(0.0, band.rms_mm / math.sqrt(n) * math.sqrt(2), size=(n, 3)))
        phases.append(rng.uniform(0, 2 * np.pi, size=(n, 3)))
    none = np.zeros((0, 3))
    pose = HeadPose(
        scale=tuple(float(s) for s in scale),
        angles_deg=tuple(float(a) for a in angles),
        shift_mm=tuple(float(s) for s in shift),
        mode_k=ks[0] if len(ks) == 1 else np.concatenate(ks) if ks else none,
        mode_amp=amps[0] if len(amps) == 1 else np.concatenate(amps) if amps else none,
        mode_phase=phases[0] if len(phases) == 1 else np.concatenate(phases) if phases else none,
    )
    if v.min_jacobian is not None and len(pose.mode_k):
        pose = _limit_folding(pose, v.min_jacobian)
    return pose


def min_jacobian_determinant(
    pose: HeadPose, semi_axes_mm: tuple[float, float, float] = (100.0, 120.0, 100.0), step_mm: float = 10.0
) -> float:
    """Smallest ``det(I + grad d)`` of the elastic field ``d`` on a grid over the head.

    The grid (``step_mm`` apart) fills the ellipsoid ``semi_axes_mm`` (x, y, z; scanner mm,
    head-centred), which holds the largest head the presets draw, scalp included.
    """
    if not len(pose.mode_k):
        return 1.0
    axes = [np.arange(-a, a + step_mm / 2, step_mm) for a in semi_axes_mm]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    p = p[((p / np.asarray(semi_axes_mm)) ** 2).sum(axis=1) <= 1.0]
    arg = 2 * np.pi * (p @ pose.mode_k.T)  # (P, M)
    jac = np.broadcast_to(np.eye(3), (len(p), 3, 3)).copy()
    for i in range(3):  # d d_i / d p_j = sum_m amp[m, i] cos(arg_m + phase[m, i]) 2 pi k[m, j]
        jac[:, i, :] += (np.cos(arg + pose.mode_phase[:, i]) * pose.mode_amp[:, i]) @ (2 * np.pi * pose.mode_k)
    return float(np.linalg.det(jac).min())


def _limit_folding(pose: HeadPose, min_det: float) -> HeadPose:
    amp = pose.mode_amp
    for _ in range(40):
        trial = dataclasses.replace(pose, mode_amp=amp)
        if min_jacobian_determinant(trial) >= min_det:
            return trial
        amp = amp * 0.85
    return dataclasses.replace(pose, mode_amp=amp)


@dataclass(frozen=True)
class BrainPhantom:
    """One patient's brain: tissue-fraction maps of a stack of axial slices.

    Attributes:
        maps: component (``BRAIN_COMPONENTS``) -> float32 (slices, N, N) fraction
            in [0, 1]; fractions sum to <= 1 (the rest is air or bone).
        fov_mm: Square in-plane field of view, mm.
        slice_thickness_mm: mm.
        slice_spacing_mm: Centre-to-centre distance, mm.
        template_z: Template z (mm above the template box's bottom) of each slice centre.
        pose: The patient's geometry.
        lesions: The lesions.
        shells: Per-patient layers outside the brain; ``None``: :data:`DEFAULT_SHELLS`
            (fixed, not drawn; the manifest then lists no shells, as before presets).
        ventricle_dilation: Central dilation strength drawn for the patient; ``None``: none.
    """

    maps: dict[str, np.ndarray]
    fov_mm: float
    slice_thickness_mm: float
    slice_spacing_mm: float
    template_z: tuple[float, ...]
    pose: HeadPose
    lesions: tuple[Lesion, ...] = field(default=())
    shells: Shells | None = None
    ventricle_dilation: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, N, N)."""
        return next(iter(self.maps.values())).shape

    def describe(self) -> dict[str, Any]:
        """JSON-ready ground truth of the anatomy (for the manifest).

        ``shells_mm`` and ``ventricle_dilation`` appear only when they were drawn for
        the patient (the default preset's manifest is unchanged).
        """
        out = {
            "fov_mm": self.fov_mm,
            "slice_thickness_mm": self.slice_thickness_mm,
            "slice_spacing_mm": self.slice_spacing_mm,
            "template_z_mm": list(self.template_z),
            "pose": self.pose.to_dict(),
            "lesions": [
                {"center": list(les.center), "radii": list(les.radii), "enhancing": les.enhancing}
                for les in self.lesions
            ],
        }
        if self.shells is not None:
            out["shells_mm"] = self.shells.to_dict()
        if self.ventricle_dilation is not None:
            out["ventricle_dilation"] = float(self.ventricle_dilation)
        return out


def make_brain_phantom(
    rng: np.random.Generator,
    *,
    slices: int = 8,
    image_size: int = 64,
    max_lesions: int = 3,
    fov_mm: float | None = None,
    deform: bool = True,
    template_z: tuple[float, ...] | None = None,
    variation: AnatomyVariation | None = None,
) -> BrainPhantom:
    """Draw one patient and compute the tissue-fraction maps of its axial slices.

    Args:
        rng: Source of every random choice (pose, deformation, slices, lesions).
        slices: Number of contiguous axial slices.
        image_size: N, pixels per side of the square image.
        max_lesions: Up to this many lesions (uniform count in 0..max_lesions).
        fov_mm: In-plane field of view in mm; drawn in ``variation.fov_mm`` when ``None``.
        deform: Apply the random pose and elastic deformation (``False``: the
            template as it is, centred; useful for tests).
        template_z: Slice centres in template z (mm above the template box's
            bottom; the lateral ventricles are near 90, the vertex near 150)
            instead of a random stack; overrides ``slices``.
        variation: Ranges of the per-patient draws; ``None``: :data:`DEFAULT_VARIATION`.

    Returns:
        A :class:`BrainPhantom` with maps of shape (slices, N, N).
    """
    if slices < 1 or image_size < 8:
        raise ValueError(f"need slices >= 1 and image_size >= 8, got {slices}, {image_size}")
    v = DEFAULT_VARIATION if variation is None else variation
    tpl = load_templates()
    fov = float(rng.uniform(*v.fov_mm)) if fov_mm is None else float(fov_mm)
    pose = _draw_pose(rng, v)
    if not deform:
        none = np.zeros((0, 3))
        pose = HeadPose((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), none, none, none)
    thickness = 5.0
    spacing = float(rng.uniform(*v.slice_spacing_mm))
    zlo, zhi = v.z_range_mm
    spacing = min(spacing, (zhi - zlo - thickness) / max(slices - 1, 1))
    extent = (slices - 1) * spacing
    z0 = float(rng.uniform(zlo + thickness / 2, zhi - thickness / 2 - extent))
    if template_z is None:
        template_z = tuple(z0 + i * spacing for i in range(slices))
    else:
        template_z = tuple(float(z) for z in template_z)
        z0, extent = min(template_z), max(template_z) - min(template_z)
    lesions = _draw_lesions(rng, tpl, int(rng.integers(0, max_lesions + 1)), (z0, z0 + extent), v)
    shells, dilation = None, None
    if v.draws_head:  # drawn last: the draws above stay those of the default stream
        d = DEFAULT_SHELLS

        def draw(bounds, fixed):
            return fixed if bounds is None else float(rng.uniform(*bounds))

        shells = Shells(
            csf=draw(v.csf_mm, d.csf),
            skull=draw(v.skull_mm, d.skull),
            scalp_fat=draw(v.scalp_fat_mm, d.scalp_fat),
            skin=draw(v.skin_mm, d.skin),
            marrow_fat=draw(v.marrow_fat, d.marrow_fat),
        )
        if v.ventricle_dilation is not None:
            dilation = float(rng.uniform(*v.ventricle_dilation))
    kw = dict(shells=DEFAULT_SHELLS if shells is None else shells, dilation=dilation or 0.0)
    if v.fov_fits_head and fov_mm is None:
        needed = 2.0 * (_head_half_extent_mm(tpl, pose, template_z, **kw) + 6.0)
        fov = max(fov, min(needed, v.fov_fit_max_mm))
    maps = _slice_maps(tpl, pose, lesions, template_z, thickness, fov, image_size, **kw)
    if v.fov_fits_head and fov_mm is None:
        for _ in range(4):
            if edge_occupancy(maps) <= 0.5 or fov >= v.fov_fit_max_mm:
                break
            fov = min(fov * 1.05, v.fov_fit_max_mm)
            maps = _slice_maps(tpl, pose, lesions, template_z, thickness, fov, image_size, **kw)
    return BrainPhantom(maps, fov, thickness, spacing, template_z, pose, lesions, shells, dilation)


def _head_half_extent_mm(
    tpl: BrainTemplates, pose: HeadPose, template_z: tuple[float, ...], *, probe_mm: float = 360.0, **kw: Any
) -> float:
    """In-plane half extent (mm, from the image centre) of the head over the slices' centre planes."""
    n = int(probe_mm / 3.0)
    maps = _slice_maps(tpl, pose, (), template_z, 1.0, probe_mm, n, sub=1, **kw)
    total = sum(maps.values()).max(axis=0)  # (n, n), over slices
    coords = np.abs((np.arange(n) + 0.5) * (probe_mm / n) - probe_mm / 2)
    rows, cols = np.nonzero(total > 0.25)
    if rows.size == 0:
        return 0.0
    return float(max(coords[rows].max(), coords[cols].max()) + probe_mm / n / 2)


def edge_occupancy(maps: dict[str, np.ndarray]) -> float:
    """Largest tissue fraction summed along one image edge (first / last row or column) of any slice."""
    total = sum(maps.values())
    edges = (total[:, 0, :], total[:, -1, :], total[:, :, 0], total[:, :, -1])
    return float(max(e.sum(axis=-1).max() for e in edges))


@lru_cache(maxsize=4)
def _lesion_sites(threshold: float) -> np.ndarray:
    tpl = load_templates()
    return tpl.wm_core if threshold == 0.95 else np.flatnonzero(tpl.wm > threshold)


@lru_cache(maxsize=1)
def ventricle_center() -> tuple[float, float, float]:
    """Template voxel centroid of the central CSF (lateral and third ventricles)."""
    tpl = load_templates()
    csf = (tpl.mask - tpl.gm - tpl.wm) > 0.7
    c = np.asarray(tpl.center)
    box = tuple(slice(int(c[i] - h), int(c[i] + h) + 1) for i, h in enumerate((25, 40, 30)))
    pts = np.argwhere(csf[box]) + [b.start for b in box]
    return tuple(float(x) for x in pts.mean(axis=0))


def _draw_lesions(
    rng: np.random.Generator,
    tpl: BrainTemplates,
    n: int,
    z_range: tuple[float, float],
    variation: AnatomyVariation = DEFAULT_VARIATION,
) -> tuple[Lesion, ...]:
    all_sites = _lesion_sites(float(variation.lesion_site_wm))
    z = np.unravel_index(all_sites, tpl.wm.shape)[2]
    sites = all_sites[(z >= z_range[0]) & (z <= z_range[1])]
    if n == 0 or sites.size == 0:
        return ()
    out = []
    for flat in rng.choice(sites, size=n, replace=False):
        center = tuple(float(c) for c in np.unravel_index(int(flat), tpl.wm.shape))
        radii = tuple(float(r) for r in rng.uniform(*variation.lesion_radius_mm, size=3))
        out.append(Lesion(center, radii, bool(rng.random() < variation.enhancing_fraction)))
    return tuple(out)


def _band(d: np.ndarray, start: float, end: float) -> np.ndarray:
    """Soft indicator of start <= d < end with 1 mm linear edges."""
    return np.clip(d - start + 0.5, 0, 1) - np.clip(d - end + 0.5, 0, 1)


def _slice_maps(
    tpl: BrainTemplates,
    pose: HeadPose,
    lesions: tuple[Lesion, ...],
    template_z: tuple[float, ...],
    thickness: float,
    fov: float,
    n: int,
    *,
    shells: Shells = DEFAULT_SHELLS,
    dilation: float = 0.0,
    sub: int | None = None,
) -> dict[str, np.ndarray]:
    pixel = fov / n
    if sub is None:
        sub = max(1, math.ceil(pixel / 1.0))  # in-plane sub-samples per pixel (<= 1 mm apart)
    nz = max(1, math.ceil(thickness / 1.0))  # through-plane sub-samples
    m = n * sub
    # scanner coordinates (mm, head-centred, RAS) of the sub-sample grid of one slice
    coords = (np.arange(m) + 0.5) * (fov / m) - fov / 2
    y = coords[::-1]  # row 0 = anterior
    x = coords[::-1]  # column 0 = patient's right (radiological)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    rot = pose.rotation()
    inv_scale = 1.0 / np.asarray(pose.scale)
    shift = np.asarray(pose.shift_mm)
    center = np.asarray(tpl.center)
    vc, vs = np.asarray(ventricle_center()), np.asarray(_VENTRICLE_SIGMA_MM)
    maps = {k: np.zeros((len(template_z), n, n), dtype=np.float32) for k in BRAIN_COMPONENTS}
    for s, zt in enumerate(template_z):
        z_scan = (zt - center[2]) * pose.scale[2]
        p = np.stack([xx, yy, np.full_like(xx, z_scan)], axis=-1)  # (m, m, 3)
        disp = pose.displacement(p) if len(pose.mode_k) else 0.0
        acc = {k: np.zeros((m, m), dtype=np.float64) for k in BRAIN_COMPONENTS}
        for dz in (np.arange(nz) + 0.5) / nz * thickness - thickness / 2:
            ps = p.copy()
            ps[..., 2] += dz
            q = center + ((ps - shift) * inv_scale) @ rot.T + disp  # (m, m, 3) template voxels
            if dilation:  # pull points towards the ventricles: they (and their surroundings) grow
                g = np.exp(-0.5 * (((q - vc) / vs) ** 2).sum(axis=-1, keepdims=True))
                q = vc + (q - vc) * (1.0 - dilation * g)
            fr = _fractions_at(tpl, q.reshape(-1, 3).T, lesions, shells)
            for k in BRAIN_COMPONENTS:
                acc[k] += fr[k].reshape(m, m)
        for k in BRAIN_COMPONENTS:
            block = acc[k].reshape(n, sub, n, sub).mean(axis=(1, 3)) / nz
            maps[k][s] = block.astype(np.float32)
    return maps


def _fractions_at(
    tpl: BrainTemplates, q: np.ndarray, lesions: tuple[Lesion, ...], shells: Shells = DEFAULT_SHELLS
) -> dict[str, np.ndarray]:
    """Tissue fractions at template points ``q`` (3, P); returns component -> (P,) arrays."""
    bands = shells.bands()
    gm = ndi.map_coordinates(tpl.gm, q, order=1, mode="constant", cval=0.0)
    wm = ndi.map_coordinates(tpl.wm, q, order=1, mode="constant", cval=0.0)
    inside = ndi.map_coordinates(tpl.mask, q, order=1, mode="constant", cval=0.0)
    qd = (q + _DIST_PAD * _DIST_STEP) / _DIST_STEP
    d = ndi.map_coordinates(tpl.dist, qd, order=1, mode="nearest")
    inside = np.clip(np.maximum(inside, gm + wm), 0.0, 1.0)
    outside = 1.0 - inside
    in_sinus = (  # 0..1: the sinus takes the place of the CSF shell and the skull there
        _band(d, *_SINUS)
        * np.clip(_SINUS_HALF_WIDTH_MM + 0.5 - np.abs(q[0] - tpl.center[0]), 0, 1)
        * np.clip(q[2] - tpl.center[2] + 0.5, 0, 1)
    )
    sinus = outside * in_sinus
    csf = np.clip(inside - gm - wm, 0.0, 1.0) + outside * (1 - in_sinus) * _band(d, -1.0, bands["csf"][1])
    fat = outside * ((1 - in_sinus) * shells.marrow_fat * _band(d, *bands["skull"]) + _band(d, *bands["scalp_fat"]))
    muscle = outside * _band(d, *bands["skin"])
    out = {"gm": gm, "wm": wm, "csf": csf, "fat": fat, "muscle": muscle, "blood": sinus}
    les = {"lesion": np.zeros_like(gm), "lesion_enhancing": np.zeros_like(gm)}
    for lesion in lesions:
        r = np.sqrt(sum(((q[i] - lesion.center[i]) / lesion.radii[i]) ** 2 for i in range(3)))
        occupancy = np.clip((1.0 - r) * min(lesion.radii) + 0.5, 0.0, 1.0)
        les["lesion_enhancing" if lesion.enhancing else "lesion"] += occupancy * (out["gm"] + out["wm"])
        out["gm"] = out["gm"] * (1.0 - occupancy)
        out["wm"] = out["wm"] * (1.0 - occupancy)
    out.update(les)
    return out


# -- contrast ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrainVolume:
    """A rendered, noiseless brain volume.

    Attributes:
        image: complex64 (slices, N, N): the ground-truth complex image (rows =
            readout, anterior first; columns = phase encode).
        maps: The phantom's component fractions, float32 (slices, N, N).
        signals: component -> signed signal under the protocol.
        phase: float32 (slices, N, N), rad: the smooth phase applied.
        protocol: The acquisition protocol.
    """

    image: np.ndarray
    maps: dict[str, np.ndarray]
    signals: dict[str, float]
    phase: np.ndarray
    protocol: Protocol


def render_brain_volume(
    phantom: BrainPhantom, protocol: Protocol, rng: np.random.Generator | None = None
) -> BrainVolume:
    """Contrast ``image = sum_k maps_k * signal_k(protocol) * e^(i phi)``.

    Args:
        phantom: The patient's tissue maps.
        protocol: Sequence and parameters (``protocols.sample_brain_protocol``).
        rng: Draws the smooth phase; ``None`` gives a real (zero-phase) image.

    Returns:
        A :class:`BrainVolume`.
    """
    signals = component_signals(protocol, BRAIN_COMPONENTS)
    if protocol.sequence == "TurboSpinEcho":
        signals["blood"] *= SPIN_ECHO_FLOW_FACTOR
    mag = np.zeros(phantom.shape, dtype=np.float64)
    for comp, frac in phantom.maps.items():
        mag += frac * signals[comp]
    if rng is None:
        phase = np.zeros(phantom.shape)
    else:
        phase = smooth_phase(rng, phantom.shape[0], phantom.shape[1:])
    image = (mag * np.exp(1j * phase)).astype(np.complex64)
    return BrainVolume(image, phantom.maps, signals, phase.astype(np.float32), protocol)
