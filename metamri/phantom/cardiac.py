"""A procedural beating heart in a thorax, imaged as cine bSSFP in short and long axis.

Geometry (mm, image plane; x to the image right, y to the image top = anterior)
-----------------------------------------------------------------------------
The thorax is a stack of painted shapes; where shapes overlap the later one
wins (painted on a grid of s x s sub-samples per pixel, then averaged, which
gives partial-volume fractions).  In painting order:

* body: an ellipse (semi-axes 140-165 x 95-115 mm) of subcutaneous ``fat``
  (8-20 mm), a 12-14 mm chest-wall ``muscle`` layer, and the thoracic cavity of ``lung``;
* spine: paraspinal ``muscle`` (r 28 mm) around a vertebral body (r 15 mm, marrow
  painted as ``fat``), at the posterior midline; the descending aorta
  (``vessel_blood``, r 11 mm) beside it;
* ``liver`` (image left = patient's right), growing towards the apex;
* epicardial ``fat`` (4 mm around the heart);
* short axis: the right ventricle, an ellipse of ``rv_blood`` inside a 3 mm
  ``myocardium`` wall, overlapped by the left ventricle (a ``myocardium`` disc with
  an ``lv_blood`` cavity) so that the RV is a crescent and the septum LV myocardium;
  two papillary muscles in mid-ventricular slices;
* long axis: the LV as an ellipsoidal shell open at the mitral valve, the left
  atrium (``atrial_blood``) below the base, and per view: 4-chamber (+ RV and right
  atrium), 2-chamber (LV + LA), 3-chamber (+ aortic outflow, ``vessel_blood``).

Short-axis slices run from base (slice 0) to apex, at ``zeta`` in [0.05, 0.85] of
the LV half-length: the cavity radius scales as ``sqrt(1 - zeta^2)`` (ellipsoidal
LV), the RV shrinks to nothing near the apex and the liver appears.

Motion
------
A contraction waveform ``c(tau)`` in [0, 1] over the RR interval (tau = frame /
frames): systole to end-systole at tau_es (0.30-0.40) as a raised cosine, rapid
filling over the next 0.3 to c = 0.15 (diastasis), then the atrial kick back to
0 at end-diastole (frame 0).  The LV cavity radius is ``r_ed (1 - fs c)`` with
radial fractional shortening fs (0.30-0.40, normal); the epicardial radius
keeps the myocardial area constant (``R_epi^2 = r^2 + R_ed^2 - r_ed^2``), so the
wall thickens in systole.  The RV shrinks by 30 % c, long-axis length by 15 % c
(the base descends), the atria grow by 20 % c, and the heart shifts 3 mm c.

Pathology (drawn per patient, written to the sidecar table): ``normal`` (70 %),
``DCM`` (15 %: cavity x1.3, thin wall, fs 0.10-0.18), ``HCM`` (15 %: wall x1.7,
small cavity, fs 0.35-0.45).

Contrast: bSSFP (``tissue.bssfp``), on resonance, no flow, no banding, no
through-plane motion, no respiration (breath-held cine).  Image phase: the smooth
random phase of :func:`metamri.phantom.phase.smooth_phase`, one per slice,
constant over frames.

Image layout: arrays are (frames, slices, ny, nx) with ny the phase-encode
axis (rows) and nx the readout (columns), i.e. CMRxRecon's h5py order
(t, slice, coil, ky, kx) without the coil axis.  Square pixels: the readout
field of view is 340-380 mm and the phase field of view ``fov_x * ny / nx``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from metamri.phantom.phase import smooth_phase
from metamri.phantom.protocols import Protocol
from metamri.phantom.tissue import component_signals

#: Map components -> (tissue, gadolinium mM); cine is never contrast enhanced.
CARDIAC_COMPONENTS: dict[str, tuple[str, float]] = {
    "fat": ("fat", 0.0),
    "muscle": ("muscle", 0.0),
    "lung": ("lung", 0.0),
    "liver": ("liver", 0.0),
    "myocardium": ("myocardium", 0.0),
    "lv_blood": ("blood_pool", 0.0),
    "rv_blood": ("blood_pool", 0.0),
    "atrial_blood": ("blood_pool", 0.0),
    "vessel_blood": ("blood_pool", 0.0),
}
_LABELS = ("air", *CARDIAC_COMPONENTS)
_INDEX = {name: i for i, name in enumerate(_LABELS)}

VIEWS = ("sax", "lax")
LAX_VIEWS = ("4ch", "2ch", "3ch")
PATHOLOGIES = ("normal", "DCM", "HCM")


def contraction(tau: np.ndarray | float, tau_es: float) -> np.ndarray:
    """Contraction state c in [0, 1] at cycle fraction ``tau`` in [0, 1) (0 = end-diastole)."""
    tau = np.mod(np.asarray(tau, dtype=np.float64), 1.0)
    fill = 0.3
    systole = 0.5 * (1 - np.cos(np.pi * tau / tau_es))
    relax = 0.15 + 0.85 * 0.5 * (1 + np.cos(np.pi * (tau - tau_es) / fill))
    kick = 0.15 * (1 - (tau - tau_es - fill) / (1 - tau_es - fill))
    return np.where(tau < tau_es, systole, np.where(tau < tau_es + fill, relax, kick))


@dataclass(frozen=True)
class CardiacPhantom:
    """One patient's thorax and heart (all lengths mm, angles deg).

    Attributes:
        fov_x: Readout field of view, mm.
        body_a, body_b: Body semi-axes (x, y).
        fat_mm, wall_mm: Subcutaneous fat and chest-wall muscle thickness.
        lv_center: LV centre (x, y) at mid-ventricle in short axis.
        lv_radius: End-diastolic LV cavity radius at mid-ventricle.
        lv_wall: End-diastolic LV wall thickness.
        fs: Radial fractional shortening.
        tau_es: End-systolic cycle fraction.
        rv_angle: Orientation of the RV relative to the LV, deg.
        lax_angle: Long-axis direction in the LAX planes, deg from the image x axis.
        lv_length: End-diastolic LV cavity length (base to apex), mm.
        pathology: ``"normal"`` | ``"DCM"`` | ``"HCM"``.
        age: Years.  sex: ``"F"`` | ``"M"``.
    """

    fov_x: float
    body_a: float
    body_b: float
    fat_mm: float
    wall_mm: float
    lv_center: tuple[float, float]
    lv_radius: float
    lv_wall: float
    fs: float
    tau_es: float
    rv_angle: float
    lax_angle: float
    lv_length: float
    pathology: str
    age: int
    sex: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready ground truth (for the manifest)."""
        return asdict(self)


