r"""Decomposed diffusion sampler (DDS) for multi-coil MRI reconstruction.

DDS (Chung, Lee, Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse
Problems", arXiv:2303.05754, 2023), as ContextMRI (Chung et al. 2025, arXiv:2501.04284)
uses it with a metadata-conditioned prior.  Per step t -> t' on the DDIM grid
(:mod:`.schedule`), with a = alpha_bar:

    eps     = eps_u + s (eps_c - eps_u)                                   guided noise (CFG)
    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                       Tweedie, paper Eq. 2
    x0_dc   ~ argmin_x ||x - x0_hat||^2 + gamma ||A x - y||^2
              i.e. (I + gamma A^H A) x = x0_hat + gamma A^H y,
              ``cg_iters`` conjugate-gradient steps started at x0_hat
    sigma_t = eta sqrt((1 - a_t') / (1 - a_t)) sqrt(1 - a_t / a_t')
    x_t'    = sqrt(a_t') x0_dc + sqrt(1 - a_t' - sigma_t^2) eps + sigma_t z   DDIM, paper Eq. 3

and the sample is the last x0_dc (the step into a_t' = 1).  The CG runs on complex images
(B, H, W) with the conjugated inner product, separately per batch element
(:func:`metamri.physics.sense.conjugate_gradient`).  A few CG steps from x0_hat keep the
update in the Krylov subspace around the denoised estimate, which DDS argues stays on the
tangent space of the clean-data manifold; no gradient through the network is needed.

Which eps re-noises (our choice, and why).  Eq. 3 can be fed either the network's eps or
the noise implied by the corrected estimate, ``(x_t - sqrt(a_t) x0_dc) / sqrt(1 - a_t)``.
Both reference codes use the network's (guided) eps: DDS's ``solver_2d.py`` (``c2 * et``)
and ContextMRI's ``pipeline_mri.py::dds`` (``c2 * noise_pred``).  We do the same: it is
the "decomposition" of DDS (the clean part is corrected by the data, the noise part is the
denoiser's), and the published hyper-parameters (eta = 0.8, gamma = 5, 5 CG steps, 100
steps) were tuned with it.  Re-deriving eps from x0_dc would make
``x_t = sqrt(a_t) x0_dc + sqrt(1 - a_t) eps'`` an identity, so (for eta = 0) the correction
``x0_dc - x0_hat`` would reach x_t' only with weight
``sqrt(a_t') - sqrt(a_t) sqrt((1 - a_t') / (1 - a_t))``, which vanishes as the steps get
small: the data would hardly steer the trajectory.

What it computes, in the one case where everything is known (tests/test_sampler_closed_form.py):
for a Gaussian prior N(mu, v I) and noiseless y, with the CG converged and gamma large, the
mean of DDS's samples is the posterior mean mu + A^+ (y - A mu) (on null(A) DDS is DDIM on
the prior, on range(A^H) the last CG step pins the sample to the data).  It is not an exact
posterior sampler: its variance on null(A) is DDIM's discretised prior variance (9% low at
100 steps, eta 0.8), with a non-isotropic prior the Euclidean proximal step is not the
prior-weighted projection, and with gamma = 5 weakly measured components (small
eigenvalues of A^H A) are only partly pulled to the data.

Other details checked against the references: the grid is diffusers' "leading" one
(990, 980, ..., 0 for 100 steps), ``alpha_bar`` of the step after t = 0 is 1, sigma uses
DDIM's eta parameterisation (ContextMRI's; DDS's own code scales ``sqrt(1 - a_t')`` by eta
instead), and the final output is the data-consistent x0 of the last step.  One deliberate
difference: ContextMRI's CG (``mri/utils.py::CG``) uses the unconjugated product ``r^T r``
and one step size for the whole batch; ours conjugates and works per element, so a batch of
K samples equals K separate runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metamri.errors import ConfigError
from metamri.physics.sense import conjugate_gradient
from metamri.sampling.complex_image import to_channels, to_complex
from metamri.sampling.ddim import (
    check_sampler_args,
    ddim_sigma,
    ddim_update,
    initial_noise,
    tweedie_x0,
)
from metamri.sampling.guidance import EpsFn, GuidedDenoiser
from metamri.sampling.noise import randn_per_sample
from metamri.sampling.result import SampleResult, StepTimer
from metamri.sampling.schedule import alphas_cumprod as default_alphas_cumprod
from metamri.sampling.schedule import ddim_grid


def data_consistency(
    operator,
    x0: torch.Tensor,
    adjoint_y: torch.Tensor,
    gamma: float,
    cg_iters: int,
) -> torch.Tensor:
    """Approximate proximal step ``argmin_x ||x - x0||^2 + gamma ||A x - y||^2``.

    Runs ``cg_iters`` CG steps on ``(I + gamma A^H A) x = x0 + gamma A^H y`` from ``x0``.

    Args:
        operator: has ``normal(x) = A^H A x`` on complex (B, H, W).
        x0: complex (B, H, W), the denoised estimate.
        adjoint_y: complex (B, H, W), ``A^H y``.
        gamma: data weight (> 0).
        cg_iters: number of CG steps (0 returns ``x0``).
    """

    def system(x: torch.Tensor) -> torch.Tensor:
        return x + gamma * operator.normal(x)

    return conjugate_gradient(system, x0 + gamma * adjoint_y, x0, cg_iters)


class DecomposedDiffusionSampler:
    """ContextMRI's posterior sampler: guided DDIM with a CG data-consistency step.

    Args:
        num_steps: n sampling steps (100 in ContextMRI and the paper).
        eta: DDIM eta in [0, 1] (0.8).
        cg_iters: CG steps per sampling step (5).
        gamma: data-consistency weight in ``(I + gamma A^H A)`` (5.0).
        guidance_scale: CFG scale s (1.0 = conditional only; 0 = unconditional).
        timestep_spacing: ``"leading"`` (default; 990, ..., 0), ``"trailing"`` or
            ``"linspace"``; see :mod:`metamri.sampling.schedule`.
        alphas_cumprod: (T,) ``alpha_bar`` of the model's training schedule; ``None`` gives
            diffusers' default DDPM schedule (linear 1e-4..0.02, T = 1000).
        profile: synchronise a CUDA device around every timed section, so ``timings``
            splits the time correctly (the benchmarks); off by default, so nothing in the
            loop waits for the device (``+sampler.profile=true``). No effect on CPU.
    """

    def __init__(
        self,
        num_steps: int = 100,
        eta: float = 0.8,
        cg_iters: int = 5,
        gamma: float = 5.0,
        guidance_scale: float = 1.0,
        timestep_spacing: str = "leading",
        alphas_cumprod: torch.Tensor | Sequence[float] | None = None,
        profile: bool = False,
    ) -> None:
        check_sampler_args(num_steps, eta, guidance_scale)
        if int(cg_iters) != cg_iters or cg_iters < 0:
            raise ConfigError("sampler.cg_iters", cg_iters, "must be a non-negative integer")
        if not gamma > 0:
            raise ConfigError("sampler.gamma", gamma, "must be positive")
        ab = default_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.grid = ddim_grid(ab, num_steps, timestep_spacing)
        self.num_steps, self.eta = int(num_steps), float(eta)
        self.cg_iters, self.gamma = int(cg_iters), float(gamma)
        self.guidance_scale = float(guidance_scale)
        self.profile = bool(profile)

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        operator,
        y: torch.Tensor,
        cond_ctx: torch.Tensor | None,
        uncond_ctx: torch.Tensor | None,
        shape: Sequence[int],
        generators: Sequence[torch.Generator],
        x_init: torch.Tensor | None = None,
    ) -> SampleResult:
        """Reconstruct B images from their undersampled k-space.

        Args:
            eps_fn: ``eps_fn(x_t (N, 2, H, W), t (N,) int64, context (N, L, D)) -> eps``.
            operator: forward model with ``A_adjoint(y)`` and ``normal(x)`` on complex
                (B, H, W) images, e.g. :class:`metamri.physics.sense.SenseOperator`.
            y: measured k-space, complex (B, C, H, W); its dtype sets the precision
                (complex64 -> float32 images for the network, complex128 -> float64).
            cond_ctx, uncond_ctx: contexts (B or 1, L, D); see :class:`GuidedDenoiser`.
            shape: (B, 2, H, W), the network's image shape.
            generators: B ``torch.Generator``s, one per batch element (x_T and every z).
            x_init: optional x_T (B, 2, H, W) instead of drawing it.

        Returns:
            :class:`SampleResult`: ``image`` complex (B, H, W), the final data-consistent x0,
            and ``timings`` {"unet", "data_consistency", "other", "total"} in seconds.
        """
        if not y.is_complex() or y.ndim != 4:
            raise ValueError(f"y must be complex (B, C, H, W); got {tuple(y.shape)} {y.dtype}")
        if y.shape[0] != shape[0] or tuple(y.shape[-2:]) != tuple(shape[-2:]):
            raise ValueError(f"y {tuple(y.shape)} does not match the image shape {tuple(shape)}")
        device, dtype = y.device, y.real.dtype
        timer = StepTimer(device, synchronize=self.profile)
        denoiser = GuidedDenoiser(eps_fn, cond_ctx, uncond_ctx, self.guidance_scale)
        x = initial_noise(shape, generators, x_init, dtype, device)
        with timer.section("data_consistency"):
            adjoint_y = operator.A_adjoint(y)

        x0_dc = to_complex(x)
        for t, a_t, a_prev in zip(*self.grid, strict=True):
            a_t, a_prev = float(a_t), float(a_prev)
            with timer.section("unet"):
                eps = denoiser(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=device))
            x0_hat = to_complex(tweedie_x0(x, eps, a_t))
            with timer.section("data_consistency"):
                x0_dc = data_consistency(operator, x0_hat, adjoint_y, self.gamma, self.cg_iters)
            if a_prev >= 1.0:
                break
            sigma = ddim_sigma(a_t, a_prev, self.eta)
            noise = randn_per_sample(generators, x.shape[1:], dtype, device) if sigma > 0 else None
            x = ddim_update(to_channels(x0_dc), eps, a_prev, sigma, noise)
        return SampleResult(x0_dc, timer.result(), denoiser.calls, self.grid.timesteps)
