"""ESPIRiT coil sensitivity maps from fully sampled k-space, through BART or sigpy.

ESPIRiT (Uecker et al., MRM 71:990, 2014) is not re-implemented here: two
backends call the reference implementations with the same parameters so that
their maps agree (a test checks it):

* :class:`BartEspirit` runs ``bart ecalib -m1 -r <calib> -k <kernel> -t <threshold**2> -c <crop>``
  (the BART command line, see :mod:`metamri.bart`).
* :class:`SigpyEspirit` runs ``sigpy.mri.app.EspiritCalib(kspace, calib_width=<calib>,
  kernel_width=<kernel>, thresh=<threshold>, crop=<crop>)``.

Parameters (defaults are sigpy's, which also serve ContextMRI-style pipelines):

* ``calib_size = 24``: side of the central (calib x calib) k-space block used
  for calibration (BART ``-r``, sigpy ``calib_width``). The data are fully
  sampled here, so BART's auto-detected region is exactly this block.
* ``kernel_size = 6``: side of the k-space kernel (BART ``-k``, sigpy ``kernel_width``).
* ``threshold = 0.02``: singular vectors of the calibration matrix whose singular
  value exceeds ``threshold * sigma_max`` span the signal subspace (sigpy's
  ``thresh``). BART compares ``sigma / sigma_max`` with ``sqrt(t)`` (its ``-t``
  acts on squared singular values), so BART is called with ``-t threshold**2``;
  passing the same number to both would keep fewer kernels in BART and lower its
  eigenvalues.
* ``crop = 0.95``: maps are set to zero where the ESPIRiT eigenvalue (<= 1, the
  same quantity in both tools) is at or below ``crop``: outside the object, so
  the MVUE there is zero.

Phase convention. ESPIRiT defines each pixel's map only up to a phase
``S(r) e^{i phi(r)}``, and the tools fix it differently (sigpy: coil 0 real;
BART: a rotation from its coil compression). The MVUE inherits that phase
(``mvue -> mvue e^{-i phi}``), so both backends are brought to one convention
after estimation (:func:`align_phase`): the *virtual body coil*
``v(r) = u^H S(r)``, with ``u`` the dominant left singular vector of the
(coils x samples) calibration data, is made real and non-negative at every
pixel. Maps from the two backends then agree element-wise, not only up to a
per-pixel phase, and the MVUE's phase is that of the (smooth) virtual coil image.

Layout: k-space and maps are (coils, readout, phase) complex64, as
:class:`~metamri.data.sample.KSpaceSlice`; maps are unit-norm over coils inside
the object and zero where cropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from metamri.bart import bart_available, run_bart
from metamri.errors import ConfigError
from metamri.physics.fft import center_crop

Backend = Literal["auto", "bart", "sigpy"]
BACKENDS: tuple[str, ...] = ("auto", "bart", "sigpy")


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"bart"`` when ``bart`` is on PATH, else ``"sigpy"``; others unchanged.

    Raises:
        ConfigError: Unknown backend, or ``"bart"`` asked for but not installed.
    """
    if backend not in BACKENDS:
        raise ConfigError("espirit.backend", backend, f"unknown ESPIRiT backend; choose one of {BACKENDS}")
    if backend == "auto":
        return "bart" if bart_available() else "sigpy"
    if backend == "bart" and not bart_available():
        raise ConfigError(
            "espirit.backend", backend, "the BART command `bart` is not on PATH",
            hint="install it (Debian: apt-get install bart) or use espirit.backend=sigpy",
        )
    return backend


