"""The SENSE operator (adjointness in float64, agreement with a NumPy reference) and CG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metamri.physics.fft import fft2c_np, ifft2c_np
from metamri.physics.masks import (
    EquispacedFractionMask,
    FileMask,
    Gaussian1D,
    RandomMask,
    Uniform1D,
)
from metamri.physics.sense import SenseOperator, conjugate_gradient

B, C, H, W = 2, 4, 20, 24


def _maps(dtype=torch.complex128, batch=B, seed=0, normalise=False):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, C, H, W, dtype=dtype, generator=g)
    if normalise:
        maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    return maps


MASKS = {
    "uniform1d": lambda: Uniform1D(4, 0.08)(W, seed="a.h5"),
    "gaussian1d": lambda: Gaussian1D(4, 0.08)(W, seed="a.h5"),
    "random": lambda: RandomMask(4, 0.08)(W, seed="a.h5"),
    "equispaced_fraction": lambda: EquispacedFractionMask(4, 0.08)(W, seed="a.h5"),
    "file": lambda: FileMask(np.arange(W) % 3 == 0)(W),
    "full": lambda: np.ones(W, bool),
    "2d_hw": lambda: np.random.default_rng(1).random((H, W)) < 0.3,
    "per_batch": lambda: np.random.default_rng(2).random((B, H, W)) < 0.3,
    "weights": lambda: np.random.default_rng(3).random(W).astype(np.float32),  # real non-binary
}


@pytest.mark.parametrize("name", list(MASKS))
def test_adjointness_float64_every_mask(name):
    op = SenseOperator(_maps(), torch.as_tensor(MASKS[name]()))
    err = op.adjointness_error(torch.complex128, generator=torch.Generator().manual_seed(7))
    assert err < 1e-10, f"{name}: relative adjointness error {err:.3e}"
    err32 = op.adjointness_error(torch.complex64, generator=torch.Generator().manual_seed(7))
    assert err32 < 1e-5, f"{name}: complex64 adjointness error {err32:.3e}"


def test_matches_per_coil_numpy_reference():
    maps = _maps()
    mask = MASKS["uniform1d"]()
    x = torch.randn(B, H, W, dtype=torch.complex128, generator=torch.Generator().manual_seed(3))
    y = torch.randn(B, C, H, W, dtype=torch.complex128, generator=torch.Generator().manual_seed(4))
    op = SenseOperator(maps, torch.from_numpy(mask))
    s, xn, yn = maps.numpy(), x.numpy(), y.numpy()
    ref_A = np.stack([[mask * fft2c_np(s[b, c] * xn[b]) for c in range(C)] for b in range(B)])
    ref_AH = np.stack([sum(np.conj(s[b, c]) * ifft2c_np(mask * yn[b, c]) for c in range(C))
                       for b in range(B)])
    np.testing.assert_allclose(op.A(x).numpy(), ref_A, atol=1e-12)
    np.testing.assert_allclose(op.A_adjoint(y).numpy(), ref_AH, atol=1e-12)


def test_full_mask_normal_is_identity_with_normalised_maps():
    op = SenseOperator(_maps(normalise=True), torch.ones(W, dtype=torch.bool))
    x = torch.randn(B, H, W, dtype=torch.complex128, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(op.normal(x), x, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_dtypes_are_kept(dtype):
    op = SenseOperator(_maps(torch.complex64), torch.from_numpy(MASKS["random"]()))
    x = torch.randn(B, H, W, dtype=dtype)
    y = op.A(x)
    assert y.dtype == dtype and y.shape == (B, C, H, W)
    assert op.A_adjoint(y).dtype == dtype and op.normal(x).shape == (B, H, W)


def test_batched_equals_one_by_one():
    maps = _maps()
    masks = torch.from_numpy(MASKS["per_batch"]())
    x = torch.randn(B, H, W, dtype=torch.complex128, generator=torch.Generator().manual_seed(6))
    batched = SenseOperator(maps, masks).normal(x)
    for b in range(B):
        single = SenseOperator(maps[b], masks[b]).normal(x[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], single, rtol=0, atol=1e-12)
    # shared (C, H, W) maps broadcast over the batch
    shared = SenseOperator(maps[0], masks).A(x)
    torch.testing.assert_close(shared[1], SenseOperator(maps[0], masks[1]).A(x[1])[0])


def test_bad_inputs():
    with pytest.raises(TypeError, match="complex"):
        SenseOperator(torch.ones(C, H, W), torch.ones(W))
    with pytest.raises(ValueError, match="does not fit"):
        SenseOperator(_maps(), torch.ones(W + 1))
    op = SenseOperator(_maps(), torch.ones(W))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        op.A(torch.zeros(B, H + 1, W, dtype=torch.complex128))


# -- conjugate gradient -------------------------------------------------------------------------


def _explicit_matrix(op_fn, h, w, dtype):
    """The matrix of a linear map on (h, w) images, built column by column."""
    n = h * w
    basis = torch.eye(n, dtype=dtype).reshape(n, h, w)
    return op_fn(basis).reshape(n, n).T  # column j = op(e_j)


def test_cg_matches_direct_solve_complex128():
    h, w, gamma = 8, 6, 5.0
    g = torch.Generator().manual_seed(11)
    maps = torch.randn(2, 3, h, w, dtype=torch.complex128, generator=g)
    masks = torch.stack([torch.from_numpy(Uniform1D(2, 0.2)(w, seed=s)) for s in ("a", "b")])
    assert not torch.equal(masks[0], masks[1])
    rhs = torch.randn(2, h, w, dtype=torch.complex128, generator=g)
    x0 = torch.randn(2, h, w, dtype=torch.complex128, generator=g)
    op = SenseOperator(maps, masks[:, None, :])  # per-element line masks: (B, 1, W)

    def system(x):  # (I + gamma A^H A), the sampler's data-consistency system
        return x + gamma * op.normal(x)

    x_cg = conjugate_gradient(system, rhs, x0, n_iter=200, tol=1e-14)
    for b in range(2):
        single = SenseOperator(maps[b], masks[b])
        mat = _explicit_matrix(lambda v, s=single: v + gamma * s.normal(v), h, w, torch.complex128)
        assert torch.allclose(mat, mat.mH, atol=1e-12)  # Hermitian
        assert torch.linalg.eigvalsh(mat).min() >= 1 - 1e-10  # PD: I + gamma A^H A >= I
        x_direct = torch.linalg.solve(mat, rhs[b].reshape(-1)).reshape(h, w)
        rel = (x_cg[b] - x_direct).norm() / x_direct.norm()
        assert rel < 1e-10, f"batch {b}: CG vs direct solve relative error {rel:.3e}"


def test_cg_few_iterations_reduce_residual_monotonically_in_energy_norm():
    op = SenseOperator(_maps(normalise=True), torch.from_numpy(MASKS["uniform1d"]()))
    g = torch.Generator().manual_seed(12)
    rhs = torch.randn(B, H, W, dtype=torch.complex128, generator=g)

    def system(x):
        return x + 5.0 * op.normal(x)

    x_exact = conjugate_gradient(system, rhs, torch.zeros_like(rhs), n_iter=300, tol=1e-13)
    errors = []
    for k in range(0, 8):
        e = conjugate_gradient(system, rhs, torch.zeros_like(rhs), n_iter=k) - x_exact
        errors.append(float(torch.vdot(e.flatten(), system(e).flatten()).real))  # A-norm^2
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:], strict=False))
    assert errors[5] < 1e-3 * errors[0]


def test_cg_real_spd_and_converged_start():
    g = torch.Generator().manual_seed(13)
    m = torch.randn(2, 10, 10, dtype=torch.float64, generator=g)
    spd = m @ m.mT + 10 * torch.eye(10, dtype=torch.float64)
    rhs = torch.randn(2, 10, dtype=torch.float64, generator=g)

    def apply(x):
        return (spd @ x.unsqueeze(-1)).squeeze(-1)

    x = conjugate_gradient(apply, rhs, torch.zeros_like(rhs), n_iter=10)
    torch.testing.assert_close(x, torch.linalg.solve(spd, rhs), rtol=0, atol=1e-10)
    # starting at the solution: no 0/0, the solution is returned unchanged
    exact = torch.linalg.solve(spd, rhs)
    out = conjugate_gradient(apply, apply(exact), exact, n_iter=5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-12)
