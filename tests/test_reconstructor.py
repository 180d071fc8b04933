"""Reconstructor (zero-filled / CS / diffusion per slice), sharding and the callback."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from metamri.data.sample import ImageSample
from metamri.errors import ConfigError
from metamri.evaluation import (
    ReconstructionCallback,
    Reconstructor,
    evaluate_split,
    make_panel,
    merge_rows,
    shard_indices,
)
from metamri.evaluation.reconstructor import slice_key
from metamri.metadata import Metadata
from metamri.metrics import MetricTable, psnr
from metamri.physics.masks import FileMask, Uniform1D
from metamri.sampling.dds import DecomposedDiffusionSampler
from metamri.training import MetaDiffusionModule

SIZE, COILS = 16, 4
UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
ENCODER = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", tr=9000, te=86,
                 ti=2500, flip_angle=150, field_strength=1.5)


# -- helpers shared with test_evaluate.py --------------------------------------------------------
def smooth(rng: np.random.Generator, shape: tuple[int, ...], size: int = SIZE) -> np.ndarray:
    """Smooth complex fields (..., size, size): low-frequency noise upsampled bicubically."""
    coarse = torch.from_numpy(rng.standard_normal((int(np.prod(shape)) * 2, 1, 4, 4)))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                           align_corners=False).numpy()
    fine = fine.reshape(*shape, 2, size, size)
    return fine[..., 0, :, :] + 1j * fine[..., 1, :, :]


def make_maps(rng: np.random.Generator, coils: int = COILS, size: int = SIZE) -> np.ndarray:
    """complex64 (C, H, W) smooth maps normalised to sum_c |S_c|^2 = 1 at every pixel."""
    maps = smooth(rng, (coils,), size) + 1.5
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))).astype(np.complex64)


def make_sample(fname: str = "file_a.h5", slice_index: int = 0, seed: int = 0) -> ImageSample:
    rng = np.random.default_rng(seed)
    image = smooth(rng, ())
    image = image / np.percentile(np.abs(image), 99)
    two = np.stack([image.real, image.imag]).astype(np.float32)
    return ImageSample(two, FLAIR.replace(slice=float(slice_index)), "brain", fname, slice_index, -1,
                       2.5, make_maps(rng))


def write_cache(cache_dir, n_files: int = 3, n_slices: int = 2) -> None:
    """A tiny cache in the layout of metamri/preprocess/cache.py, one patient per file."""
    from metamri.preprocess.cache import VolumeEntry, write_entry

    for v in range(n_files):
        samples = [make_sample(f"file_brain_AXFLAIR_{v}.h5", s, seed=10 * v + s) for s in range(n_slices)]
        entry = VolumeEntry(
            image=np.stack([s.image for s in samples]), maps=np.stack([s.maps for s in samples]),
            scale=np.full(n_slices, 2.5, np.float32), slice_index=np.arange(n_slices, dtype=np.int32),
            frame=np.full(n_slices, -1, np.int32), metadata=FLAIR, domain="brain",
            patient_id=f"pt{v}", fname=samples[0].fname, format="fastmri_brain",
            source={"path": "none", "size": 0, "mtime_ns": 0, "sha256": ""}, params={},
        )
        write_entry(cache_dir / f"file_brain_AXFLAIR_{v}.h5", entry)


def make_module(seed: int = 0) -> MetaDiffusionModule:
    torch.manual_seed(seed)
    return MetaDiffusionModule(unet=UNET, encoder=ENCODER, ema_decay=None).eval()


def save_checkpoint(module: MetaDiffusionModule, path) -> None:
    """A Lightning checkpoint that ``load_from_checkpoint`` rebuilds the module from."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)


def sampler(steps: int = 5, **kw) -> DecomposedDiffusionSampler:
    return DecomposedDiffusionSampler(num_steps=steps, **kw)


FULL = FileMask(np.ones(SIZE, dtype=bool))


# -- Reconstructor ---------------------------------------------------------------------------------
def test_zero_filled_with_full_mask_is_the_ground_truth_and_undersampling_is_not():
    sample = make_sample()
    full = Reconstructor(FULL, methods=("zero_filled",))(sample)
    assert full.methods == ["zero_filled"] and full.std is None
    p_full = psnr(full.images["ground_truth"], full.images["zero_filled"])
    assert p_full > 40, p_full
    gt = sample.image[0] + 1j * sample.image[1]
    np.testing.assert_allclose(full.images["ground_truth"], gt, atol=1e-6)

    under = Reconstructor(Uniform1D(acceleration=4, center_fraction=0.125), methods=("zero_filled",))(sample)
    assert under.mask.sum() == SIZE // 4
    p_under = psnr(under.images["ground_truth"], under.images["zero_filled"])
    assert p_under < p_full - 10, (p_under, p_full)


