r"""Classical baselines: the zero-filled SENSE adjoint and L1-wavelet compressed sensing.

Both take this project's per-slice layout: k-space ``y`` complex ``(C, H, W)`` or
``(B, C, H, W)`` (readout ``H``, phase encode ``W`` last), maps of the same shape,
and a sampling mask broadcastable to ``(H, W)`` (usually the ``(W,)`` phase-encode
mask of :mod:`metamri.physics.masks`). They return the complex image ``(H, W)`` /
``(B, H, W)``, as NumPy if ``y`` was NumPy and as a tensor if it was a tensor.

Zero-filled: ``x_zf = A^H y = sum_c conj(S_c) F^{-1} (M y_c)``, the adjoint of
:class:`~metamri.physics.sense.SenseOperator` (orthonormal FFT). No density
compensation: with maps normalised to ``sum_c |S_c|^2 = 1`` a full mask returns
the image exactly, and an R-fold undersampled mask keeps the sampled k-space energy
(the image is NOT multiplied by R).

Compressed sensing (Lustig et al. 2007) solves

.. math::
    \hat x = \arg\min_x \tfrac12 \| M F S x - y \|_2^2 + \lambda \| \Psi x \|_1

with ``Psi`` an orthogonal wavelet transform, by

* BART: ``bart pics -l1 -r <lamda> -i <n_iter> -w 1 [-n] --wavelet <dau2|haar> -p <mask>
  <kspace> <maps> <out>`` (FISTA). ``-w 1`` turns off BART's automatic data scaling
  so that ``lamda`` means the same for both backends: it is in the units of the
  data (scale k-space so that images are O(1), as this project's preprocessing
  does by dividing by the p99 magnitude). ``-n`` (no random wavelet cycle spinning)
  is passed only with ``cycle_spinning=False``;
* sigpy: ``sigpy.mri.app.L1WaveletRecon(y, maps, lamda, weights=mask, wave_name=wavelet,
  max_iter=n_iter, alpha=1/L)`` (FISTA, PyWavelets; the step uses a bound ``L`` on
  ``||A^H A||`` rather than sigpy's randomly started power iteration, so it is
  deterministic); with ``cycle_spinning`` the same FISTA with a proximal step that shifts
  the image by a seeded random offset before thresholding (:class:`_CycleSpinningL1Wavelet`).

Defaults: the weight and cycle spinning were chosen on the phantom's validation split
(``experiments/cs_lamda_sweep.py``, table in ``docs/cs_baseline.md``): ``lamda = 1e-3``
(normalised units; the best on the measured noisy k-space, within 0.4 dB of the best on
evaluate's noiseless simulation) with cycle spinning, BART's own default, which keeps the
wavelet grid from printing blocks into the image (+0.5 dB PSNR, +0.2 SSIM there over the
best weight without it). Both backends solve (nearly) the same problem, so ``backend="auto"`` gives
about the same answer whether or not BART is installed: the Daubechies-2 wavelet
(``"db2"``, BART's ``dau2``; BART offers only ``haar``, ``dau2`` and ``cdf44``). They
still differ in details (at a large ``lamda`` with a full mask BART keeps the image's
mean and sigpy shrinks it, consistent with BART leaving the coarsest wavelet band
unthresholded; boundary handling and the shift sequences differ), so they agree to about
half a dB of PSNR, not bit for bit: on a 96x96, 8-coil Shepp-Logan phantom at 4x
(``tests/test_baselines.py``, ``lamda = 0.005``) BART gives 23.2 dB and sigpy 23.6 dB
without cycle spinning (31.9 dB against each other), 27.4 and 26.7 dB with it
(zero-filled: 16.9 dB). On a 320 x 320 phantom file the project's CS and a direct
``bart pics`` call on the same maps, mask and weight agree to 0.00 dB
(``tests/test_cs_bart.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from metamri.physics.sense import SenseOperator

BACKENDS = ("auto", "bart", "sigpy")
#: PyWavelets names BART's ``pics --wavelet`` can run, and BART's name for each.
BART_WAVELETS = {"haar": "haar", "db1": "haar", "db2": "dau2"}


def _to_torch(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


def _like(result: torch.Tensor, y):
    return result if isinstance(y, torch.Tensor) else result.detach().cpu().numpy()


def zero_filled(y, maps, mask):
    """Coil-combined zero-filled image ``A^H y`` (see module docstring for scaling).

    Args:
        y: complex k-space ``(C, H, W)`` or ``(B, C, H, W)``; unsampled entries may
            hold anything (the mask is applied).
        maps: complex sensitivity maps, ``(C, H, W)`` or ``(B, C, H, W)``.
        mask: sampling mask, ``(W,)``, ``(H, W)`` or batched (see ``SenseOperator``).

    Returns:
        complex image ``(H, W)`` for unbatched ``y``, else ``(B, H, W)``; NumPy or
        tensor like ``y``.
    """
    yt = _to_torch(y)
    batched = yt.ndim == 4
    ys = yt if batched else yt.unsqueeze(0)
    if ys.ndim != 4:
        raise ValueError(f"k-space must be (C, H, W) or (B, C, H, W), got {tuple(yt.shape)}")
    masks = torch.from_numpy(_slice_masks(_numpy(mask), ys.shape[0], tuple(ys.shape[-2:]), batched))
    op = SenseOperator(_to_torch(maps).to(ys.dtype), masks)
    image = op.A_adjoint(ys)
    return _like(image if batched else image[0], y)


def compressed_sensing(
    y,
    maps,
    mask,
    lamda: float = 0.001,
    n_iter: int = 100,
    backend: str = "auto",
    wavelet: str = "db2",
    cycle_spinning: bool = True,
):
    """L1-wavelet compressed-sensing SENSE reconstruction, slice by slice.

    Args:
        y: complex k-space ``(C, H, W)`` or ``(B, C, H, W)``.
        maps: complex maps, ``(C, H, W)`` (shared) or ``(B, C, H, W)``.
        mask: sampling mask ``(W,)`` or ``(H, W)``, or one per slice ``(B, W)`` /
            ``(B, H, W)`` for batched ``y``.
        lamda: L1 weight, in data units (see module docstring); the default 1e-3 was chosen
            on the phantom's validation split in normalised units (``docs/cs_baseline.md``).
        n_iter: iterations (FISTA) of either backend.
        backend: ``"bart"``, ``"sigpy"``, or ``"auto"`` (BART where installed).
        wavelet: PyWavelets name (any for sigpy; ``"haar"``/``"db1"`` or ``"db2"`` for BART).
        cycle_spinning: random wavelet shifts every iteration (BART's own default; sigpy:
            :class:`_CycleSpinningL1Wavelet`), seeded, so reproducible.

    Returns:
        complex64 image ``(H, W)`` or ``(B, H, W)``; NumPy or tensor like ``y``.
    """
    from metamri.bart import bart_available

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "bart" if bart_available() else "sigpy"
    if backend == "bart" and wavelet not in BART_WAVELETS:
        raise ValueError(f"BART's pics has no wavelet {wavelet!r}; use one of {sorted(BART_WAVELETS)}")
    if not lamda >= 0:
        raise ValueError(f"lamda must be >= 0, got {lamda}")
    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")

    y_np = _numpy(y)
    maps_np = _numpy(maps)
    batched = y_np.ndim == 4
    ys = y_np if batched else y_np[None]
    if ys.ndim != 4:
        raise ValueError(f"k-space must be (C, H, W) or (B, C, H, W), got {y_np.shape}")
    hw = ys.shape[-2:]
    masks = np.broadcast_to(_slice_masks(_numpy(mask), ys.shape[0], hw, batched), (ys.shape[0], *hw))
    solve = _cs_bart if backend == "bart" else _cs_sigpy
    out = []
    for b in range(ys.shape[0]):
        maps_b = maps_np[b] if maps_np.ndim == 4 else maps_np
        out.append(solve(ys[b].astype(np.complex64), maps_b.astype(np.complex64),
                         np.ascontiguousarray(masks[b], dtype=np.float32), float(lamda),
                         int(n_iter), wavelet, cycle_spinning))
    image = np.stack(out) if batched else out[0]
    return torch.from_numpy(image) if isinstance(y, torch.Tensor) else image


def _slice_masks(mask: np.ndarray, n_slices: int, hw: tuple[int, int], batched: bool) -> np.ndarray:
    """The mask as float32 ``(B | 1, H | 1, W)``: shared ``(W,)``/``(H, W)``, or per slice.

    Per-slice masks (batched k-space only) are ``(B, W)`` or ``(B, H, W)``; a 2-D
    mask of shape ``(H, W)`` is always read as shared.
    """
    mask = np.asarray(mask).astype(np.float32)
    h, w = hw
    if mask.ndim == 1 and mask.shape == (w,):
        return mask[None, None, :]
    if mask.ndim == 2 and mask.shape == (h, w):
        return mask[None]
    if batched and mask.ndim == 2 and mask.shape == (n_slices, w):
        return mask[:, None, :]
    if batched and mask.ndim == 3 and mask.shape == (n_slices, h, w):
        return mask
    raise ValueError(
        f"mask of shape {mask.shape} does not fit k-space ({n_slices} slices of {h}x{w}): "
        "expected (W,), (H, W), or per slice (B, W) / (B, H, W)"
    )


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _cs_bart(y, maps, mask_hw, lamda, n_iter, wavelet, cycle_spinning) -> np.ndarray:
    """BART ``pics`` on one slice; arrays in this project's layout, converted to BART's."""
    from metamri.bart import run_bart

    # (C, H, W) -> BART (readout, phase, z, coils) = (H, W, 1, C)
    kspace = np.transpose(y * mask_hw, (1, 2, 0))[:, :, None, :]
    sens = np.transpose(maps, (1, 2, 0))[:, :, None, :]
    pattern = mask_hw[:, :, None]
    (image,) = run_bart(
        ["pics", "-l1", "-r", repr(lamda), "-i", str(n_iter), "-w", "1",
         *([] if cycle_spinning else ["-n"]), "--wavelet", BART_WAVELETS[wavelet], "-p", "{pattern}"],
        {"pattern": pattern, "kspace": kspace, "sens": sens},
    )
    return np.ascontiguousarray(image.reshape(y.shape[-2:]), dtype=np.complex64)


def _cs_sigpy(y, maps, mask_hw, lamda, n_iter, wavelet, cycle_spinning) -> np.ndarray:
    """sigpy ``L1WaveletRecon`` on one slice (CPU), with a deterministic FISTA step.

    sigpy would estimate the step ``1 / ||A^H A||`` by power iteration from the
    global NumPy RNG, so results would depend on unrelated random draws. We pass
    ``alpha = 1 / L`` with the bound ``L = max_r sum_c |S_c(r)|^2 * max M >= ||A^H A||``
    (the FFT is unitary), which is 1 for ESPIRiT-normalised maps and a binary mask.
    With ``cycle_spinning`` the same problem is solved by sigpy's FISTA
    (``LinearLeastSquares``) with :class:`_CycleSpinningL1Wavelet` as the proximal step.
    """
    import sigpy as sp
    from sigpy.mri.app import L1WaveletRecon

    lipschitz = float((np.abs(maps) ** 2).sum(0).max() * mask_hw.max())
    alpha = 1.0 / max(lipschitz, 1e-12)
    if not cycle_spinning:
        app = L1WaveletRecon(y * mask_hw, maps, lamda, weights=mask_hw, wave_name=wavelet,
                             max_iter=n_iter, alpha=alpha, show_pbar=False)
        return np.asarray(app.run(), dtype=np.complex64)
    weights = mask_hw
    A = sp.mri.linop.Sense(maps, weights=weights)
    proxg = _CycleSpinningL1Wavelet(maps.shape[1:], lamda, wavelet)
    app = sp.app.LinearLeastSquares(A, y * mask_hw * weights**0.5, proxg=proxg, alpha=alpha,
                                    max_iter=n_iter, show_pbar=False)
    return np.asarray(app.run(), dtype=np.complex64)


class _CycleSpinningL1Wavelet:
    """Proximal step of ``lamda ||W x||_1`` with random cycle spinning, as BART's ``pics -l1``.

    Every call circularly shifts the image by a random offset in ``[0, 2^levels)`` per axis
    (``levels``: the wavelet's decomposition depth), soft-thresholds its wavelet coefficients
    and shifts back: on average a translation-invariant wavelet penalty, without the block
    artefacts of one fixed wavelet grid. The offsets come from a generator seeded with 0 per
    solve, so results are reproducible. Built lazily on sigpy's ``Prox`` (imported here only).
    """

    def __new__(cls, shape, lamda, wavelet):
        import pywt
        import sigpy as sp

        class _Prox(sp.prox.Prox):
            def __init__(self):
                self.W = sp.linop.Wavelet(tuple(shape), wave_name=wavelet)
                self.l1 = sp.prox.L1Reg(self.W.oshape, lamda)
                levels = pywt.dwt_max_level(min(shape), pywt.Wavelet(wavelet).dec_len)
                self.max_shift = 2 ** max(int(levels), 0)
                self.rng = np.random.default_rng(0)
                super().__init__(tuple(shape))

            def _prox(self, alpha, input):
                shift = tuple(int(v) for v in self.rng.integers(0, self.max_shift, size=2))
                x = np.roll(input, shift, axis=(-2, -1))
                x = self.W.H(self.l1(alpha, self.W(x)))
                return np.roll(x, tuple(-v for v in shift), axis=(-2, -1))

        return _Prox()