@dataclass(frozen=True)
class EspiritEstimator(ABC):
    """ESPIRiT calibration with fixed parameters; call it on one slice's k-space.

    Attributes:
        calib_size: Side of the central calibration block, k-space samples.
        threshold: Relative singular-value threshold (sigpy convention).
        kernel_size: Side of the calibration kernel, k-space samples.
        crop: Eigenvalue below which maps are zeroed, in [0, 1).
        align: Apply :func:`align_phase` (the common phase convention).
    """

    calib_size: int = 24
    threshold: float = 0.02
    kernel_size: int = 6
    crop: float = 0.95
    align: bool = True

    name: ClassVar[str]

    def __post_init__(self) -> None:
        if not (isinstance(self.calib_size, int | np.integer) and self.calib_size >= 2):
            raise ConfigError("espirit.calib_size", self.calib_size, "must be an integer >= 2")
        if not (isinstance(self.kernel_size, int | np.integer) and 1 <= self.kernel_size <= self.calib_size):
            raise ConfigError(
                "espirit.kernel_size", self.kernel_size, f"must be an integer in [1, calib_size={self.calib_size}]"
            )
        if not 0.0 < float(self.threshold) < 1.0:
            raise ConfigError("espirit.threshold", self.threshold, "must lie in (0, 1)")
        if not 0.0 <= float(self.crop) < 1.0:
            raise ConfigError("espirit.crop", self.crop, "must lie in [0, 1)")

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters, with the backend name (stored in the cache)."""
        return {"backend": self.name, **asdict(self)}

    def __call__(self, kspace: np.ndarray) -> np.ndarray:
        """Estimate maps for one slice.

        Args:
            kspace: complex (coils, readout, phase), fully sampled at least in
                the central calibration block.

        Returns:
            complex64 (coils, readout, phase) maps.
        """
        kspace = _check_kspace(kspace, self.calib_size)
        maps = self._estimate(kspace).astype(np.complex64, copy=False)
        if maps.shape != kspace.shape:  # pragma: no cover - a backend contract violation
            raise RuntimeError(f"{self.name} ESPIRiT returned maps of shape {maps.shape}, expected {kspace.shape}")
        return align_phase(maps, kspace, self.calib_size) if self.align else maps

    @abstractmethod
    def _estimate(self, kspace: np.ndarray) -> np.ndarray:
        """Backend call: complex64 (coils, readout, phase) -> maps of the same shape."""


@dataclass(frozen=True)
class BartEspirit(EspiritEstimator):
    """ESPIRiT through ``bart ecalib`` (one map, hard crop).

    Attributes:
        threads: ``OMP_NUM_THREADS`` for BART (``None``: inherit the environment).
    """

    threads: int | None = None
    name: ClassVar[str] = "bart"

    def params(self) -> dict[str, Any]:
        out = super().params()
        out.pop("threads")  # does not change the result
        return out

    def _estimate(self, kspace: np.ndarray) -> np.ndarray:
        # ours: (coils, readout, phase) -> BART: (readout, phase, z=1, coils)
        bart_kspace = kspace.transpose(1, 2, 0)[:, :, None, :]
        args = [
            "ecalib", "-m1",
            "-r", str(int(self.calib_size)),
            "-k", str(int(self.kernel_size)),
            "-t", repr(float(self.threshold) ** 2),  # BART thresholds sigma/sigma_max at sqrt(t)
            "-c", repr(float(self.crop)),
        ]
        env = None if self.threads is None else {"OMP_NUM_THREADS": str(int(self.threads))}
        (maps,) = run_bart(args, [bart_kspace], 1, env=env)
        coils, nx, ny = kspace.shape
        return maps.reshape(nx, ny, coils).transpose(2, 0, 1)


@dataclass(frozen=True)
class SigpyEspirit(EspiritEstimator):
    """ESPIRiT through ``sigpy.mri.app.EspiritCalib`` (CPU, power iteration).

    Attributes:
        max_iter: Power-method iterations per pixel (sigpy's default, 100).
    """

    max_iter: int = 100
    name: ClassVar[str] = "sigpy"

    def _estimate(self, kspace: np.ndarray) -> np.ndarray:
        from sigpy.mri.app import EspiritCalib

        return np.asarray(
            EspiritCalib(
                kspace,
                calib_width=int(self.calib_size),
                thresh=float(self.threshold),
                kernel_width=int(self.kernel_size),
                crop=float(self.crop),
                max_iter=int(self.max_iter),
                show_pbar=False,
            ).run()
        )


def make_estimator(backend: Backend = "auto", **params: Any) -> EspiritEstimator:
    """The estimator of ``backend`` (``"auto"`` resolved) with ``params``.

    Args:
        backend: ``"auto"`` (BART when installed, else sigpy), ``"bart"`` or ``"sigpy"``.
        **params: ``calib_size``, ``threshold``, ``kernel_size``, ``crop``, ``align``
            and backend extras (``threads`` for BART, ``max_iter`` for sigpy).
    """
    cls = {"bart": BartEspirit, "sigpy": SigpyEspirit}[resolve_backend(backend)]
    return cls(**params)


def estimate_maps(
    kspace: np.ndarray,
    *,
    backend: Backend = "auto",
    calib_size: int = 24,
    threshold: float = 0.02,
    kernel_size: int = 6,
    crop: float = 0.95,
) -> np.ndarray:
    """ESPIRiT maps of one slice (see the module docstring for the parameters).

    Args:
        kspace: complex (coils, readout, phase) fully sampled k-space.
        backend: ``"auto"`` | ``"bart"`` | ``"sigpy"``.

    Returns:
        complex64 (coils, readout, phase) maps in the common phase convention.
    """
    estimator = make_estimator(
        backend, calib_size=calib_size, threshold=threshold, kernel_size=kernel_size, crop=crop
    )
    return estimator(kspace)


def virtual_coil(kspace: np.ndarray, calib_size: int) -> np.ndarray:
    """The dominant coil combination ``u`` of the calibration data.

    Args:
        kspace: complex (coils, readout, phase).
        calib_size: Side of the central calibration block.

    Returns:
        complex (coils,) unit vector: the first left singular vector of the
        (coils x calib_size**2) calibration matrix, its largest entry made real
        and positive (so the result does not depend on the SVD's sign choice).
    """
    calib = center_crop(kspace, (calib_size, calib_size)).reshape(kspace.shape[0], -1)
    u = np.linalg.svd(calib.astype(np.complex128), full_matrices=False)[0][:, 0]
    k = int(np.argmax(np.abs(u)))
    return u * np.conj(u[k]) / np.abs(u[k])


def align_phase(maps: np.ndarray, kspace: np.ndarray, calib_size: int) -> np.ndarray:
    """Rotate each pixel's map so that the virtual body coil ``u^H S(r)`` is real and >= 0.

    Args:
        maps: complex (coils, readout, phase).
        kspace: complex (coils, readout, phase) the maps were estimated from.
        calib_size: Side of the calibration block (defines ``u``, see :func:`virtual_coil`).

    Returns:
        complex64 maps ``S(r) * conj(v(r)) / |v(r)|`` with ``v = u^H S``; pixels
        where ``v = 0`` (cropped) are left as they are.
    """
    u = virtual_coil(kspace, calib_size)
    v = np.tensordot(np.conj(u), maps, axes=(0, 0))  # (readout, phase)
    mag = np.abs(v)
    rot = np.ones_like(v)
    np.divide(np.conj(v), mag, out=rot, where=mag > 0)
    return (maps * rot[None]).astype(np.complex64)


def map_agreement(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """Per-pixel |<S_a, S_b>| / (||S_a|| ||S_b||) over coils: 1 where the maps agree up to phase.

    Args:
        maps_a, maps_b: complex (coils, H, W).

    Returns:
        float (H, W) in [0, 1]; 0 where either map is zero.
    """
    num = np.abs(np.sum(maps_a * np.conj(maps_b), axis=0))
    den = np.linalg.norm(maps_a, axis=0) * np.linalg.norm(maps_b, axis=0)
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _check_kspace(kspace: np.ndarray, calib_size: int) -> np.ndarray:
    kspace = np.asarray(kspace)
    if kspace.ndim != 3 or not np.iscomplexobj(kspace):
        raise ValueError(
            f"ESPIRiT needs complex k-space of shape (coils, readout, phase), got {kspace.dtype} {kspace.shape}"
        )
    if min(kspace.shape[1:]) < calib_size:
        raise ValueError(
            f"k-space {kspace.shape[1:]} is smaller than the calibration block ({calib_size} x {calib_size})"
        )
    if not np.isfinite(kspace).all():
        raise ValueError("k-space holds NaN or inf")
    return np.ascontiguousarray(kspace, dtype=np.complex64)