def test_mask_is_seeded_by_file_name():
    rec = Reconstructor(Uniform1D(acceleration=4, center_fraction=0.125), methods=("zero_filled",))
    a0 = rec(make_sample("vol_a.h5", 0, seed=1)).mask
    a1 = rec(make_sample("vol_a.h5", 1, seed=2)).mask
    np.testing.assert_array_equal(a0, a1)
    assert any(not np.array_equal(a0, rec(make_sample(f"vol_{c}.h5", 0)).mask) for c in "bcdefg")


def test_diffusion_with_full_mask_returns_ground_truth_and_is_reproducible():
    sample = make_sample()
    # full mask: data consistency pulls x0 to the truth; gamma large so that 5 steps of an
    # untrained network barely matter: x0_dc = (x0_hat + gamma x) / (1 + gamma)
    rec = Reconstructor(FULL, ("zero_filled", "diffusion"), sampler=sampler(gamma=100.0),
                        module=make_module(), ensemble=2)
    out = rec(sample)
    p = psnr(out.images["ground_truth"], out.images["diffusion"])
    assert p > 40, p
    assert out.std.shape == (SIZE, SIZE) and out.std.max() > 0  # K = 2 samples differ
    assert out.timings["diffusion"] > 0 and "diffusion/unet" in out.timings
    again = rec(sample)
    np.testing.assert_array_equal(out.images["diffusion"], again.images["diffusion"])


def test_diffusion_at_4x_beats_nothing_but_runs_and_scores(tmp_path):
    sample = make_sample()
    rec = Reconstructor(Uniform1D(acceleration=4, center_fraction=0.125),
                        ("zero_filled", "cs", "diffusion"), sampler=sampler(), module=make_module(),
                        cs={"n_iter": 10, "backend": "sigpy"})
    out = rec(sample)
    table = MetricTable()
    rows = rec.score(out, table)
    assert [r.method for r in rows] == ["zero_filled", "cs", "diffusion"]
    assert all(r.frame is None and r.fname == "file_a.h5" and r.slice == 0 for r in rows)
    assert rows[0].psnr == pytest.approx(psnr(out.images["ground_truth"], out.images["zero_filled"]))
    panel = make_panel(out, "diffusion")
    assert panel.shape == (SIZE, 5 * SIZE) and 0 <= panel.min() and panel.max() <= 1
    np.testing.assert_allclose(panel[:, :SIZE], np.abs(out.images["ground_truth"])
                               / np.abs(out.images["ground_truth"]).max(), atol=1e-6)


def test_ablation_drops_fields_and_changes_the_conditional_context():
    module = make_module()
    rec = Reconstructor(FULL, ("diffusion",), sampler=sampler(), module=module, drop_fields=["te", "tr"])
    meta = rec.ablate(FLAIR)
    assert meta.te is None and meta.tr is None and meta.contrast == "AXFLAIR"
    only = Reconstructor(FULL, ("diffusion",), sampler=sampler(), module=module, keep_fields=["contrast"])
    assert only.ablate(FLAIR).present() == ("contrast",)
    with torch.no_grad():
        # missing == dropped: the ablated record encodes like the drop mask on those fields
        fields = list(module.encoder.fields)
        drop = torch.tensor([[f in ("te", "tr") for f in fields]])
        np.testing.assert_allclose(module.context([meta]).numpy(),
                                   module.context([FLAIR], drop).numpy(), atol=1e-6)
        assert not torch.allclose(module.context([meta]), module.context([FLAIR]))
    with pytest.raises(Exception, match="nosuchfield"):
        Reconstructor(FULL, ("zero_filled",), drop_fields=["nosuchfield"])


def test_diffusion_needs_module_and_sampler():
    from metamri.errors import ConfigError

    with pytest.raises(ConfigError, match="diffusion"):
        Reconstructor(FULL, ("zero_filled", "diffusion"))
    with pytest.raises(ConfigError, match="methods"):
        Reconstructor(FULL, ("wavelets",))
    with pytest.raises(ConfigError, match="coil_maps = 'espirit'"):
        Reconstructor(FULL, ("zero_filled",), coil_maps="espirit")
    with pytest.raises(ConfigError, match="scaling = 'p95'"):
        Reconstructor(FULL, ("zero_filled",), scaling="p95")


