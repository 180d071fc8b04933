"""ESPIRiT coil sensitivity maps from fully sampled k-space, through BART or sigpy.

ESPIRiT (Uecker et al., MRM 71:990, 2014) is not re-implemented here: two
backends call the reference implementations with the same parameters so that
their maps agree (a test checks it):

* :class:`BartEspirit` runs ``bart ecalib -m1 -r <calib> -k <kernel> -t <threshold**2> -c <crop>``
  (the BART command line, see :mod:`metamri.bart`).
* :class:`SigpyEspirit` runs ``sigpy.mri.app.EspiritCalib(kspace, calib_width=<calib>,
  kernel_width=<kernel>, thresh=<threshold>, crop=<crop>)``.

Parameters: one frozen :class:`EspiritParams` (``backend``, ``calib_size``,
``kernel_size``, ``threshold``, ``crop``) carries them, with its defaults written
once, there; ``conf/espirit/default.yaml`` instantiates it for the command lines
(``python -m metamri.preprocess``, ``metamri.evaluate``, ``metamri.reconstruct``).
The defaults are sigpy's, which also serve ContextMRI-style pipelines:

* ``calib_size = 24``: side of the central (calib x calib) k-space block used
  for calibration (BART ``-r``, sigpy ``calib_width``). The data are fully
  sampled here, so BART's auto-detected region is exactly this block. Measured
  (undersampled) data calibrate on their fully sampled centre instead:
  :mod:`metamri.preprocess.measured` caps the block at the ACS width and refuses
  ACS blocks too narrow for trustworthy maps.
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
* ``backend = "auto"``: BART when ``bart`` is on PATH, else sigpy.

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

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
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


def _check_params(calib_size: Any, kernel_size: Any, threshold: Any, crop: Any, key: str = "espirit") -> None:
    """Raise :class:`ConfigError` (naming ``<key>.<field>``) on invalid ESPIRiT parameters."""
    if isinstance(calib_size, bool) or not (isinstance(calib_size, int | np.integer) and calib_size >= 2):
        raise ConfigError(f"{key}.calib_size", calib_size, "must be an integer >= 2")
    if isinstance(kernel_size, bool) or not (
        isinstance(kernel_size, int | np.integer) and 1 <= kernel_size <= calib_size
    ):
        raise ConfigError(
            f"{key}.kernel_size", kernel_size, f"must be an integer in [1, calib_size={calib_size}]"
        )
    if not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"{key}.threshold", threshold, "must lie in (0, 1)")
    if not 0.0 <= float(crop) < 1.0:
        raise ConfigError(f"{key}.crop", crop, "must lie in [0, 1)")


@dataclass(frozen=True)
class EspiritParams:
    """ESPIRiT settings, the one place their defaults are written.

    ``conf/espirit/default.yaml`` instantiates this class (``_target_``), and every
    caller (preprocessing, ``metamri.evaluate``, ``metamri.reconstruct``) takes one.

    Attributes:
        backend: ``"auto"`` (BART when ``bart`` is on PATH, else sigpy), ``"bart"`` or ``"sigpy"``.
        calib_size: Side of the central calibration block, k-space samples (BART ``-r``,
            sigpy ``calib_width``).
        kernel_size: Side of the calibration kernel, k-space samples (BART ``-k``,
            sigpy ``kernel_width``); at most ``calib_size``.
        threshold: Relative singular-value threshold in (0, 1), sigpy's convention
            (BART gets ``threshold**2``).
        crop: Maps are zeroed where the ESPIRiT eigenvalue is <= ``crop``, in [0, 1).

    Raises:
        ConfigError: A value outside its range, naming ``espirit.<field>``.

    Example:
        >>> p = EspiritParams(backend="sigpy", calib_size=16)
        >>> p.replace(kernel_size=4).kernel_size
        4
    """

    backend: str = "auto"
    calib_size: int = 24
    kernel_size: int = 6
    threshold: float = 0.02
    crop: float = 0.95

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError("espirit.backend", self.backend, f"unknown ESPIRiT backend; choose one of {BACKENDS}")
        _check_params(self.calib_size, self.kernel_size, self.threshold, self.crop)
        object.__setattr__(self, "calib_size", int(self.calib_size))
        object.__setattr__(self, "kernel_size", int(self.kernel_size))
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "crop", float(self.crop))

    @classmethod
    def from_config(cls, cfg: Any = None) -> EspiritParams:
        """``cfg`` as parameters: an :class:`EspiritParams`, a mapping (a Hydra node, its
        ``_target_`` ignored) of some of the fields, or ``None`` (the defaults).

        Raises:
            ConfigError: An unknown key (``espirit.<key>``) or an invalid value.
        """
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        try:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(cfg):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf ships with hydra
            pass
        items = {k: v for k, v in dict(cfg).items() if k != "_target_"}
        known = {f.name for f in fields(cls)}
        for key in items:
            if key not in known:
                raise ConfigError(f"espirit.{key}", items[key], "unknown ESPIRiT parameter",
                                  hint=f"known: {sorted(known)}")
        return cls(**items)

    def replace(self, **changes: Any) -> EspiritParams:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> EspiritParams:
        """A copy with ``backend`` resolved (``"auto"`` -> ``"bart"`` / ``"sigpy"``)."""
        return self.replace(backend=resolve_backend(self.backend))

    def to_dict(self) -> dict[str, Any]:
        """The five fields as a JSON-ready dict."""
        return asdict(self)

    def estimator(self, **extras: Any) -> EspiritEstimator:
        """The estimator of these parameters (backend resolved).

        Args:
            **extras: ``align`` and backend extras (``threads`` for BART, ``max_iter`` for sigpy).
        """
        cls = {"bart": BartEspirit, "sigpy": SigpyEspirit}[resolve_backend(self.backend)]
        return cls(calib_size=self.calib_size, threshold=self.threshold, kernel_size=self.kernel_size,
                   crop=self.crop, **extras)


#: The defaults, for the estimators' own fields.
_DEFAULT = EspiritParams()


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

    calib_size: int = _DEFAULT.calib_size
    threshold: float = _DEFAULT.threshold
    kernel_size: int = _DEFAULT.kernel_size
    crop: float = _DEFAULT.crop
    align: bool = True

    name: ClassVar[str]

    def __post_init__(self) -> None:
        _check_params(self.calib_size, self.kernel_size, self.threshold, self.crop)

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


def make_estimator(backend: Backend | EspiritParams = "auto", **params: Any) -> EspiritEstimator:
    """The estimator of ``backend`` (``"auto"`` resolved) with ``params``.

    Args:
        backend: ``"auto"`` (BART when installed, else sigpy), ``"bart"`` or ``"sigpy"``;
            or an :class:`EspiritParams` (then ``params`` holds only extras).
        **params: ``calib_size``, ``threshold``, ``kernel_size``, ``crop``, ``align``
            and backend extras (``threads`` for BART, ``max_iter`` for sigpy); those
            not given take :class:`EspiritParams`' defaults.
    """
    if isinstance(backend, EspiritParams):
        return backend.estimator(**params)
    cls = {"bart": BartEspirit, "sigpy": SigpyEspirit}[resolve_backend(backend)]
    return cls(**params)


def estimate_maps(kspace: np.ndarray, params: EspiritParams | None = None, **overrides: Any) -> np.ndarray:
    """ESPIRiT maps of one slice (see the module docstring for the parameters).

    Args:
        kspace: complex (coils, readout, phase) k-space, fully sampled at least in
            the central calibration block.
        params: The parameters (default :class:`EspiritParams`).
        **overrides: Fields of :class:`EspiritParams` replaced, e.g. ``backend="bart"``.

    Returns:
        complex64 (coils, readout, phase) maps in the common phase convention.
    """
    params = (params or _DEFAULT).replace(**overrides) if overrides else (params or _DEFAULT)
    return params.estimator()(kspace)


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
    if kspace.shape[0] < 1:
        raise ValueError(f"the k-space has no coils (shape {kspace.shape}: coils, readout, phase)")
    if min(kspace.shape[1:]) < calib_size:
        raise ValueError(
            f"k-space {kspace.shape[1:]} is smaller than the calibration block ({calib_size} x {calib_size})"
        )
    if not np.isfinite(kspace).all():
        raise ValueError("k-space holds NaN or inf")
    return np.ascontiguousarray(kspace, dtype=np.complex64)

