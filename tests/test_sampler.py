"""Behaviour of the samplers: data consistency, guidance, ensembles, timestep grid, config.

The closed-form (Gaussian prior) checks are in test_sampler_closed_form.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize

from metamri.errors import ConfigError
from metamri.physics.sense import SenseOperator
from metamri.sampling import (
    DDIMSampler,
    DecomposedDiffusionSampler,
    GuidedDenoiser,
    alphas_cumprod,
    ddim_grid,
    ddim_timesteps,
    ensemble_sample,
    ensemble_seeds,
    generators_from_seeds,
    to_channels,
    to_complex,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
CTX_LEN, CTX_DIM = 4, 16


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only add overhead


def tiny_unet(seed: int = 0, size: int = 32):
    """A random 2-channel diffusers UNet2DConditionModel with cross-attention (~60k params)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=2,
            out_channels=2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CTX_DIM,
            attention_head_dim=4,
            norm_num_groups=4,
        )
    return unet.eval()


def unet_eps_fn(unet):
    def eps_fn(x_t, t, context):
        return unet(x_t, t, encoder_hidden_states=context).sample

    return eps_fn


def contexts(n: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, CTX_LEN, CTX_DIM, generator=g)
    return cond, torch.zeros(n, CTX_LEN, CTX_DIM)


