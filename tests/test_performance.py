"""metamri.models.performance: autocast, channels-last, compile, SDPA, and the sampler's GPU
hygiene (no device waits in the loop). CPU parity here; the CUDA checks run only on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metamri.errors import ConfigError
from metamri.evaluation import Reconstructor
from metamri.models.performance import Performance, attention_backends
from metamri.models.unet import build_unet
from metamri.physics.masks import Uniform1D
from metamri.physics.sense import SenseOperator
from metamri.sampling import DecomposedDiffusionSampler, ensemble_sample, ensemble_seeds
from metamri.sampling.noise import generators_from_seeds, randn_per_sample
from tests.test_reconstructor import make_module, make_sample, sampler

SIZE = 16


def _unet(seed: int = 0):
    torch.manual_seed(seed)
    return build_unet("tiny", cross_attention_dim=32, sample_size=SIZE).eval()


def _problem(batch: int = 2, coils: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, coils, SIZE, SIZE, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    x = torch.randn(batch, SIZE, SIZE, dtype=torch.complex64, generator=g)
    mask = torch.zeros(SIZE)
    mask[::3] = 1
    mask[SIZE // 2 - 2: SIZE // 2 + 2] = 1
    return maps, mask, SenseOperator(maps, mask).A(x)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="performance.precision"):
        Performance(precision="fp8")
    with pytest.raises(ConfigError, match="performance.compile_mode"):
        Performance(compile_mode="fastest")
    with pytest.raises(ConfigError, match="performance.tf32"):
        Performance(tf32="yes")
    with pytest.raises(ConfigError, match="performance.autocast"):
        Performance.from_config({"autocast": True})
    assert Performance.from_config(None) == Performance()
    assert Performance.from_config({"precision": "bf16"}).dtype is torch.bfloat16


def test_fp32_is_the_network_itself():
    def f(x, t, c):
        return x

    assert Performance().wrap(f) is f
    assert Performance(channels_last=True).wrap(f) is not f


@torch.no_grad()
def test_bf16_autocast_runs_the_unet_in_bf16_and_returns_float32_close_to_fp32():
    unet = _unet()
    seen: list[torch.dtype] = []
    hook = unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))

    def eps(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    x = torch.randn(2, 2, SIZE, SIZE)
    t = torch.tensor([500, 20])
    ctx = torch.randn(2, 4, 32)
    ref = eps(x, t, ctx)
    out = Performance(precision="bf16").wrap(eps)(x, t, ctx)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]  # the second call really ran in bf16
    assert out.dtype == torch.float32
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel  # bf16 has 8 mantissa bits: about 1% through the tiny UNet


def test_dds_under_bf16_stays_close_to_fp32_and_keeps_complex64():
    unet = _unet()

    def eps(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    maps, mask, y = _problem()
    ctx = torch.randn(1, 4, 32)
    dds = DecomposedDiffusionSampler(num_steps=6)
    seeds = ensemble_seeds("perf", 2)
    ref = ensemble_sample(dds, eps, y, maps, mask, ctx, None, 1, seeds).mean
    low = ensemble_sample(dds, Performance(precision="bf16").wrap(eps), y, maps, mask, ctx, None, 1, seeds).mean
    assert low.dtype == torch.complex64
    rel = float((low - ref).abs().norm() / ref.abs().norm())
    assert 0 < rel < 0.05, rel


@torch.no_grad()
def test_channels_last_changes_the_layout_not_the_numbers():
    unet, ref_unet = _unet(), _unet()
    perf = Performance(channels_last=True)
    perf.prepare(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t, ctx = torch.randn(2, 2, SIZE, SIZE), torch.tensor([3, 900]), torch.randn(2, 4, 32)
    out = perf.wrap(lambda a, b, c: unet(a, b, encoder_hidden_states=c).sample)(x, t, ctx)
    ref = ref_unet(x, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.is_contiguous()


def test_compile_is_in_place_and_keeps_the_state_dict_keys():
    unet = _unet()
    keys = list(unet.state_dict())
    Performance(compile=True).prepare(unet)  # lazy: nothing is compiled until a forward
    assert list(unet.state_dict()) == keys
    assert unet._compiled_call_impl is not None


def test_every_attention_block_runs_scaled_dot_product_attention():
    backends = attention_backends(_unet())
    assert backends and all(name.endswith("2_0") for name in backends), backends


def test_reconstructor_records_the_precision_and_stays_close():
    sample = make_sample()
    mask = Uniform1D(acceleration=4, center_fraction=0.125)
    ref = Reconstructor(mask, ("zero_filled", "diffusion"), sampler=sampler(4), module=make_module())
    low = Reconstructor(mask, ("zero_filled", "diffusion"), sampler=sampler(4), module=make_module(),
                        performance=Performance(precision="bf16"))
    assert "precision" not in ref.describe() and low.describe()["precision"] == "bf16"
    a, b = ref(sample).images["diffusion"], low(sample).images["diffusion"]
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 0.05, rel


def test_cpu_noise_is_the_same_draw_as_before():
    gens = generators_from_seeds([1, 2])
    noise = randn_per_sample(gens, (2, 4, 4), torch.float32, torch.device("cpu"))
    expect = torch.stack([torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    torch.testing.assert_close(noise, expect, rtol=0, atol=0)


@pytest.mark.parametrize(("scale", "k"), [(1.0, 1), (0.0, 1), (2.0, 1), (2.0, 3)])
def test_the_sampler_never_reads_a_device_value_back_on_the_meta_device(scale, k):
    """The CPU stand-in for the GPU check below. A meta tensor has shapes but no values, so
    everything that would make the host wait for a GPU (``.item()``, ``bool(t)``, ``float(t)``,
    ``.tolist()``, ``.cpu()``, boolean indexing, ``nonzero``) raises on it. The whole sampler,
    UNet, CFG halves, FFTs, CG and per-sample noise included, must run on meta end to end."""
    meta = torch.device("meta")
    with pytest.raises(RuntimeError, match="meta"):  # the mechanism this test relies on
        bool(torch.ones(2, device=meta).all())

    unet = _unet().to(meta)

    def eps(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    maps, mask, y = (v.to(meta) for v in _problem())
    ctx = torch.zeros(1, 4, 32, device=meta)
    dds = DecomposedDiffusionSampler(num_steps=5, guidance_scale=scale)
    seeds = ensemble_seeds("file_brain_AXT2_0_0.h5:3", 2 * k)
    out = ensemble_sample(dds, eps, y, maps, mask, ctx, ctx, k, seeds)
    assert out.mean.device == meta and tuple(out.mean.shape) == (2, SIZE, SIZE) and out.mean.is_complex()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_sampler_loop_never_waits_for_the_gpu():  # pragma: no cover - GPU only
    """Under sync-debug 'warn' every host-device synchronisation warns; a sync per step would
    give at least ``steps`` warnings, the loop may give none (the final timing sync is one)."""
    import warnings

    unet = _unet().cuda()

    def eps(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    maps, mask, y = (v.cuda() for v in _problem())
    ctx = torch.randn(1, 4, 32, device="cuda")
    steps = 8
    dds = DecomposedDiffusionSampler(num_steps=steps)
    op = SenseOperator(maps, mask)
    dds.sample(eps, op, y, ctx, None, (2, 2, SIZE, SIZE), generators_from_seeds([1, 2]))  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dds.sample(eps, op, y, ctx, None, (2, 2, SIZE, SIZE), generators_from_seeds([1, 2]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 2, [str(w.message) for w in syncs]
