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

import math
from dataclasses import dataclass, field
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


def _draw_pose(rng: np.random.Generator, n_modes: int = 6) -> HeadPose:
    scale = float(rng.uniform(0.92, 1.06)) * rng.uniform(0.97, 1.03, size=3)
    angles = rng.normal(0.0, [3.0, 3.0, 5.0])
    shift = np.array([rng.normal(0, 4.0), rng.normal(0, 4.0), 0.0])
    directions = rng.normal(size=(n_modes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(50.0, 120.0, size=(n_modes, 1))
    return HeadPose(
        scale=tuple(float(s) for s in scale),
        angles_deg=tuple(float(a) for a in angles),
        shift_mm=tuple(float(s) for s in shift),
        mode_k=directions / wavelengths,
        mode_amp=rng.normal(0.0, 2.0 / math.sqrt(n_modes) * math.sqrt(2), size=(n_modes, 3)),
        mode_phase=rng.uniform(0, 2 * np.pi, size=(n_modes, 3)),
    )


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
    """

    maps: dict[str, np.ndarray]
    fov_mm: float
    slice_thickness_mm: float
    slice_spacing_mm: float
    template_z: tuple[float, ...]
    pose: HeadPose
    lesions: tuple[Lesion, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, N, N)."""
        return next(iter(self.maps.values())).shape

    def describe(self) -> dict[str, Any]:
        """JSON-ready ground truth of the anatomy (for the manifest)."""
        return {
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


def make_brain_phantom(
    rng: np.random.Generator,
    *,
    slices: int = 8,
    image_size: int = 64,
    max_lesions: int = 3,
    fov_mm: float | None = None,
    deform: bool = True,
    template_z: tuple[float, ...] | None = None,
) -> BrainPhantom:
    """Draw one patient and compute the tissue-fraction maps of its axial slices.

    Args:
        rng: Source of every random choice (pose, deformation, slices, lesions).
        slices: Number of contiguous axial slices.
        image_size: N, pixels per side of the square image.
        max_lesions: Up to this many lesions (uniform count in 0..max_lesions).
        fov_mm: In-plane field of view in mm; drawn in 230-250 mm when ``None``.
        deform: Apply the random pose and elastic deformation (``False``: the
            template as it is, centred; useful for tests).
        template_z: Slice centres in template z (mm above the template box's
            bottom; the lateral ventricles are near 90, the vertex near 150)
            instead of a random stack; overrides ``slices``.

    Returns:
        A :class:`BrainPhantom` with maps of shape (slices, N, N).
    """
    if slices < 1 or image_size < 8:
        raise ValueError(f"need slices >= 1 and image_size >= 8, got {slices}, {image_size}")
    tpl = load_templates()
    fov = float(rng.uniform(230.0, 250.0)) if fov_mm is None else float(fov_mm)
    pose = _draw_pose(rng)
    if not deform:
        none = np.zeros((0, 3))
        pose = HeadPose((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), none, none, none)
    thickness = 5.0
    spacing = float(rng.uniform(5.0, 6.0))
    zlo, zhi = _Z_RANGE_MM
    spacing = min(spacing, (zhi - zlo - thickness) / max(slices - 1, 1))
    extent = (slices - 1) * spacing
    z0 = float(rng.uniform(zlo + thickness / 2, zhi - thickness / 2 - extent))
    if template_z is None:
        template_z = tuple(z0 + i * spacing for i in range(slices))
    else:
        template_z = tuple(float(z) for z in template_z)
        z0, extent = min(template_z), max(template_z) - min(template_z)
    lesions = _draw_lesions(rng, tpl, int(rng.integers(0, max_lesions + 1)), (z0, z0 + extent))
    maps = _slice_maps(tpl, pose, lesions, template_z, thickness, fov, image_size)
    return BrainPhantom(maps, fov, thickness, spacing, template_z, pose, lesions)


def _draw_lesions(
    rng: np.random.Generator, tpl: BrainTemplates, n: int, z_range: tuple[float, float]
) -> tuple[Lesion, ...]:
    z = np.unravel_index(tpl.wm_core, tpl.wm.shape)[2]
    sites = tpl.wm_core[(z >= z_range[0]) & (z <= z_range[1])]
    if n == 0 or sites.size == 0:
        return ()
    out = []
    for flat in rng.choice(sites, size=n, replace=False):
        center = tuple(float(c) for c in np.unravel_index(int(flat), tpl.wm.shape))
        radii = tuple(float(r) for r in rng.uniform(2.0, 6.0, size=3))
        out.append(Lesion(center, radii, bool(rng.random() < 0.5)))
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
) -> dict[str, np.ndarray]:
    pixel = fov / n
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
            fr = _fractions_at(tpl, q.reshape(-1, 3).T, lesions)
            for k in BRAIN_COMPONENTS:
                acc[k] += fr[k].reshape(m, m)
        for k in BRAIN_COMPONENTS:
            block = acc[k].reshape(n, sub, n, sub).mean(axis=(1, 3)) / nz
            maps[k][s] = block.astype(np.float32)
    return maps


def _fractions_at(tpl: BrainTemplates, q: np.ndarray, lesions: tuple[Lesion, ...]) -> dict[str, np.ndarray]:
    """Tissue fractions at template points ``q`` (3, P); returns component -> (P,) arrays."""
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
    csf = np.clip(inside - gm - wm, 0.0, 1.0) + outside * (1 - in_sinus) * _band(d, -1.0, _CSF_SHELL[1])
    fat = outside * ((1 - in_sinus) * _MARROW_FAT_FRACTION * _band(d, *_SKULL) + _band(d, *_SCALP_FAT))
    muscle = outside * _band(d, *_SKIN)
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