def make_cardiac_phantom(rng: np.random.Generator, *, pathology: str | None = None) -> CardiacPhantom:
    """Draw one patient's thorax and heart.

    Args:
        rng: Source of randomness.
        pathology: Force ``"normal"``, ``"DCM"`` or ``"HCM"``; drawn 70/15/15 when ``None``.
    """
    if pathology is None:
        pathology = str(rng.choice(PATHOLOGIES, p=[0.7, 0.15, 0.15]))
    if pathology not in PATHOLOGIES:
        raise ValueError(f"unknown pathology {pathology!r}; known: {PATHOLOGIES}")
    radius, wall, fs = rng.uniform(22, 27), rng.uniform(7, 10), rng.uniform(0.30, 0.40)
    if pathology == "DCM":
        radius, wall, fs = radius * 1.3, wall * 0.8, rng.uniform(0.10, 0.18)
    elif pathology == "HCM":
        radius, wall, fs = radius * 0.85, wall * 1.7, rng.uniform(0.35, 0.45)
    return CardiacPhantom(
        fov_x=float(rng.uniform(340, 380)),
        body_a=float(rng.uniform(140, 165)),
        body_b=float(rng.uniform(95, 115)),
        fat_mm=float(rng.uniform(8, 20)),
        wall_mm=float(rng.uniform(12, 14)),
        lv_center=(float(rng.uniform(15, 35)), float(rng.uniform(8, 22))),
        lv_radius=float(radius),
        lv_wall=float(wall),
        fs=float(fs),
        tau_es=float(rng.uniform(0.30, 0.40)),
        rv_angle=float(rng.uniform(150, 170)),
        lax_angle=float(rng.uniform(25, 50)),
        lv_length=float(rng.uniform(75, 90)),
        pathology=pathology,
        age=int(rng.integers(20, 81)),
        sex=str(rng.choice(["F", "M"])),
    )