def test_measured_scaling_is_undone_in_the_output():
    """scaling="measured": y / s is reconstructed and multiplied back, so a full mask still
    returns the ground truth in normalised units; zero-filled is independent of the scale."""
    sample = make_sample()
    ref = Reconstructor(FULL, ("zero_filled",))(sample)
    meas = Reconstructor(FULL, ("zero_filled",), scaling="measured")(sample)
    np.testing.assert_allclose(meas.images["zero_filled"], ref.images["zero_filled"], atol=1e-5)
    assert Reconstructor(FULL, ("zero_filled",), scaling="measured").describe()["scaling"] == "measured"


# -- one builder for evaluate, reconstruct and the callback --------------------------------------
def _group(*overrides: str):
    """The ``reconstruction`` group as the callback composes it (conf/callbacks/reconstruction.yaml)."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return cfg.callbacks.reconstruction


def test_the_callback_composes_the_shared_group_with_only_its_cheap_overrides():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import REPO

    cb_cfg = _group()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        ev = compose("evaluate")
    group = OmegaConf.to_container(cb_cfg.reconstruction)
    shared = {k: OmegaConf.to_container(ev)[k] for k in group}
    assert group["methods"] == ["zero_filled", "diffusion"] and group["sampler"]["num_steps"] == 50
    group["methods"], group["sampler"]["num_steps"] = shared["methods"], shared["sampler"]["num_steps"]
    assert group == shared  # everything else is the evaluation's setup
    cb = ReconstructionCallback(cb_cfg.reconstruction, every_n_val=cb_cfg.every_n_val)
    assert cb.methods == ("zero_filled", "diffusion") and cb.every_n_val == 5


def test_builder_finishes_the_sampler_with_the_module_schedule_and_the_guidance_knob():
    from metamri.evaluation.builder import build_reconstructor

    module = make_module()
    module.noise_scheduler.alphas_cumprod = module.noise_scheduler.alphas_cumprod ** 2  # not the default
    cfg = _group("callbacks.reconstruction.reconstruction.guidance_scale=3").reconstruction
    rec = Reconstructor.from_config(cfg, module)
    assert rec.sampler.guidance_scale == 3.0 and rec.sampler.num_steps == 50
    grid = rec.sampler.grid
    torch.testing.assert_close(grid.alpha_bar, module.noise_scheduler.alphas_cumprod[grid.timesteps].double())
    assert type(rec.mask).__name__ == "Uniform1D" and rec.mask.with_replacement
    assert rec.describe()["mask"] == ("Uniform1D(acceleration=4, center_fraction=0.08, "
                                      "with_replacement=True, min_center_lines=8)")
    # no prior: the diffusion method is refused, naming the key
    from metamri.errors import ConfigError

    with pytest.raises(ConfigError, match="prior"):
        build_reconstructor(cfg, None)
    with pytest.raises(ConfigError, match="cs.lamba"):
        build_reconstructor({**dict(cfg), "cs": {"lamba": 1.0}}, module, methods=["cs"])


def test_schedule_reaches_the_sampler():
    """The module's alphas_cumprod decide the sampler's DDIM grid."""
    from metamri.evaluation.builder import build_sampler

    module = make_module()
    conf = {"_target_": "metamri.sampling.dds.DecomposedDiffusionSampler", "num_steps": 4}
    default = build_sampler(conf)
    module.noise_scheduler.alphas_cumprod = torch.linspace(0.999, 0.5, 1000)
    finished = build_sampler(conf, module, 2.0)
    assert finished.guidance_scale == 2.0 and default.guidance_scale == 1.0
    torch.testing.assert_close(finished.grid.alpha_bar, torch.linspace(0.999, 0.5, 1000)[
        finished.grid.timesteps].double())
    assert not torch.allclose(default.grid.alpha_bar, finished.grid.alpha_bar)


# -- sharding ------------------------------------------------------------------------------------
def test_shards_of_two_ranks_merge_to_the_single_process_table():
    samples = [make_sample(f"f{v}.h5", s, seed=7 * v + s) for v in range(2) for s in range(2)]
    rec = Reconstructor(Uniform1D(acceleration=4, center_fraction=0.125), ("zero_filled", "diffusion"),
                        sampler=sampler(2), module=make_module())
    assert shard_indices(5, 0, 2) == [0, 2, 4] and shard_indices(5, 1, 2) == [1, 3]

    def rows(indices):
        table = MetricTable()
        for i in indices:
            rec.score(rec(samples[i]), table)
        return table.rows

    whole = evaluate_split(rec, samples)  # world size 1 (no process group)
    single = whole.table.rows
    assert whole.n_slices == 4 and len(single) == 8
    # rank 1 runs its shard in reverse order and repeats a slice: the merged table is unchanged
    r0, r1 = rows(shard_indices(4, 0, 2)), rows(list(reversed(shard_indices(4, 1, 2))) + [1])
    assert merge_rows([r1, r0]) == single
    assert [(r.fname, r.slice, r.method) for r in single[:3]] == [
        ("f0.h5", 0, "diffusion"), ("f0.h5", 0, "zero_filled"), ("f0.h5", 1, "diffusion")]
    assert slice_key(samples[0]).slice_id == "f0.h5:0:-1"


def test_a_batch_of_slices_equals_each_slice_alone_up_to_rounding():
    """B slices with their own masks, metadata and seeds in one sampler batch (K = 2 each):
    the same images as one at a time, to float32 rounding; a broken per-slice mask, context
    or seed order would move a slice by far more."""
    samples = [make_sample(f"vol_{c}.h5", s, seed=3 * i + s) for i, c in enumerate("abc") for s in (0, 1)]
    samples[2] = samples[2]._replace(metadata=FLAIR.replace(contrast="AXT1", te=10.0, tr=500.0, ti=None))
    rec = Reconstructor(Uniform1D(acceleration=4, center_fraction=0.125), ("zero_filled", "diffusion"),
                        sampler=sampler(4, guidance_scale=2.0), module=make_module(), ensemble=2)
    masks = {str(rec(s).mask.tolist()) for s in samples}
    assert len(masks) > 1  # the volumes' masks differ, so per-slice masks are exercised
    alone = [rec(s) for s in samples]
    batched = rec.reconstruct_batch(samples)
    assert [r.key for r in batched] == [r.key for r in alone]
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        scale = np.abs(a.images["diffusion"]).max()
        np.testing.assert_allclose(b.images["diffusion"], a.images["diffusion"], atol=1e-4 * scale)
        np.testing.assert_allclose(b.std, a.std, atol=1e-4 * scale)
        np.testing.assert_array_equal(b.images["zero_filled"], a.images["zero_filled"])
        assert b.timings["diffusion/batch"] == len(samples) and a.timings["diffusion/batch"] == 1
    # and the slices of the batch are not all alike (the comparison above has teeth)
    assert np.abs(batched[0].images["diffusion"] - batched[1].images["diffusion"]).max() > 1e-2 * scale

    table1 = evaluate_split(rec, samples).table
    table3 = evaluate_split(rec, samples, batch_size=4).table  # batches of 4 and 2
    assert [(r.fname, r.slice, r.method) for r in table1.rows] == [(r.fname, r.slice, r.method)
                                                                   for r in table3.rows]
    for r1, r3 in zip(table1.rows, table3.rows, strict=True):
        assert r3.psnr == pytest.approx(r1.psnr, abs=1e-3)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate_split(rec, samples, batch_size=0)


def test_a_batch_refuses_slices_of_different_sizes():
    small = make_sample()
    big = small._replace(image=np.zeros((2, SIZE, 2 * SIZE), np.float32),
                         maps=np.ones((COILS, SIZE, 2 * SIZE), np.complex64) / 2, fname="wide.h5")
    rec = Reconstructor(lambda shape, seed: np.ones(shape[-1], bool), ("zero_filled",))
    with pytest.raises(ValueError, match="batch_size=1"):
        rec.reconstruct_batch([small, big])
    assert rec.reconstruct_batch([]) == []


# -- callback --------------------------------------------------------------------------------------
class _Data(L.LightningDataModule):
    def __init__(self, samples):
        super().__init__()
        self.samples = samples

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        from metamri.data.batch import collate_images

        return DataLoader([s._replace(maps=None) for s in self.samples], batch_size=2,
                          collate_fn=collate_images)

    val_dataloader = train_dataloader
    test_dataloader = train_dataloader

    def train_metadata(self):
        return [s.metadata for s in self.samples]

    def eval_dataset(self, split, domain="brain", load_maps=True):
        return self.samples[:3] if split == "val" else self.samples


def test_callback_logs_val_metrics_and_writes_csv(tmp_path):
    samples = [make_sample(f"f{v}.h5", 0, seed=v) for v in range(4)]
    cb = ReconstructionCallback(
        {"mask": FileMask(np.ones(SIZE, dtype=bool)),
         "sampler": {"_target_": "metamri.sampling.dds.DecomposedDiffusionSampler", "num_steps": 3,
                     "gamma": 100.0},
         "methods": ["zero_filled", "diffusion"]},
        val_slices=2,
    )
    module = MetaDiffusionModule(unet=UNET, encoder=ENCODER, ema_decay=0.9)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[cb],
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_Data(samples))
    assert trainer.callback_metrics["val/psnr"] > 40  # full mask, gamma 100
    assert trainer.callback_metrics["val/psnr_zero_filled"] > 60
    csv = tmp_path / "reconstruction" / "val_step000001_metrics.csv"
    table = MetricTable.from_csv(csv)
    assert [(r.fname, r.method) for r in table] == [("f0.h5", "diffusion"), ("f0.h5", "zero_filled"),
                                                   ("f1.h5", "diffusion"), ("f1.h5", "zero_filled")]
    summary = (tmp_path / "reconstruction" / "val_step000001_summary.md").read_text()
    assert "| diffusion | 2 | 2 |" in summary
    assert "- mask: `FileMask(width=16, acceleration=1)`; effective acceleration 1.000x" in summary
    assert json.loads(json.dumps(float(trainer.callback_metrics["val/ssim"]))) <= 1.0


def test_trainer_test_scores_the_whole_test_split(tmp_path):
    """``trainer.test`` runs the module's test_step (fixed-noise loss) and the callback's test stage."""
    samples = [make_sample(f"f{v}.h5", 0, seed=v) for v in range(4)]
    cb = ReconstructionCallback(
        {"mask": FileMask(np.ones(SIZE, dtype=bool)),
         "sampler": {"_target_": "metamri.sampling.dds.DecomposedDiffusionSampler", "num_steps": 3,
                     "gamma": 100.0},
         "methods": ["zero_filled", "diffusion"]},
        every_n_val=0,
    )
    module = MetaDiffusionModule(unet=UNET, encoder=ENCODER)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], default_root_dir=tmp_path)
    (out,) = trainer.test(module, datamodule=_Data(samples))
    table = MetricTable.from_csv(tmp_path / "reconstruction" / "test_metrics.csv")
    assert sorted({r.fname for r in table}) == [f"f{v}.h5" for v in range(4)] and len(table) == 8
    assert out["test/psnr"] == pytest.approx(np.mean([r.psnr for r in table if r.method == "diffusion"]))
    assert out["test/psnr"] > 40
    # the denoising loss of the test split, at the fixed validation timesteps and noise
    module.eval()
    with torch.no_grad():
        per_sample = torch.cat([
            module._loss_at_fixed_t(b.image, module.validation_noise(b), module.context(b.metadata))
            for b in _Data(samples).test_dataloader()
        ])
    assert out["test/loss"] == pytest.approx(float(per_sample.mean()), rel=1e-5)


def test_wandb_panels_are_visible_images(tmp_path, monkeypatch):
    """The panels W&B stores are 0..255 images (a float [0, 1] panel was saved black)."""
    from lightning.pytorch.loggers import WandbLogger
    from PIL import Image

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    samples = [make_sample(f"f{v}.h5", 0, seed=v) for v in range(2)]
    cb = ReconstructionCallback({"mask": FileMask(np.ones(SIZE, dtype=bool)), "methods": ["zero_filled"]},
                                every_n_val=0, n_panels=1)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="metamri-test")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], default_root_dir=tmp_path)
    trainer.test(MetaDiffusionModule(unet=UNET, encoder=ENCODER), datamodule=_Data(samples))
    logger.experiment.finish()
    (png,) = (tmp_path / "wandb").rglob("media/images/test/*.png")
    pixels = np.asarray(Image.open(png).convert("L"))
    gt_tile = pixels[:, : pixels.shape[0]]
    assert pixels.shape == (SIZE, 5 * SIZE)
    assert gt_tile.max() == 255 and gt_tile.mean() > 20