def smooth_maps(n_coils: int, size: int, seed: int = 0) -> torch.Tensor:
    """(C, H, W) complex64 maps, smooth, with sum_c |S_c|^2 = 1 everywhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    centres = rng.uniform(-1.2, 1.2, size=(n_coils, 2))
    phases = rng.uniform(0, 2 * np.pi, size=n_coils)
    maps = np.stack(
        [
            np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)) * np.exp(1j * (ph + 0.5 * xx))
            for (cy, cx), ph in zip(centres, phases, strict=True)
        ]
    )
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    return torch.from_numpy(maps.astype(np.complex64))


def phantom(size: int) -> torch.Tensor:
    """(1, H, W) complex64 Shepp-Logan with a smooth phase, max magnitude 1."""
    mag = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    img = mag / mag.max() * np.exp(1j * np.pi / 3 * (xx + yy**2))
    return torch.from_numpy(img.astype(np.complex64))[None]


def psnr(ref: torch.Tensor, rec: torch.Tensor) -> float:
    ref, rec = ref.abs().squeeze().numpy(), rec.abs().squeeze().numpy()
    return peak_signal_noise_ratio(ref, rec, data_range=float(ref.max()))


# ---------------------------------------------------------------- conversions and grid


def test_complex_channel_round_trip():
    z = torch.randn(3, 5, 7, dtype=torch.complex64)
    x = to_channels(z)
    assert x.shape == (3, 2, 5, 7) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], z.real) and torch.equal(x[:, 1], z.imag)
    assert torch.equal(to_complex(x), z)
    assert to_complex(to_channels(z.to(torch.complex128))).dtype == torch.complex128
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        to_complex(torch.zeros(3, 3, 5, 7))
    with pytest.raises(ValueError, match="complex"):
        to_channels(torch.zeros(3, 5, 7))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 50, 100, 333, 1000])
def test_ddim_grid_distinct_descending_in_range_and_equals_diffusers(spacing, n):
    from diffusers import DDIMScheduler

    t = ddim_timesteps(n, spacing=spacing)
    assert t.dtype == torch.int64 and t.numel() == n
    assert t.unique().numel() == n
    assert bool((t[1:] < t[:-1]).all())
    assert 0 <= int(t.min()) and int(t.max()) <= 999
    sched = DDIMScheduler(timestep_spacing=spacing)
    sched.set_timesteps(n)
    assert torch.equal(t, sched.timesteps)


def test_default_grid_is_dds_and_contextmri_grid():
    """100 leading steps: 990, 980, ..., 0 (DDS: reversed(range(0, 1000, 10)))."""
    grid = ddim_grid(alphas_cumprod(), 100)
    assert grid.timesteps.tolist() == list(reversed(range(0, 1000, 10)))
    ab = alphas_cumprod()
    assert torch.equal(grid.alpha_bar, ab[grid.timesteps])
    assert torch.equal(grid.alpha_bar_prev[:-1], grid.alpha_bar[1:]) and grid.alpha_bar_prev[-1] == 1
    # diffusers' DDPM linear schedule: alpha_bar_0 = 1 - 1e-4, alpha_bar_999 ~ 4.04e-5
    assert abs(float(ab[0]) - (1 - 1e-4)) < 1e-7 and abs(float(ab[999]) - 4.0358e-5) < 1e-8
    with pytest.raises(ConfigError, match="leading, trailing|one of"):
        ddim_timesteps(10, spacing="karras")
    with pytest.raises(ConfigError, match="num_steps"):
        ddim_timesteps(1001)


# ----------------------------------------------------------------- data consistency


def test_fully_sampled_noiseless_dds_returns_ground_truth():
    """Full mask: A^H A = I, so each step gives (x0_hat + gamma x_true) / (1 + gamma) and the
    last step leaves |x0_hat - x_true| / 6 -- for any denoiser.  Default DDS settings."""
    size = 32
    op = SenseOperator(smooth_maps(8, size), torch.ones(size))
    x_true = phantom(size)
    y = op.A(x_true)
    cond, uncond = contexts()
    sampler = DecomposedDiffusionSampler()  # 100 steps, eta 0.8, 5 CG, gamma 5, s = 1
    unet = tiny_unet()
    res = sampler.sample(unet_eps_fn(unet), op, y, cond, uncond, (1, 2, size, size), generators_from_seeds([0]))
    p_unet = psnr(x_true, res.image)

    noise_gen = torch.Generator().manual_seed(5)

    def wild_eps(x_t, t, context):  # an adversarial "denoiser": fresh noise, 3x too large
        return 3 * torch.randn(x_t.shape, generator=noise_gen)

    res2 = sampler.sample(wild_eps, op, y, cond, uncond, (1, 2, size, size), generators_from_seeds([1]))
    p_wild = psnr(x_true, res2.image)
    print(f"PSNR tiny random UNet {p_unet:.1f} dB, random eps {p_wild:.1f} dB")
    assert p_unet > 40 and p_wild > 40
    assert res.image.dtype == torch.complex64 and res.image.shape == (1, size, size)


def test_timings_and_nfe():
    size = 16
    op = SenseOperator(smooth_maps(4, size), (torch.arange(size) % 4 == 0).float())
    cond, uncond = contexts()
    sampler = DecomposedDiffusionSampler(num_steps=10, guidance_scale=2.0)
    res = sampler.sample(
        unet_eps_fn(tiny_unet(size=size)), op, op.A(phantom(size)), cond, uncond,
        (1, 2, size, size), generators_from_seeds([0]),
    )
    assert set(res.timings) == {"unet", "data_consistency", "other", "total"}
    assert all(v >= 0 for v in res.timings.values())
    parts = res.timings["unet"] + res.timings["data_consistency"] + res.timings["other"]
    assert abs(parts - res.timings["total"]) < 1e-6
    assert res.timings["unet"] > 0 and res.timings["data_consistency"] > 0
    assert res.nfe == 10 and res.timesteps.tolist() == list(range(900, -1, -100))


# ------------------------------------------------------------------------------- guidance


class CountingEps:
    """Wraps an eps_fn and records every call's batch size and context."""

    def __init__(self, eps_fn):
        self.eps_fn, self.batch_sizes, self.contexts = eps_fn, [], []

    def __call__(self, x_t, t, context):
        assert x_t.shape[0] == t.shape[0] == context.shape[0]
        self.batch_sizes.append(x_t.shape[0])
        self.contexts.append(context.clone())
        return self.eps_fn(x_t, t, context)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_cfg_scale_0_or_1_runs_one_half_only(scale):
    n, size = 3, 16
    eps_fn = unet_eps_fn(tiny_unet(size=size))
    cond, uncond = contexts(n)
    x = torch.randn(n, 2, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.full((n,), 500)
    counting = CountingEps(eps_fn)
    # the unused context may be absent
    guided = GuidedDenoiser(counting, cond if scale else None, None if scale else uncond, scale)
    out = guided(x, t)
    assert counting.batch_sizes == [n] and guided.calls == 1
    expected_ctx = cond if scale == 1.0 else uncond
    assert torch.equal(counting.contexts[0], expected_ctx)
    with torch.no_grad():
        assert torch.allclose(out, eps_fn(x, t, expected_ctx))


def test_cfg_combines_halves_computed_in_one_batch():
    n, size, s = 3, 16, 2.5
    eps_fn = unet_eps_fn(tiny_unet(size=size))
    cond, uncond = contexts(n)
    x = torch.randn(n, 2, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 0])
    counting = CountingEps(eps_fn)
    with torch.no_grad():
        out = GuidedDenoiser(counting, cond, uncond, s)(x, t)
        eps_c, eps_u = eps_fn(x, t, cond), eps_fn(x, t, uncond)
    assert counting.batch_sizes == [2 * n]
    assert torch.equal(counting.contexts[0], torch.cat([uncond, cond]))
    expected = eps_u + s * (eps_c - eps_u)
    err = float((out - expected).abs().max())
    assert err < 1e-5, err  # one batch of 2N vs two batches of N: float32 rounding only
    assert float((eps_c - eps_u).abs().max()) > 1e-3  # the context does change the output