class _Canvas:
    """A label image on a sub-sampled grid; ``paint`` overwrites where a shape lies.

    Coordinates ``x`` (columns) and ``y`` (rows) are regular grids in mm; shapes are
    evaluated only inside their bounding box.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray) -> None:
        self.xs, self.ys = xs, ys  # 1-D: column and row coordinates (ys decreasing)
        self.step = float(xs[1] - xs[0])
        self.labels = np.zeros((ys.size, xs.size), dtype=np.int8)

    def copy(self) -> _Canvas:
        out = _Canvas.__new__(_Canvas)
        out.xs, out.ys, out.step, out.labels = self.xs, self.ys, self.step, self.labels.copy()
        return out

    def ellipse(self, center, a, b, angle_deg=0.0) -> np.ndarray:
        """Boolean (rows, cols) mask of the ellipse with semi-axes a (along angle) and b."""
        out = np.zeros(self.labels.shape, dtype=bool)
        if a <= 0 or b <= 0:
            return out
        reach = max(a, b)
        c0 = max(int((center[0] - reach - self.xs[0]) / self.step) - 1, 0)
        c1 = min(int((center[0] + reach - self.xs[0]) / self.step) + 2, self.xs.size)
        r0 = max(int((self.ys[0] - center[1] - reach) / self.step) - 1, 0)
        r1 = min(int((self.ys[0] - center[1] + reach) / self.step) + 2, self.ys.size)
        if c0 >= c1 or r0 >= r1:
            return out
        t = math.radians(angle_deg)
        dx = self.xs[None, c0:c1] - center[0]
        dy = self.ys[r0:r1, None] - center[1]
        u = dx * math.cos(t) + dy * math.sin(t)
        v = -dx * math.sin(t) + dy * math.cos(t)
        out[r0:r1, c0:c1] = (u / a) ** 2 + (v / b) ** 2 < 1.0
        return out

    def paint(self, label: str, where: np.ndarray) -> None:
        self.labels[where] = _INDEX[label]

    def fractions(self, sub: int) -> dict[str, np.ndarray]:
        """component -> float32 (ny, nx) fraction of sub-samples carrying its label."""
        ny, nx = self.labels.shape[0] // sub, self.labels.shape[1] // sub
        pixel = (np.arange(ny)[:, None, None, None] * nx + np.arange(nx)[None, None, :, None])
        pixel = np.broadcast_to(pixel, (ny, sub, nx, sub)).reshape(-1)
        counts = np.bincount(
            pixel * len(_LABELS) + self.labels.reshape(-1).astype(np.int64),
            minlength=ny * nx * len(_LABELS),
        ).reshape(ny, nx, len(_LABELS))
        frac = (counts / float(sub * sub)).astype(np.float32)
        return {name: np.ascontiguousarray(frac[..., _INDEX[name]]) for name in CARDIAC_COMPONENTS}


def _thorax(cv: _Canvas, ph: CardiacPhantom, liver: float) -> None:
    """Body, chest wall, lungs, spine, descending aorta and (``liver`` in [0, 1]) the liver dome."""
    a, b = ph.body_a, ph.body_b
    cv.paint("fat", cv.ellipse((0, 0), a, b))
    cv.paint("muscle", cv.ellipse((0, 0), a - ph.fat_mm, b - ph.fat_mm))
    inner = ph.fat_mm + ph.wall_mm
    cav_b = b - inner - 5
    cavity = cv.ellipse((0, 5), a - inner, cav_b)
    cv.paint("lung", cavity)
    if liver > 0:  # the dome rises into the plane: an ellipse whose top climbs with `liver`
        top = 5 - cav_b + liver * 0.9 * cav_b
        cv.paint("liver", cavity & cv.ellipse((-40, top - 90), 130, 90, 10))
    spine_y = -(b - ph.fat_mm - 22)
    cv.paint("muscle", cv.ellipse((0, spine_y - 8), 30, 26))
    cv.paint("fat", cv.ellipse((0, spine_y), 15, 13))
    cv.paint("vessel_blood", cv.ellipse((20, spine_y + 22), 11, 11))


def _sax_liver(zeta: float) -> float:
    return float(np.clip((zeta - 0.35) / 0.5, 0, 1))


def _sax_slice(cv: _Canvas, ph: CardiacPhantom, zeta: float, c: float) -> None:
    """Paint the heart of one short-axis plane (``zeta`` from base 0 to apex 1) at contraction c."""
    taper = math.sqrt(max(1.0 - zeta**2, 0.0))
    r_ed = ph.lv_radius * taper
    epi_ed = r_ed + ph.lv_wall * (0.85 + 0.15 * taper)
    r = r_ed * (1 - ph.fs * c)
    epi = math.sqrt(r**2 + epi_ed**2 - r_ed**2)
    cx, cy = ph.lv_center[0] + 3 * c, ph.lv_center[1] - 2 * c
    rv_size = max(0.0, 1 - (zeta / 0.8) ** 2) * (1 - 0.3 * c)
    t = math.radians(ph.rv_angle)
    rv_center = (cx + 0.95 * epi_ed * math.cos(t), cy + 0.95 * epi_ed * math.sin(t))
    rv_a, rv_b = 1.5 * epi_ed * rv_size, 0.8 * epi_ed * rv_size
    heart = cv.ellipse((cx, cy), epi + 3, epi + 3)
    if rv_size > 0:
        heart |= cv.ellipse(rv_center, rv_a + 6, rv_b + 6, ph.rv_angle - 90)
    cv.paint("fat", heart)
    if rv_size > 0:
        cv.paint("myocardium", cv.ellipse(rv_center, rv_a + 3, rv_b + 3, ph.rv_angle - 90))
        cv.paint("rv_blood", cv.ellipse(rv_center, rv_a, rv_b, ph.rv_angle - 90))
    cv.paint("myocardium", cv.ellipse((cx, cy), epi, epi))
    cv.paint("lv_blood", cv.ellipse((cx, cy), r, r))
    if 0.2 <= zeta <= 0.7:
        for ang in (-40.0, -140.0):
            p = (cx + 0.62 * r * math.cos(math.radians(ang)), cy + 0.62 * r * math.sin(math.radians(ang)))
            cv.paint("myocardium", cv.ellipse(p, 0.2 * r + 1, 0.2 * r + 1))


def _lax_slice(cv: _Canvas, ph: CardiacPhantom, view: str, c: float) -> None:
    """Paint the heart of one long-axis view (``"4ch"`` | ``"2ch"`` | ``"3ch"``) at contraction c."""
    th = math.radians(ph.lax_angle)
    u = np.array([math.cos(th), math.sin(th)])  # base -> apex
    n = np.array([-math.sin(th), math.cos(th)])  # towards the RV side (image left / anterior)
    length = ph.lv_length * (1 - 0.15 * c)
    r = ph.lv_radius * (1 - ph.fs * c)
    wall = ph.lv_wall * (1 + 0.45 * ph.fs / 0.33 * c)
    apex = np.array(ph.lv_center) + u * 0.55 * ph.lv_length + 3 * c
    base = apex - u * length
    mid = (base + apex) / 2
    la_r = 20 * (1 + 0.2 * c)
    ang = ph.lax_angle
    rv_mid = mid + n * (r + wall + 0.55 * r) - u * 8
    heart = cv.ellipse(mid, length / 2 + wall + 4, r + wall + 4, ang)
    heart |= cv.ellipse(base - u * la_r * 0.8, la_r + 4, la_r * 0.9 + 4, ang)
    if view == "4ch":
        heart |= cv.ellipse(rv_mid, 0.4 * length + 7, 0.55 * r + 7, ang)
    cv.paint("fat", heart)
    if view == "4ch":
        cv.paint("myocardium", cv.ellipse(rv_mid, 0.4 * length + 3, 0.55 * r * (1 - 0.3 * c) + 3, ang))
        cv.paint("rv_blood", cv.ellipse(rv_mid, 0.4 * length, 0.55 * r * (1 - 0.3 * c), ang))
        ra_c = rv_mid - u * (0.4 * length + la_r * 0.7)
        cv.paint("atrial_blood", cv.ellipse(ra_c, la_r, la_r * 0.85, ang))
    cv.paint("myocardium", cv.ellipse(mid + u * wall / 2, length / 2 + wall / 2, r + wall, ang))
    cv.paint("lv_blood", cv.ellipse(mid, length / 2, r, ang))
    cv.paint("atrial_blood", cv.ellipse(base - u * la_r * 0.85, la_r, la_r * 0.9, ang))
    if view == "3ch":
        root = base + n * 0.7 * r - u * 12
        cv.paint("vessel_blood", cv.ellipse(root, 22, 11, ang - 40))


def cardiac_maps(
    phantom: CardiacPhantom,
    view: str,
    *,
    frames: int,
    slices: int,
    shape: tuple[int, int],
) -> dict[str, np.ndarray]:
    """Tissue-fraction maps of one cine view.

    Args:
        phantom: The patient.
        view: ``"sax"`` (``slices`` planes, base to apex) or ``"lax"`` (``slices``
            of 4-chamber, 2-chamber, 3-chamber, in that order; at most 3).
        frames: Cine frames over one RR interval.
        slices: Number of planes.
        shape: (ny, nx): phase-encode rows, readout columns.

    Returns:
        component -> float32 (frames, slices, ny, nx) fractions in [0, 1].
    """
    if view not in VIEWS:
        raise ValueError(f"unknown cardiac view {view!r}; known: {VIEWS}")
    if view == "lax" and not 1 <= slices <= len(LAX_VIEWS):
        raise ValueError(f"lax views have 1 to {len(LAX_VIEWS)} slices, got {slices}")
    ny, nx = shape
    pixel = phantom.fov_x / nx
    sub = int(np.clip(math.ceil(pixel / 1.5), 2, 4))  # sub-samples per pixel and axis
    xs = ((np.arange(nx * sub) + 0.5) / sub - nx / 2) * pixel
    ys = (ny / 2 - (np.arange(ny * sub) + 0.5) / sub) * pixel  # row 0 = anterior
    maps = {k: np.zeros((frames, slices, ny, nx), dtype=np.float32) for k in CARDIAC_COMPONENTS}
    cs = contraction(np.arange(frames) / frames, phantom.tau_es)
    zetas = np.linspace(0.05, 0.85, slices) if slices > 1 else np.array([0.45])
    for s in range(slices):
        thorax = _Canvas(xs, ys)
        _thorax(thorax, phantom, liver=_sax_liver(float(zetas[s])) if view == "sax" else 0.8)
        for f, c in enumerate(cs):
            cv = thorax.copy()
            if view == "sax":
                _sax_slice(cv, phantom, float(zetas[s]), float(c))
            else:
                _lax_slice(cv, phantom, LAX_VIEWS[s], float(c))
            for k, frac in cv.fractions(sub).items():
                maps[k][f, s] = frac
    return maps


@dataclass(frozen=True)
class CineVolume:
    """A rendered, noiseless cine series.

    Attributes:
        image: complex64 (frames, slices, ny, nx) ground-truth complex images.
        maps: component -> float32 (frames, slices, ny, nx) fractions.
        signals: component -> bSSFP signal.
        phase: float32 (slices, ny, nx), rad.
        protocol: The protocol.
        view: ``"sax"`` | ``"lax"``.
    """

    image: np.ndarray
    maps: dict[str, np.ndarray]
    signals: dict[str, float]
    phase: np.ndarray
    protocol: Protocol
    view: str


def render_cine(
    phantom: CardiacPhantom,
    view: str,
    protocol: Protocol,
    rng: np.random.Generator | None = None,
    *,
    frames: int = 12,
    slices: int = 6,
    shape: tuple[int, int] = (48, 64),
) -> CineVolume:
    """Render one cine view: ``sum_k maps_k * bSSFP_k(protocol) * e^(i phi)``.

    Args:
        phantom: The patient.
        view: ``"sax"`` | ``"lax"``.
        protocol: A ``"TrueFISP"`` protocol (``protocols.sample_cine_protocol``).
        rng: Draws the smooth phase; ``None`` gives real images.
        frames, slices, shape: See :func:`cardiac_maps`.

    Returns:
        A :class:`CineVolume`.
    """
    maps = cardiac_maps(phantom, view, frames=frames, slices=slices, shape=shape)
    signals = component_signals(protocol, CARDIAC_COMPONENTS)
    mag = np.zeros((frames, slices, *shape), dtype=np.float64)
    for comp, frac in maps.items():
        mag += frac * signals[comp]
    phase = np.zeros((slices, *shape)) if rng is None else smooth_phase(rng, slices, shape)
    image = (mag * np.exp(1j * phase)[None]).astype(np.complex64)
    return CineVolume(image, maps, signals, phase.astype(np.float32), protocol, view)
