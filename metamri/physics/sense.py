r"""The multi-coil SENSE forward model and a batched conjugate-gradient solver.

Forward model, per coil ``c`` (Pruessmann et al. 1999)::

    y_c = M F (S_c x)          A = M F S : C^{H x W} -> C^{C x H x W}

with ``x`` the complex image, ``S_c`` the coil sensitivity maps, ``F`` the
orthonormal centred 2-D FFT (:func:`metamri.physics.fft.fft2c`) and ``M`` the
diagonal sampling mask (1 on sampled k-space points, 0 elsewhere; real weights are
allowed). Its adjoint combines the coils::

    A^H y = sum_c conj(S_c) F^{-1} (M y_c)

and the normal operator is ``A^H A x = sum_c conj(S_c) F^{-1} M^2 F (S_c x)``.
With ESPIRiT-normalised maps (``sum_c |S_c|^2 = 1`` inside the support) and a full
mask, ``A^H A`` is the identity on the support.

Shapes and dtypes: images ``x`` are complex ``(B, H, W)``; k-space ``y`` complex
``(B, C, H, W)`` (phase-encode axis last, as everywhere in this project). Both
complex64 and complex128 work; the maps are used in the dtype of the input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metamri.physics.fft import fft2c, ifft2c


def _as_mask(mask, like: torch.Tensor) -> torch.Tensor:
    """The mask as a real tensor of shape (B|1, 1, H|1, W) broadcastable over (B, C, H, W).

    Accepted: ``(W,)`` (one phase-encode mask), ``(H, W)``, ``(B, H, W)`` (one per
    batch element; per-element line masks as ``(B, 1, W)``) or ``(B, 1, H, W)`` /
    ``(B, 1, 1, W)``. A 2-D mask is always read as ``(H, W)``.
    """
    mask = torch.as_tensor(mask, device=like.device)
    real_dtype = like.real.dtype if like.is_complex() else like.dtype
    if mask.is_complex():
        raise TypeError("the sampling mask must be real (bool or float), got a complex tensor")
    mask = mask.to(real_dtype)
    if mask.ndim == 1:
        return mask.view(1, 1, 1, -1)
    if mask.ndim == 2:
        return mask.view(1, 1, *mask.shape)
    if mask.ndim == 3:
        return mask.unsqueeze(1)
    if mask.ndim == 4:
        return mask
    raise ValueError(f"mask must have 1-4 dimensions ((W,), (H, W), (B, H, W), (B, 1, H, W)), got {tuple(mask.shape)}")


class SenseOperator:
    r"""Multi-coil Cartesian MRI operator ``A = M F S`` and its adjoint.

    Args:
        maps: complex sensitivity maps, ``(C, H, W)`` (shared by the batch) or
            ``(B, C, H, W)``.
        mask: bool or real sampling mask, broadcastable to the k-space
            ``(B, C, H, W)``: ``(W,)`` (phase-encode lines), ``(H, W)``, or one
            per batch element ``(B, 1, W)``, ``(B, H, W)``, ``(B, 1, H, W)``. A 2-D
            mask is always ``(H, W)``, never ``(B, W)``.

    Example:
        >>> import torch
        >>> maps = torch.ones(1, 8, 8, dtype=torch.complex128)
        >>> op = SenseOperator(maps, torch.ones(8, dtype=torch.bool))
        >>> x = torch.randn(2, 8, 8, dtype=torch.complex128)
        >>> bool(torch.allclose(op.A_adjoint(op.A(x)), x))
        True
        >>> op.adjointness_error() < 1e-12
        True
    """

    def __init__(self, maps: torch.Tensor, mask) -> None:
        maps = torch.as_tensor(maps)
        if not maps.is_complex():
            raise TypeError(f"sensitivity maps must be complex, got dtype {maps.dtype}")
        if maps.ndim == 3:
            maps = maps.unsqueeze(0)
        if maps.ndim != 4:
            raise ValueError(f"maps must be (C, H, W) or (B, C, H, W), got shape {tuple(maps.shape)}")
        self.maps = maps
        self.mask = _as_mask(mask, maps)
        h, w = maps.shape[-2:]
        mh, mw = self.mask.shape[-2:]
        if mw != w or mh not in (1, h):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit k-space of size (H, W) = ({h}, {w})"
            )
        if self.mask.shape[0] not in (1, maps.shape[0]) and maps.shape[0] != 1:
            raise ValueError(
                f"mask batch {self.mask.shape[0]} does not match maps batch {maps.shape[0]}"
            )

    @property
    def n_coils(self) -> int:
        return self.maps.shape[1]

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.maps.shape[-2:])

    def to(self, dtype: torch.dtype | None = None, device=None) -> SenseOperator:
        """A copy with maps in complex ``dtype`` (mask in the matching real dtype)."""
        maps = self.maps.to(device=device, dtype=dtype or self.maps.dtype)
        return SenseOperator(maps, self.mask.to(device=maps.device))

    def _maps_for(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps.to(dtype=x.dtype, device=x.device)

    def _check_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or tuple(x.shape[-2:]) != self.image_shape:
            raise ValueError(f"image must be (B, H, W) with (H, W) = {self.image_shape}, got {tuple(x.shape)}")
        if not x.is_complex():
            raise TypeError(f"image must be complex, got dtype {x.dtype}")
        return x

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> masked multi-coil k-space: ``y_c = M F (S_c x)``.

        Args:
            x: complex ``(B, H, W)`` (or ``(H, W)``, treated as B = 1).

        Returns:
            complex ``(B, C, H, W)``, same dtype as ``x``.
        """
        x = self._check_image(x)
        return self.mask.to(x.real.dtype) * fft2c(self._maps_for(x) * x.unsqueeze(1))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Masked multi-coil k-space -> coil-combined image: ``sum_c conj(S_c) F^-1 (M y_c)``.

        Args:
            y: complex ``(B, C, H, W)`` (or ``(C, H, W)``, treated as B = 1).

        Returns:
            complex ``(B, H, W)``, same dtype as ``y``.
        """
        if y.ndim == 3:
            y = y.unsqueeze(0)
        if y.ndim != 4 or y.shape[1] != self.n_coils or tuple(y.shape[-2:]) != self.image_shape:
            raise ValueError(
                f"k-space must be (B, {self.n_coils}, {self.image_shape[0]}, {self.image_shape[1]}), "
                f"got {tuple(y.shape)}"
            )
        coil_images = ifft2c(self.mask.to(y.real.dtype) * y)
        return (self._maps_for(y).conj() * coil_images).sum(dim=1)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``: complex ``(B, H, W)`` -> complex ``(B, H, W)``."""
        return self.A_adjoint(self.A(x))

    __call__ = A

    def adjointness_error(
        self,
        dtype: torch.dtype = torch.complex128,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> float:
        """Relative error ``|<Ax, y> - <x, A^H y>| / |<Ax, y>|`` for random ``x``, ``y``.

        Inner products are conjugated in the first argument (``torch.vdot``). In
        complex128 a correct operator gives ~1e-16.

        Args:
            dtype: complex dtype to test in (the maps are cast to it).
            generator: ``torch.Generator`` for ``x`` and ``y`` (default: seeded with 0).
            batch_size: B of the random inputs (default: the batch size of maps or mask).
        """
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        op = self.to(dtype=dtype)
        b = batch_size or max(op.maps.shape[0], op.mask.shape[0])
        h, w = op.image_shape
        x = torch.randn(b, h, w, dtype=dtype, generator=generator)
        y = torch.randn(b, op.n_coils, h, w, dtype=dtype, generator=generator)
        lhs = torch.vdot(op.A(x).flatten(), y.flatten())
        rhs = torch.vdot(x.flatten(), op.A_adjoint(y).flatten())
        return float((lhs - rhs).abs() / lhs.abs())


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of ``<a, b> = sum conj(a) b`` per batch element (axis 0), shaped (B, 1, ..., 1)."""
    dims = tuple(range(1, a.ndim))
    out = (a.conj() * b).real.sum(dim=dims, keepdim=True) if dims else (a.conj() * b).real
    return out


def conjugate_gradient(
    normal_op: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    n_iter: int,
    tol: float = 0.0,
) -> torch.Tensor:
    r"""Solve ``N x = rhs`` for a Hermitian positive-definite ``N``, batched over axis 0.

    Plain conjugate gradients (Hestenes & Stiefel 1952) with the conjugated complex
    inner product ``<a, b> = Re sum conj(a) b`` computed separately for every batch
    element, so each element has its own step sizes::

        r = rhs - N x0;  p = r
        repeat n_iter times:
            alpha = <r, r> / <p, N p>;  x += alpha p;  r -= alpha N p
            beta = <r_new, r_new> / <r, r>;  p = r + beta p

    The decomposed diffusion sampler uses it for
    ``(I + gamma A^H A) x = x0_hat + gamma A^H y``.

    Args:
        normal_op: ``x -> N x`` on tensors shaped like ``rhs`` (batch axis first).
        rhs: right-hand side, real or complex, ``(B, ...)``.
        x0: initial guess, same shape and dtype as ``rhs``.
        n_iter: maximum number of iterations.
        tol: stop early once every element has ``||r|| <= tol * ||rhs||``
            (0: always run ``n_iter`` iterations).

    Returns:
        The approximate solution, shaped like ``rhs``. Elements that have converged
        exactly (zero residual) stay fixed (no 0/0).
    """
    if rhs.shape != x0.shape:
        raise ValueError(f"rhs {tuple(rhs.shape)} and x0 {tuple(x0.shape)} must have the same shape")
    x = x0.clone()
    r = rhs - normal_op(x)
    p = r.clone()
    rs_old = _batch_dot(r, r)
    rhs_norm2 = _batch_dot(rhs, rhs)
    for _ in range(n_iter):
        if tol > 0 and bool((rs_old <= tol**2 * rhs_norm2).all()):
            break
        Ap = normal_op(p)
        pAp = _batch_dot(p, Ap)
        alpha = torch.where(pAp > 0, rs_old / torch.where(pAp > 0, pAp, 1), 0)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = _batch_dot(r, r)
        beta = torch.where(rs_old > 0, rs_new / torch.where(rs_old > 0, rs_old, 1), 0)
        p = r + beta * p
        rs_old = rs_new
    return x