def test_cfg_shape_checks():
    cond = torch.zeros(2, 77, CTX_DIM)
    with pytest.raises(ValueError, match="token shapes"):
        GuidedDenoiser(lambda x, t, c: x, cond, torch.zeros(2, 8, CTX_DIM), 2.0)
    with pytest.raises(ValueError, match="unconditional context"):
        GuidedDenoiser(lambda x, t, c: x, cond, None, 2.0)
    guided = GuidedDenoiser(lambda x, t, c: x, cond, None, 1.0)
    with pytest.raises(ValueError, match="batch 2, but x_t has batch 3"):
        guided(torch.zeros(3, 2, 4, 4), torch.zeros(3, dtype=torch.long))


def test_dds_with_guidance_calls_network_once_per_step_with_batch_2b():
    size, b, steps = 16, 2, 8
    op = SenseOperator(smooth_maps(4, size), (torch.arange(size) % 2 == 0).float())
    counting = CountingEps(unet_eps_fn(tiny_unet(size=size)))
    cond, uncond = contexts(b)
    res = DecomposedDiffusionSampler(num_steps=steps, guidance_scale=3.0).sample(
        counting, op, op.A(phantom(size).expand(b, -1, -1)), cond, uncond,
        (b, 2, size, size), generators_from_seeds([0, 1]),
    )
    assert res.nfe == steps and counting.batch_sizes == [2 * b] * steps


# ------------------------------------------------------------------------------ ensembles


def _ensemble_problem(size: int = 16, b: int = 2):
    maps = torch.stack([smooth_maps(4, size, seed=s) for s in range(b)])  # (B, C, H, W)
    mask = (torch.arange(size) % 3 == 0).float()
    x = torch.cat([phantom(size), phantom(size).flip(-1)][:b])
    y = SenseOperator(maps, mask).A(x)
    return maps, mask, y


def test_ensemble_reproducible_and_equal_to_separate_runs():
    """Run in float64 so that "equal" can be tight: in float32 the UNet's batch-size
    dependent rounding (~1e-7) is amplified by 1/sqrt(alpha_bar) ~ 100 (measured 8e-5)."""
    size, b, k = 16, 2, 3
    maps, mask, y = _ensemble_problem(size, b)
    maps, y = maps.to(torch.complex128), y.to(torch.complex128)
    eps_fn = unet_eps_fn(tiny_unet(size=size).double())
    cond, uncond = (c.double() for c in contexts(b))
    sampler = DecomposedDiffusionSampler(num_steps=10, guidance_scale=1.5)
    seeds = ensemble_seeds("vol_a:3", k) + ensemble_seeds("vol_b:7", k)
    run = ensemble_sample(sampler, eps_fn, y, maps, mask, cond, uncond, k, seeds, keep_samples=True)
    again = ensemble_sample(sampler, eps_fn, y, maps, mask, cond, uncond, k, seeds, keep_samples=True)
    assert torch.equal(run.samples, again.samples) and torch.equal(run.mean, again.mean)
    assert run.mean.shape == (b, size, size) and run.mean.is_complex()
    assert run.std.shape == (b, size, size) and not run.std.is_complex()
    assert run.samples.shape == (b, k, size, size)
    # each sample equals a separate batch-1 run with its own seed (slice-major seeds)
    worst = 0.0
    for i in range(b):
        op = SenseOperator(maps[i : i + 1], mask)
        for j in range(k):
            single = sampler.sample(
                eps_fn, op, y[i : i + 1], cond[i : i + 1], uncond[i : i + 1],
                (1, 2, size, size), generators_from_seeds([seeds[i * k + j]]),
            ).image[0]
            worst = max(worst, float((single - run.samples[i, j]).abs().max()))
    print(f"batch of B*K vs separate runs: max abs diff {worst:.1e}")
    assert worst < 1e-10, worst  # float64, |x| ~ 1
    # summaries: complex mean, sample std of magnitudes
    assert torch.allclose(run.mean, run.samples.mean(dim=1))
    assert torch.allclose(run.std, run.samples.abs().std(dim=1, correction=1))
    assert float(run.std.max()) > 0
    # other seeds give other samples
    other = ensemble_sample(sampler, eps_fn, y, maps, mask, cond, uncond, k, [s + 1 for s in seeds])
    assert float((other.mean - run.mean).abs().max()) > 1e-3


