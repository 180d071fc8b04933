"""Cartesian undersampling masks over the phase-encode axis.

A mask function is an object that owns its random number generator, as in fastMRI's
``fastmri.data.subsample.MaskFunc``: calling it with a k-space shape (or just the
width ``W`` of the phase-encode axis, the LAST axis of this project's k-space
layout ``(coils, readout, phase)``) and a seed returns a ``bool`` array of shape
``(W,)``; ``True`` marks a sampled phase-encode line (a k-space column).

Seeding: pass the file name as ``seed`` so every slice of a volume gets the same
mask, in every process (the file name is hashed with SHA-256, never with Python's
salted ``hash()``). ``seed=None`` draws from the object's own generator.

The centre of k-space is index ``W // 2`` (the DC line after ``fftshift``, the
convention of :func:`metamri.physics.fft.fft2c`).

Mask types:

* :class:`Uniform1D` and :class:`Gaussian1D`: ContextMRI's ``uniform1d`` /
  ``gaussian1d`` (``mri/utils.py::get_mask``): a centre block of
  ``int(W * center_fraction)`` lines starting at ``W // 2 - n_center // 2``, plus
  lines drawn uniformly / with a Gaussian density centred on DC (std
  ``W * 15 / 128``). ContextMRI draws with replacement (``np.random.choice`` /
  ``np.random.normal``) and lets draws land in the centre block, so it samples
  fewer distinct lines than its budget: at W = 320, 4x, 25 centre lines plus 55
  uniform draws give about 72 distinct lines, an effective 4.47x.
  ``with_replacement=True`` reproduces that (the paper's setting, and the default of
  ``conf/mask/uniform1d.yaml``); ``False`` draws distinct lines outside the centre
  until exactly ``W // acceleration`` lines are sampled.
* :class:`RandomMask` and :class:`EquispacedFractionMask`: fastMRI's
  ``RandomMaskFunc`` / ``EquispacedMaskFractionFunc`` with one
  (acceleration, centre fraction) pair. They draw from ``np.random.RandomState``
  exactly as fastMRI does, so for the same integer seed the masks are identical;
  a ``str`` seed (a file name) is turned into ``tuple(map(ord, fname))``, the seed
  fastMRI's data transforms use, so file-seeded masks equal fastMRI's too.
* :class:`FileMask`: the mask stored in a (test) data file.

Centre lines: ``min_center_lines`` (default 0, off) raises the centre block to at least
that many lines. Coil maps estimated from the calibration region need a minimum
number of centre lines (:data:`metamri.preprocess.measured.MIN_ACS_LINES`); at the
phantom's 64 columns an 8% centre is only 5 lines, while at fastMRI's 320 it is 25,
so the configs (``conf/mask/*.yaml``) set ``min_center_lines: 8``, which changes
nothing at fastMRI widths (8% of W >= 8 for W >= 100).

Every mask function reports what it is (:meth:`MaskFunc.describe`) and a drawn mask
its effective acceleration (:func:`effective_acceleration`: ``W / sampled columns``),
which every result states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from metamri.errors import ConfigError

Shape = int | Sequence[int]
Seed = int | str | None


def seed_from_fname(fname: str) -> int:
    """A 32-bit seed from a file name, identical in every process and Python run.

    The first four bytes (little-endian) of the SHA-256 digest of the UTF-8 name:
    stable by specification, unlike Python's per-process salted ``hash()``, and
    names that differ in one character give unrelated seeds.

    Args:
        fname: File name, e.g. ``"file_brain_AXT2_200_2000019.h5"``.

    Returns:
        An integer in ``[0, 2**32)``.
    """
    return int.from_bytes(hashlib.sha256(fname.encode("utf-8")).digest()[:4], "little")


def effective_acceleration(mask: np.ndarray) -> float:
    """``W / sampled columns`` of a (W,) mask (``inf`` when nothing is sampled)."""
    mask = np.asarray(mask).reshape(-1) != 0
    n = int(mask.sum())
    return float(mask.size / n) if n else float("inf")


def describe_mask(mask) -> str:
    """One line naming a mask function and its parameters, e.g.
    ``"Uniform1D(acceleration=4, center_fraction=0.08, with_replacement=True, min_center_lines=8)"``."""
    if not hasattr(mask, "describe"):
        return repr(mask)
    params = dict(mask.describe())
    name = params.pop("type")
    return f"{name}({', '.join(f'{k}={_fmt(v)}' for k, v in params.items())})"


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _width(shape: Shape) -> int:
    """Width of the phase-encode axis: an int, or the last entry of a shape."""
    if isinstance(shape, int | np.integer):
        width = int(shape)
    else:
        if len(shape) == 0:
            raise ValueError("mask shape is empty; expected (..., H, W) or the width W")
        width = int(shape[-1])
    if width < 1:
        raise ValueError(f"mask width must be positive, got {width} (from shape {shape!r})")
    return width


class MaskFunc:
    """Base class: a 1-D phase-encode mask with a fully sampled centre block.

    Args:
        acceleration: Undersampling factor R >= 1; about ``W / R`` lines are sampled.
        center_fraction: Fraction of ``W`` sampled as a contiguous block around DC,
            in (0, 1), with ``center_fraction * acceleration < 1`` (the block must
            fit inside the line budget).
        seed: Seed of the object's own generator, used when called with ``seed=None``.
        min_center_lines: The centre block has at least this many lines (0: the
            fraction alone decides, as ContextMRI and fastMRI do).

    Raises:
        ConfigError: ``acceleration < 1``, ``center_fraction`` outside the range or a
            negative ``min_center_lines``, naming the config key (``mask.<key>``).
    """

    def __init__(
        self, acceleration: float = 4, center_fraction: float = 0.08, seed: int | None = None,
        min_center_lines: int = 0,
    ) -> None:
        try:
            acceleration = float(acceleration)
        except (TypeError, ValueError):
            raise ConfigError("mask.acceleration", acceleration, "not a number") from None
        if not np.isfinite(acceleration) or acceleration < 1:
            raise ConfigError(
                "mask.acceleration", acceleration, "must be a finite number >= 1",
                hint="1 samples every line, 4 samples a quarter of them",
            )
        try:
            center_fraction = float(center_fraction)
        except (TypeError, ValueError):
            raise ConfigError("mask.center_fraction", center_fraction, "not a number") from None
        if not 0 < center_fraction < 1:
            raise ConfigError("mask.center_fraction", center_fraction, "must lie in (0, 1)")
        if center_fraction * acceleration >= 1 and acceleration > 1:
            raise ConfigError(
                "mask.center_fraction", center_fraction,
                f"the centre block alone exceeds the line budget 1/acceleration = {1 / acceleration:.4g}",
            )
        if isinstance(min_center_lines, bool) or not (
            isinstance(min_center_lines, int | np.integer) and min_center_lines >= 0
        ):
            raise ConfigError("mask.min_center_lines", min_center_lines, "must be an integer >= 0")
        self.acceleration = acceleration
        self.center_fraction = center_fraction
        self.min_center_lines = int(min_center_lines)
        self.rng = self._make_rng(seed)

    # -- randomness ---------------------------------------------------------------------------

    def _make_rng(self, seed):
        return np.random.default_rng(seed)

    def _seed_from_fname(self, fname: str):
        return seed_from_fname(fname)

    def _rng_for(self, seed: Seed):
        """The generator to draw from: the own one for ``None``, else a fresh seeded one."""
        if seed is None:
            return self.rng
        if isinstance(seed, str):
            seed = self._seed_from_fname(seed)
        return self._make_rng(seed)

    # -- the mask -----------------------------------------------------------------------------

    def __call__(self, shape: Shape, seed: Seed = None) -> np.ndarray:
        """Draw a mask.

        Args:
            shape: k-space shape ``(..., H, W)`` or the width ``W``.
            seed: ``int``, a file name (``str``), or ``None`` for the own generator.

        Returns:
            bool array ``(W,)``, ``True`` where a phase-encode line is sampled.
        """
        width = _width(shape)
        mask = self.sample(width, self._rng_for(seed))
        return np.asarray(mask, dtype=bool)

    def sample(self, width: int, rng) -> np.ndarray:
        """Draw a ``(width,)`` bool mask with ``rng``. Subclasses implement this."""
        raise NotImplementedError

    def describe(self) -> dict:
        """``{"type": class name, <parameter>: value, ...}``: what results record of the mask."""
        out = {"type": type(self).__name__, "acceleration": self.acceleration,
               "center_fraction": self.center_fraction}
        out.update(self._extra_params())
        out["min_center_lines"] = self.min_center_lines
        return out

    def _extra_params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return describe_mask(self)


class _ContextMRIMask(MaskFunc):
    """Shared parts of ContextMRI's 1-D masks (centre block, line budget)."""

    def __init__(
        self,
        acceleration: float = 4,
        center_fraction: float = 0.08,
        seed: int | None = None,
        with_replacement: bool = False,
        min_center_lines: int = 0,
    ) -> None:
        super().__init__(acceleration, center_fraction, seed, min_center_lines)
        self.with_replacement = bool(with_replacement)

    def _extra_params(self) -> dict:
        return {"with_replacement": self.with_replacement}

    def center_block(self, width: int) -> np.ndarray:
        """``max(int(W * cf), min_center_lines)`` lines starting at ``W // 2 - n // 2``
        (ContextMRI's ACS block)."""
        n_center = min(max(int(width * self.center_fraction), self.min_center_lines, 1), width)
        start = width // 2 - n_center // 2
        mask = np.zeros(width, dtype=bool)
        mask[start : start + n_center] = True
        return mask

    def n_lines(self, width: int) -> int:
        """The line budget ``W // acceleration`` (ContextMRI's ``Nsamp``)."""
        return max(int(width // self.acceleration), 1)

    def outer_weights(self, width: int) -> np.ndarray:
        """Unnormalised sampling density over all ``width`` lines."""
        raise NotImplementedError

    def sample(self, width: int, rng: np.random.Generator) -> np.ndarray:
        mask = self.center_block(width)
        if self.with_replacement:
            mask[self.draw_with_replacement(width, rng)] = True
            return mask
        n_extra = max(self.n_lines(width) - int(mask.sum()), 0)
        candidates = np.flatnonzero(~mask)
        weights = self.outer_weights(width)[candidates]
        n_extra = min(n_extra, int(np.count_nonzero(weights)))
        if n_extra:
            picked = rng.choice(candidates, size=n_extra, replace=False, p=weights / weights.sum())
            mask[picked] = True
        return mask

    def draw_with_replacement(self, width: int, rng: np.random.Generator) -> np.ndarray:
        """ContextMRI's draw: line indices, repeats and centre hits allowed."""
        raise NotImplementedError


class Uniform1D(_ContextMRIMask):
    """ContextMRI's ``uniform1d``: a centre block plus lines drawn uniformly at random.

    Exactly ``W // acceleration`` distinct lines are sampled (the centre block of
    ``int(W * center_fraction)`` lines plus distinct uniformly drawn outer lines).
    With ``with_replacement=True``, ``W // R - n_center`` draws over all ``W`` lines
    with replacement, as ContextMRI's ``get_mask`` does (fewer distinct lines).

    Example:
        >>> m = Uniform1D(acceleration=4, center_fraction=0.08)(320, seed="file1.h5")
        >>> int(m.sum()), bool(m[160])
        (80, True)
    """

    def outer_weights(self, width: int) -> np.ndarray:
        return np.ones(width)

    def draw_with_replacement(self, width: int, rng: np.random.Generator) -> np.ndarray:
        n_center = int(self.center_block(width).sum())
        return rng.integers(0, width, size=max(self.n_lines(width) - n_center, 0))


class Gaussian1D(_ContextMRIMask):
    """ContextMRI's ``gaussian1d``: a centre block plus lines drawn with a Gaussian density.

    The density over line index ``k`` is ``exp(-(k - W//2)^2 / (2 sigma^2))`` with
    ``sigma = W * std_fraction`` (ContextMRI: ``15 / 128``, i.e. 37.5 lines at W = 320).
    By default distinct outer lines are drawn with that density until exactly
    ``W // acceleration`` lines are sampled. With ``with_replacement=True``,
    ``int(1.2 * W // R)`` normal draws truncated to integers and clipped to
    ``[0, W - 1]``, as ContextMRI's ``get_mask`` does.

    Args:
        std_fraction: Standard deviation of the density as a fraction of ``W``.
    """

    def __init__(
        self,
        acceleration: float = 4,
        center_fraction: float = 0.08,
        seed: int | None = None,
        with_replacement: bool = False,
        std_fraction: float = 15.0 / 128.0,
        min_center_lines: int = 0,
    ) -> None:
        super().__init__(acceleration, center_fraction, seed, with_replacement, min_center_lines)
        if not std_fraction > 0:
            raise ConfigError("mask.std_fraction", std_fraction, "must be positive")
        self.std_fraction = float(std_fraction)

    def _extra_params(self) -> dict:
        return {**super()._extra_params(), "std_fraction": self.std_fraction}

    def outer_weights(self, width: int) -> np.ndarray:
        k = np.arange(width) - width // 2
        return np.exp(-0.5 * (k / (self.std_fraction * width)) ** 2)

    def draw_with_replacement(self, width: int, rng: np.random.Generator) -> np.ndarray:
        draws = rng.normal(loc=width // 2, scale=self.std_fraction * width,
                           size=int(self.n_lines(width) * 1.2))
        return np.clip(draws.astype(int), 0, width - 1)


class _FastMRIMask(MaskFunc):
    """fastMRI's RNG scheme: ``np.random.RandomState``; file names seed as ``tuple(map(ord, fname))``."""

    def _make_rng(self, seed):
        return np.random.RandomState(seed)

    def _seed_from_fname(self, fname: str):
        return tuple(map(ord, fname))  # fastmri.data.transforms (use_seed=True)

    def n_center(self, width: int) -> int:
        """``round(W * center_fraction)`` low-frequency lines (fastMRI), at least ``min_center_lines``."""
        return min(max(round(width * self.center_fraction), self.min_center_lines), width)

    def center_block(self, width: int) -> np.ndarray:
        """fastMRI's centre block: ``n`` lines from ``(W - n + 1) // 2``."""
        n = self.n_center(width)
        mask = np.zeros(width, dtype=bool)
        start = (width - n + 1) // 2
        mask[start : start + n] = True
        return mask


class RandomMask(_FastMRIMask):
    """fastMRI's ``RandomMaskFunc``: centre block plus i.i.d. Bernoulli outer lines.

    Each line is kept with probability ``p = (W / R - n_c) / (W - n_c)`` (centre
    lines always), so the expected number of lines is ``W / R``. Bit-identical to
    ``RandomMaskFunc([cf], [R])`` for the same seed.
    """

    def sample(self, width: int, rng: np.random.RandomState) -> np.ndarray:
        n_c = self.n_center(width)
        if n_c >= width:
            return np.ones(width, dtype=bool)
        prob = (width / self.acceleration - n_c) / (width - n_c)
        return self.center_block(width) | (rng.uniform(size=width) < prob)


class EquispacedFractionMask(_FastMRIMask):
    """fastMRI's ``EquispacedMaskFractionFunc``: centre block plus (nearly) equispaced lines.

    The spacing ``R' = R (n_c - W) / (n_c R - W)`` is chosen so that about ``W / R``
    lines are sampled in total; positions ``round(offset + j R')`` for
    ``offset`` drawn in ``[0, round(R'))``. As in fastMRI, rounding can make the
    spacing uneven (fastMRI issue #54). Bit-identical to
    ``EquispacedMaskFractionFunc([cf], [R])`` for the same seed.

    Args:
        offset: Fixed offset of the first outer line (``None``: random, as fastMRI).
    """

    def __init__(
        self,
        acceleration: float = 4,
        center_fraction: float = 0.08,
        seed: int | None = None,
        offset: int | None = None,
        min_center_lines: int = 0,
    ) -> None:
        super().__init__(acceleration, center_fraction, seed, min_center_lines)
        self.offset = offset

    def _extra_params(self) -> dict:
        return {} if self.offset is None else {"offset": self.offset}

    def sample(self, width: int, rng: np.random.RandomState) -> np.ndarray:
        n_c = self.n_center(width)
        if self.acceleration == 1 or n_c >= width:
            return np.ones(width, dtype=bool)
        denominator = n_c * self.acceleration - width
        if denominator >= 0:
            raise ValueError(
                f"EquispacedFractionMask: {n_c} centre lines of width {width} exceed the budget "
                f"W / R = {width / self.acceleration:.4g}; lower mask.center_fraction"
            )
        spacing = self.acceleration * (n_c - width) / denominator
        offset = self.offset if self.offset is not None else rng.randint(0, high=round(spacing))
        outer = np.zeros(width, dtype=bool)
        outer[np.around(np.arange(offset, width - 1, spacing)).astype(np.uint)] = True
        return self.center_block(width) | outer


class FileMask:
    """The sampling mask stored in a data file (e.g. fastMRI test files' ``mask``).

    Args:
        mask: bool-like ``(W,)`` array (non-zero = sampled).

    Calling it returns that mask whatever the seed; the width must match.
    """

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask)
        if mask.ndim != 1 or mask.size == 0:
            raise ValueError(f"FileMask expects a non-empty 1-D (W,) mask, got shape {mask.shape}")
        self.mask = mask != 0

    @property
    def acceleration(self) -> float:
        """``W / number of sampled lines``."""
        return self.mask.size / max(int(self.mask.sum()), 1)

    def describe(self) -> dict:
        """``{"type": "FileMask", "width": W, "acceleration": W / sampled}``."""
        return {"type": "FileMask", "width": int(self.mask.size), "acceleration": self.acceleration}

    def __call__(self, shape: Shape, seed: Seed = None) -> np.ndarray:
        width = _width(shape)
        if width != self.mask.size:
            raise ValueError(f"FileMask has width {self.mask.size}, k-space has width {width}")
        return self.mask.copy()

    def __repr__(self) -> str:
        return f"FileMask(width={self.mask.size}, acceleration={self.acceleration:.3g})"
