"""Posterior sampling (ContextMRI's decomposed diffusion sampler) and DDIM generation.

* :mod:`.complex_image` -- ``to_complex`` / ``to_channels``: (B, 2, H, W) real <-> (B, H, W) complex
* :mod:`.schedule` -- ``alpha_bar`` of the DDPM schedule and the DDIM timestep grid
* :mod:`.guidance` -- classifier-free guidance, both halves in one batch
* :mod:`.ddim` -- the DDIM update (paper Eqs. 2-3) and plain generation
* :mod:`.dds` -- the decomposed diffusion sampler (DDIM + CG data consistency)
* :mod:`.ensemble` -- K samples per slice in one batch: complex mean and magnitude std
"""

from metamri.sampling.complex_image import to_channels, to_complex
from metamri.sampling.ddim import DDIMSampler
from metamri.sampling.dds import DecomposedDiffusionSampler, data_consistency
from metamri.sampling.ensemble import EnsembleResult, ensemble_sample, ensemble_seeds
from metamri.sampling.guidance import GuidedDenoiser
from metamri.sampling.noise import generators_from_seeds
from metamri.sampling.result import SampleResult
from metamri.sampling.schedule import alphas_cumprod, ddim_grid, ddim_timesteps

__all__ = [
    "DDIMSampler",
    "DecomposedDiffusionSampler",
    "EnsembleResult",
    "GuidedDenoiser",
    "SampleResult",
    "alphas_cumprod",
    "data_consistency",
    "ddim_grid",
    "ddim_timesteps",
    "ensemble_sample",
    "ensemble_seeds",
    "generators_from_seeds",
    "to_channels",
    "to_complex",
]