def test_ensemble_k1_and_argument_checks():
    size = 16
    maps, mask, y = _ensemble_problem(size, 1)
    eps_fn = unet_eps_fn(tiny_unet(size=size))
    cond, uncond = contexts(1)
    sampler = DecomposedDiffusionSampler(num_steps=4)
    res = ensemble_sample(sampler, eps_fn, y, maps[0], mask, cond, uncond, 1, [7])
    assert res.samples is None and torch.equal(res.std, torch.zeros(1, size, size))
    single = sampler.sample(
        eps_fn, SenseOperator(maps[0], mask), y, cond, uncond, (1, 2, size, size), generators_from_seeds([7])
    )
    assert torch.equal(res.mean, single.image)
    with pytest.raises(ValueError, match="B\\*K = 1\\*2 = 2 seeds"):
        ensemble_sample(sampler, eps_fn, y, maps, mask, cond, uncond, 2, [1, 2, 3])


def test_ensemble_seeds_are_stable_and_distinct():
    a = ensemble_seeds("file_brain_AXT2_200_2000019.h5:7", 5)
    assert a == ensemble_seeds("file_brain_AXT2_200_2000019.h5:7", 5)
    assert len(set(a)) == 5
    assert set(a).isdisjoint(ensemble_seeds("file_brain_AXT2_200_2000019.h5:8", 5))
    assert a != ensemble_seeds("file_brain_AXT2_200_2000019.h5:7", 5, base_seed=1)
    # golden value: CRC-32 (IEEE) of b"0:file_brain_AXT2_200_2000019.h5:7:0", checked with
    # a bitwise pure-Python CRC; it does not change between processes or Python versions
    assert a[0] == 3283383004


# ------------------------------------------------------------------- DDIM and config


def test_ddim_generation_reproducible_per_sample():
    size = 16
    sampler = DDIMSampler(num_steps=6, eta=1.0, guidance_scale=2.0)
    eps_fn = unet_eps_fn(tiny_unet(size=size))
    cond, uncond = contexts(2)
    a = sampler.sample(eps_fn, cond, uncond, (2, 2, size, size), generators_from_seeds([4, 5]))
    b = sampler.sample(eps_fn, cond[1:], uncond[1:], (1, 2, size, size), generators_from_seeds([5]))
    assert a.image.shape == (2, size, size) and a.nfe == 6
    assert float((a.image[1] - b.image[0]).abs().max()) < 1e-4


def test_config_errors_name_key_and_value():
    with pytest.raises(ConfigError, match=r"sampler.eta = 1.5"):
        DecomposedDiffusionSampler(eta=1.5)
    with pytest.raises(ConfigError, match=r"sampler.gamma = 0"):
        DecomposedDiffusionSampler(gamma=0)
    with pytest.raises(ConfigError, match=r"sampler.cg_iters = -1"):
        DecomposedDiffusionSampler(cg_iters=-1)
    with pytest.raises(ConfigError, match=r"sampler.num_steps = 0"):
        DDIMSampler(num_steps=0)
    with pytest.raises(ValueError, match="one generator per batch element"):
        DecomposedDiffusionSampler(num_steps=2).sample(
            lambda x, t, c: x, SenseOperator(smooth_maps(2, 8), torch.ones(8)),
            torch.zeros(2, 2, 8, 8, dtype=torch.complex64), torch.zeros(1, 1, 1), None,
            (2, 2, 8, 8), generators_from_seeds([0]),
        )


@pytest.mark.parametrize("name", ["dds", "ddim"])
def test_hydra_configs_instantiate(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    sampler = instantiate(cfg)
    assert sampler.num_steps == 100 and sampler.guidance_scale == 1.0
    if name == "dds":
        assert isinstance(sampler, DecomposedDiffusionSampler)
        assert (sampler.eta, sampler.cg_iters, sampler.gamma) == (0.8, 5, 5.0)
    else:
        assert isinstance(sampler, DDIMSampler)
