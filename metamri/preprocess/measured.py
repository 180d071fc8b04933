r"""Measured (undersampled) k-space -> what the reconstructors take, mirroring preprocessing.

Training data went through :mod:`metamri.preprocess.pipeline`: ESPIRiT maps from *fully
sampled* k-space, the MVUE, a centre crop to the recon size and a division by the p99
magnitude. A file to reconstruct has only its measured lines. :func:`prepare_slice` does
the closest equivalent, per slice, with the k-space ``y`` complex (coils, readout, phase)
as read and the phase-encode mask ``M`` bool (W,):

1. **ACS**: :func:`acs_width` is the width of the widest *centred* fully sampled block of
   columns, the block ESPIRiT's calibration crop takes (centre index ``W // 2``, the
   crop starting at ``W // 2 - c // 2``, as sigpy's ``resize`` and BART's ``ecalib``);
2. **readout crop**: :func:`crop_readout` removes the 2x readout oversampling exactly
   (coil images centre-cropped to the recon height and transformed back; the mask is
   applied again to remove rounding residue), so maps and images live on the
   (recon height, W) grid;
3. **coil maps from the calibration region** (:func:`calibration_maps`): ESPIRiT with the
   calibration block capped at the ACS width (``calib = min(espirit.calib_size, acs)``)
   and the kernel at a quarter of it, never below 3 (``min(espirit.kernel_size,
   max(3, calib // 4))``, the ratio of the default 24 / 6), so the calibration matrix keeps
   enough rows. Maps from a calibration region below
   :data:`MIN_ACS_LINES` lines are not trusted (sigpy returns garbage silently from
   5 lines, BART refuses them), and the maps are checked (:func:`check_maps`): they
   must cover the object seen in the calibration data and explain its coil images
   (the SENSE model ``m_c = S_c x``). Either failure raises :class:`DataFileError`
   naming the file, the slice, the ACS width and what to do;
4. **scale** (:func:`measured_scale`): the network was trained on images divided by the
   p99 magnitude of the fully sampled MVUE. The closest estimate the measured data
   allow is the p99 magnitude of the zero-filled SENSE image ``A^H y`` (centre-cropped
   to the recon size): the sampled centre holds the low frequencies that set the
   magnitude histogram (measured: ``docs/cs_baseline.md``, "Scaling"). ``y / s`` is
   reconstructed and the result multiplied back by ``s``, so the output is in the
   file's units.

Which coil maps a result used is part of its record: ``metamri.evaluate`` uses the
cached fully sampled maps by default (``coil_maps=fully_sampled``, the paper's
preprocessing) and these calibration maps with ``coil_maps=calibration``;
``metamri.reconstruct`` always uses these (a measured file has nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike

import numpy as np

from metamri.errors import DataFileError
from metamri.physics.fft import center_crop, fft2c_np, ifft2c_np
from metamri.preprocess.espirit import EspiritParams

#: Fewest centred fully sampled phase-encode lines ESPIRiT may calibrate on. Measured on
#: the phantom at 64 and 320 px (``experiments/acs_map_quality.py``, tables in
#: ``docs/cs_baseline.md``): from 6 lines (3-wide kernel) every slice's maps agree with the
#: fully sampled ones to >= 0.99 on average over the object, from 8 lines to >= 0.999; at 4-5
#: lines a 3-wide kernel collapses the maps and a 2-wide one is too small (BART: 0.72 on
#: the worst slice). 8 keeps a margin for coil arrays less smooth than the phantom's.
MIN_ACS_LINES = 8
#: :func:`check_maps` thresholds: the maps must cover this fraction of the object of the
#: calibration image ...
MIN_COVERAGE = 0.95
#: ... and leave at most this fraction of the calibration coil images' energy outside
#: the span of the maps (the SENSE model's residual).
MAX_RESIDUAL = 0.05
#: The calibration image's object: RSS magnitude above this fraction of its 99th percentile.
OBJECT_FRACTION = 0.2


def acs_width(mask: np.ndarray) -> int:
    """Width of the widest centred fully sampled block of columns (0 if DC is not sampled).

    Centred as ESPIRiT's calibration crop: a block of ``c`` columns starts at
    ``W // 2 - c // 2``.

    Args:
        mask: bool-like (W,) phase-encode mask.

    Returns:
        The largest ``c`` with ``mask[W // 2 - c // 2 : W // 2 - c // 2 + c]`` all sampled.
    """
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    w, c = mask.size, 0
    while c < w:
        start = w // 2 - (c + 1) // 2
        if start < 0 or not mask[start : start + c + 1].all():
            break
        c += 1
    return c


def crop_readout(kspace: np.ndarray, height: int) -> np.ndarray:
    """k-space (C, H0, W) -> (C, height, W): coil images centre-cropped along the readout.

    Exact for phase-encode masks up to rounding: unsampled columns come back as ~1e-16
    (the caller multiplies by the mask again).

    Args:
        kspace: complex (coils, readout H0, phase W).
        height: Readout size after the crop (the file's recon height), <= H0.

    Returns:
        complex64 (coils, height, W); ``kspace`` itself when ``H0 == height``.
    """
    if kspace.shape[-2] == height:
        return kspace
    images = ifft2c_np(kspace)
    return fft2c_np(np.ascontiguousarray(center_crop(images, (height, kspace.shape[-1])))).astype(
        np.complex64)


def calibration_params(espirit: EspiritParams, acs: int) -> EspiritParams:
    """ESPIRiT parameters for a calibration region of ``acs`` centred lines.

    ``calib_size = min(espirit.calib_size, acs)`` and ``kernel_size = min(espirit.kernel_size,
    max(3, calib_size // 4))`` (the rest as given): the default 24 / 6 keeps its ratio. A
    larger kernel on a small block leaves the calibration matrix too few rows and the maps
    collapse; a 2-wide kernel is too small to separate the signal space (measured on 32
    phantom slices at 64 px, agreement with the fully sampled maps, worst slice, BART:
    calib 12 with kernel 6: 0.09, 5: 0.98, 3: 0.9997, 2: 0.70; calib 8 with kernel 4: 0.992,
    3: 0.9998; ``docs/cs_baseline.md``, "Coil maps from the calibration region").
    """
    calib = min(int(espirit.calib_size), int(acs))
    return espirit.replace(calib_size=calib, kernel_size=min(int(espirit.kernel_size), max(3, calib // 4)))


@dataclass(frozen=True)
class MapCheck:
    """How well coil maps fit the calibration data (:func:`check_maps`).

    Attributes:
        acs: Centred fully sampled lines the maps were calibrated on.
        coverage: Fraction of the calibration image's object where the maps are non-zero
            (``sum_c |S_c|^2 > 0.5``), in [0, 1].
        residual: Fraction of the calibration coil images' energy inside the object that
            the maps do not explain: ``sum ||m - S S^H m||^2 / sum ||m||^2``, in [0, 1].
    """

    acs: int
    coverage: float
    residual: float

    @property
    def ok(self) -> bool:
        """Coverage >= :data:`MIN_COVERAGE` and residual <= :data:`MAX_RESIDUAL`."""
        return self.coverage >= MIN_COVERAGE and self.residual <= MAX_RESIDUAL

    def describe(self) -> str:
        return f"ACS {self.acs} lines, coverage {self.coverage:.3f}, SENSE residual {self.residual:.3f}"


def calibration_image(y: np.ndarray, acs: int) -> np.ndarray:
    """Coil images of the calibration region alone: complex (C, H, W).

    The ``acs`` centred columns of ``y`` (C, H, W) kept, every other column zeroed,
    inverse-transformed: full resolution along the readout, ``acs`` lines of resolution
    along the phase encode.
    """
    w = y.shape[-1]
    keep = np.zeros(w, dtype=bool)
    start = w // 2 - acs // 2
    keep[start : start + acs] = True
    return ifft2c_np(np.where(keep[None, None, :], y, 0))


def check_maps(maps: np.ndarray, y: np.ndarray, acs: int) -> MapCheck:
    """Check maps against the calibration data they were estimated from (no reference needed).

    Args:
        maps: complex (C, H, W) coil maps (ESPIRiT: unit norm over coils inside the object).
        y: complex (C, H, W) measured k-space on the same grid.
        acs: Centred fully sampled columns of ``y``.

    Returns:
        A :class:`MapCheck`: the object is where the calibration image's RSS exceeds
        :data:`OBJECT_FRACTION` of its 99th percentile; coverage and SENSE residual there.
    """
    m = calibration_image(np.asarray(y), acs)
    rss = np.sqrt(np.sum(np.abs(m) ** 2, axis=0))
    obj = rss > OBJECT_FRACTION * max(float(np.percentile(rss, 99)), 1e-30)
    if not obj.any():
        return MapCheck(int(acs), 0.0, 1.0)
    norm2 = np.sum(np.abs(maps) ** 2, axis=0)
    coverage = float(np.mean(norm2[obj] > 0.5))
    proj = np.zeros(norm2.shape, dtype=np.complex128)
    np.divide(np.sum(np.conj(maps) * m, axis=0), norm2, out=proj, where=norm2 > 0)
    resid = m - maps * proj[None]
    residual = float(np.sum(np.abs(resid[:, obj]) ** 2) / max(np.sum(np.abs(m[:, obj]) ** 2), 1e-30))
    return MapCheck(int(acs), coverage, min(residual, 1.0))


def calibration_maps(
    y: np.ndarray,
    mask: np.ndarray,
    espirit: EspiritParams | None = None,
    *,
    path: str | PathLike[str] | None = None,
    where: str = "",
    check: bool = True,
) -> tuple[np.ndarray, MapCheck]:
    """ESPIRiT maps from the calibration region of measured k-space, checked.

    Args:
        y: complex (C, H, W) undersampled k-space (unsampled columns zero).
        mask: bool (W,) its phase-encode mask.
        espirit: ESPIRiT parameters (``calib_size`` is capped at the ACS width).
        path: The data file, named in errors.
        where: Where in the file, named in errors (e.g. ``"slice 3"``).
        check: Raise when :func:`check_maps` fails (``False``: return the check only).

    Returns:
        ``(maps, check)``: complex64 (C, H, W) maps and their :class:`MapCheck`.

    Raises:
        DataFileError: The ACS block is narrower than :data:`MIN_ACS_LINES`, ESPIRiT failed,
            or the maps fail the check; the message names the file, the ACS width and the fix.
    """
    espirit = espirit or EspiritParams()
    acs = acs_width(mask)
    at = f"{where}: " if where else ""
    fix = (f"Use a mask with a wider fully sampled centre (at least {MIN_ACS_LINES} lines: "
           f"mask.min_center_lines={MIN_ACS_LINES} or a larger mask.center_fraction), or coil maps "
           "estimated from fully sampled data (metamri.evaluate coil_maps=fully_sampled)")
    if acs < MIN_ACS_LINES:
        raise DataFileError(
            path, f"{at}the calibration region of the mask (ACS {acs} lines, centred) is too narrow: ESPIRiT "
            f"needs at least {MIN_ACS_LINES} for trustworthy coil maps", hint=fix)
    params = calibration_params(espirit, acs)
    try:
        maps = params.estimator()(np.ascontiguousarray(y, dtype=np.complex64))
    except (ValueError, RuntimeError) as err:  # BartError is a RuntimeError
        raise DataFileError(path, f"{at}ESPIRiT on the calibration region (ACS {acs} lines) failed ({err})",
                            hint=fix) from err
    result = check_maps(maps, y, acs)
    if check and not result.ok:
        raise DataFileError(
            path, f"{at}coil maps from the calibration region (ACS {acs} lines) are not trustworthy "
            f"(coverage {result.coverage:.3f}, SENSE residual {result.residual:.3f}; need coverage >= "
            f"{MIN_COVERAGE} and residual <= {MAX_RESIDUAL})", hint=fix)
    return maps, result


def measured_scale(y: np.ndarray, maps: np.ndarray, mask: np.ndarray, recon_size: tuple[int, int]) -> float:
    """The normalisation divisor of measured data: p99 of ``|A^H y|`` over the recon-size crop.

    The estimate of training's divisor (p99 of the fully sampled MVUE) that the measured data
    allow (see the module docstring); 1.0 for an all-zero image.

    Args:
        y: complex (C, H, W) undersampled k-space; maps: complex (C, H, W); mask: bool (W,).
        recon_size: (H, W) of the output image.
    """
    from metamri.preprocess.mvue import crop_or_pad
    from metamri.recon.baselines import zero_filled

    x_zf = zero_filled(y, maps, mask)
    return float(np.percentile(np.abs(crop_or_pad(x_zf, recon_size)), 99)) or 1.0


@dataclass(frozen=True)
class MeasuredSlice:
    """One measured slice, ready for :meth:`~metamri.evaluation.reconstructor.Reconstructor.reconstruct_kspace`.

    Attributes:
        y: complex64 (C, H, W) undersampled k-space divided by ``scale`` (normalised units),
            readout oversampling removed (``H`` = recon height).
        maps: complex64 (C, H, W) ESPIRiT maps from the calibration region.
        mask: bool (W,) phase-encode mask.
        scale: Divisor (file units per normalised unit), :func:`measured_scale`.
        recon_size: (H, W) the output is cropped to.
        check: The maps' :class:`MapCheck`.
    """

    y: np.ndarray
    maps: np.ndarray
    mask: np.ndarray
    scale: float
    recon_size: tuple[int, int]
    check: MapCheck

    @property
    def effective_acceleration(self) -> float:
        """``W / sampled columns``."""
        return self.mask.size / max(int(self.mask.sum()), 1)


def check_kspace_shape(kspace: np.ndarray, path: str | PathLike[str] | None = None, where: str = "") -> None:
    """Refuse k-space that no mask or coil-map estimate can be made for, naming the k-space.

    Args:
        kspace: complex (coils, readout, phase) as read.
        path, where: Named in errors.

    Raises:
        DataFileError: Not 3-D, no coils, an empty readout, or fewer phase-encode lines than
            the :data:`MIN_ACS_LINES` a calibration region needs (a width-1 file is the
            file's fault, not the mask's).
    """
    shape = tuple(np.shape(kspace))
    at = f"{where}: " if where else ""
    if len(shape) != 3:
        raise DataFileError(path, f"{at}expected k-space (coils, readout, phase), got shape {shape}", field="kspace")
    coils, readout, width = shape
    if coils < 1:
        raise DataFileError(path, f"{at}the k-space has no coils (shape {shape}: coils, readout, phase)",
                            field="kspace")
    if readout < 1 or width < MIN_ACS_LINES:
        raise DataFileError(path, f"{at}the k-space has {readout} readout sample(s) x {width} phase-encode line(s) "
                            f"(shape {shape}); coil maps from the calibration region need at least "
                            f"{MIN_ACS_LINES} phase-encode lines", field="kspace")


def prepare_slice(
    kspace: np.ndarray,
    mask: np.ndarray,
    recon_size: tuple[int, int],
    espirit: EspiritParams | None = None,
    *,
    path: str | PathLike[str] | None = None,
    where: str = "",
) -> MeasuredSlice:
    """Steps 1-4 of the module docstring for one slice.

    Args:
        kspace: complex (C, H0, W) k-space as read (fully sampled or already undersampled;
            it is multiplied by ``mask``).
        mask: bool-like (W,) phase-encode mask.
        recon_size: (H, W) the file's recon size (``H <= H0``).
        espirit: ESPIRiT parameters.
        path, where: Named in errors.

    Raises:
        DataFileError: The k-space has no coils or too few lines (:func:`check_kspace_shape`),
            the mask does not fit it, or the coil maps cannot be trusted.
    """
    kspace = np.asarray(kspace, dtype=np.complex64)
    check_kspace_shape(kspace, path, where)
    mask = np.asarray(mask).reshape(-1) != 0
    if mask.shape != (kspace.shape[-1],):
        raise DataFileError(path, f"{where + ': ' if where else ''}mask has shape {mask.shape}, "
                            f"k-space width is {kspace.shape[-1]}", field="mask")
    h, w = int(recon_size[0]), int(recon_size[1])
    y = crop_readout(kspace * mask[None, None, :], min(h, kspace.shape[-2])) * mask[None, None, :]
    maps, check = calibration_maps(y, mask, espirit, path=path, where=where)
    scale = measured_scale(y, maps, mask, (h, w))
    return MeasuredSlice((y / scale).astype(np.complex64), maps, mask, scale, (h, w), check)
