"""Real data without traps: presets at the real size, no silent crop, evaluation over volumes of
different k-space widths with coil maps computed on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sigpy.mri
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from metamri.data.batch import collate_images
from metamri.data.fastmri_file import write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.data.readers import open_volume
from metamri.datamodules import SliceDataModule
from metamri.errors import ConfigError
from metamri.evaluation.reconstructor import Reconstructor
from metamri.metrics import psnr
from metamri.physics.fft import fft2c_np
from metamri.physics.masks import FileMask
from metamri.preprocess.espirit import EspiritParams, estimate_maps
from metamri.preprocess.mvue import crop_or_pad, from_two_channel, mvue
from tests.conftest import REPO

REAL = ("fastmri_brain", "cmrxrecon", "fastmri_cmrxrecon")


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):  # resolvable without a Hydra run
        cfg.paths.root_dir = "/tmp/metamri-presets"
        cfg.paths.output_dir = "/tmp/metamri-presets/run"
    return cfg


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_real_presets_are_real_size_without_phantom(name):
    data = compose_train([f"data={name}"]).data
    assert data.preprocess.image_size == 320 and data.phantom is None
    assert data.max_open_files == 64 and data._target_ == "metamri.datamodules.SliceDataModule"
    expect = {"fastmri_brain": ["brain"], "cmrxrecon": ["cardiac"], "fastmri_cmrxrecon": ["brain", "cardiac"]}
    missing = sorted(k for k in data.sources if OmegaConf.is_missing(data.sources, k))
    assert missing == expect[name]
    assert (data.ood_ratio is None) == (name != "fastmri_cmrxrecon")
    assert list(data.preprocess.allow_crop or []) == ([] if name == "fastmri_brain" else ["cardiac"])


@pytest.mark.parametrize(("name", "key"), [("fastmri_brain", "brain"), ("cmrxrecon", "cardiac"),
                                           ("fastmri_cmrxrecon", "cardiac")])
def test_real_presets_name_the_missing_source(name, key, tmp_path):
    overrides = [f"data={name}"]
    if name == "fastmri_cmrxrecon":
        overrides.append(f"data.sources.brain={tmp_path}")
    with pytest.raises(MissingMandatoryValue, match=rf"data\.sources\.{key}"):
        instantiate(compose_train(overrides).data)


def test_an_experiment_keeps_the_real_preset_given_on_the_command_line(tmp_path):
    cfg = compose_train(["+experiment=ood_additive", "data=fastmri_cmrxrecon",
                         f"data.sources.brain={tmp_path}/b", f"data.sources.cardiac={tmp_path}/c"])
    dm = instantiate(cfg.data)
    assert dm.ood_ratio == (1, 5) and dm.phantom is None and dm.preprocess_kwargs["image_size"] == 320
    assert dm.allow_crop == {"cardiac"} and dm.pool.max_open == 64


@pytest.mark.parametrize("name", ["brain", "cardiac", "mixed", *REAL])
def test_data_presets_compose_the_espirit_group(name, tmp_path):
    """``data.preprocess.espirit`` is ``conf/espirit/default.yaml`` (overridable), and the data
    module hands it to preprocessing as an :class:`EspiritParams`."""
    overrides = [f"data={name}", "data.preprocess.espirit.backend=sigpy", "data.preprocess.espirit.calib_size=12"]
    data = compose_train(overrides).data
    for key in [k for k in data.sources if OmegaConf.is_missing(data.sources, k)]:
        data.sources[key] = str(tmp_path / key)
    assert EspiritParams.from_config(data.preprocess.espirit) == EspiritParams(backend="sigpy", calib_size=12)
    assert "espirit_backend" not in data.preprocess and "calib_size" not in data.preprocess
    dm = instantiate(data)
    assert EspiritParams.from_config(dm.preprocess_kwargs["espirit"]) == EspiritParams(backend="sigpy", calib_size=12)


def test_the_phantom_default_is_unchanged():
    data = compose_train([]).data  # train.yaml: data=mixed over brain.yaml
    assert data.preprocess.image_size == 64 and data.phantom.image_size == 64
    assert data.sources.brain.endswith("phantom/brain") and data.sources.cardiac.endswith("phantom/cardiac")
    assert data.preprocess.allow_crop is False


# -- no silent crop -----------------------------------------------------------------------------


def write_brain_file(path: Path, *, width: int, recon: tuple[int, int], slices: int = 2, coils: int = 4,
                     readout: int = 64, seed: int = 0) -> np.ndarray:
    """A fastMRI brain file, k-space (slices, coils, readout, width), object in the central half of
    the readout; returns the true images in the (readout // 2, width) field of view."""
    rng = np.random.default_rng(seed)
    h = readout // 2
    y, x = np.meshgrid(np.linspace(-1, 1, readout), np.linspace(-1, 1, width), indexing="ij")
    images = []
    for s in range(slices):
        obj = ((y / 0.42) ** 2 + (x * width / 32 / 0.8) ** 2 < 1) * (0.8 + 0.2 * np.cos(3 * x + s))
        images.append(obj * np.exp(1j * (rng.uniform(-2, 2) + 0.7 * y - 0.4 * x)))
    images = np.stack(images)
    maps = sigpy.mri.birdcage_maps((coils, readout, width))
    kspace = fft2c_np(maps[None] * images[:, None]).astype(np.complex64)
    info = HeaderInfo(tr=9000.0, te=86.0, ti=2500.0, flip_angle=150.0, sequence_type="TurboSpinEcho",
                      field_strength=3.0, encoded_matrix=(readout, width, 1),
                      recon_matrix=(*recon, 1), num_slices=slices)
    rss = np.abs(crop_or_pad(images, recon)).astype(np.float32)
    write_fastmri_brain(path, kspace, rss, acquisition="AXFLAIR", patient_id=path.stem, header_xml=build_header(info))
    return crop_or_pad(images, (h, width))


def test_the_64px_default_on_real_size_files_stops_with_what_to_set(tmp_path):
    """brain.yaml (64 px) pointed at a real-size file (recon 320 x 320) without data.preprocess.image_size."""
    raw = tmp_path / "raw"
    raw.mkdir()
    # one slice, one coil: the check reads only the header, before any ESPIRiT work
    write_brain_file(raw / "file_brain_AXFLAIR_200_6002447.h5", width=368, recon=(320, 320), slices=1, coils=1,
                     readout=640)
    cfg = compose_train(["data=brain", f"data.sources.brain={raw}", "data.phantom=null",
                         f"data.cache_dir={tmp_path / 'cache'}"])
    dm = instantiate(cfg.data)
    with pytest.raises(ConfigError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert msg.startswith("config data.preprocess.image_size = [64, 64]: smaller than the recon size 320 x 320 of "
                          f"{raw / 'file_brain_AXFLAIR_200_6002447.h5'}: every slice would be centre-cropped to "
                          "64 x 64. set data.preprocess.image_size=320 "), msg
    assert "data.preprocess.allow_crop=true" in msg
    assert not list((tmp_path / "cache").rglob("*.h5"))
    with pytest.raises(ConfigError, match=r"data\.preprocess\.allow_crop = \['liver'\]"):
        SliceDataModule(sources={"brain": str(raw)}, cache_dir=str(tmp_path), preprocess={"allow_crop": ["liver"]})


# -- volumes of different widths in one evaluation ----------------------------------------------


@pytest.fixture(scope="module")
def widths(tmp_path_factory):
    """Three fastMRI files, k-space widths 36, 44 and 32 (readout 64, recon 32 x 32 in the header)."""
    root = tmp_path_factory.mktemp("widths")
    raw = root / "raw"
    raw.mkdir()
    truth = {}
    for i, w in enumerate((36, 44, 32)):
        name = f"file_brain_AXFLAIR_{w:03d}_{i:07d}.h5"
        truth[name] = write_brain_file(raw / name, width=w, recon=(32, 32), seed=i)
    return root, truth


def test_an_evaluation_split_mixing_widths_serves_one_size_with_maps(widths, one_thread):
    root, truth = widths
    dm = SliceDataModule(
        sources={"brain": str(root / "raw")}, cache_dir=str(root / "cache"),
        split_fractions={"train": 0.0, "val": 0.0, "test": 1.0},
        preprocess={"espirit": {"backend": "sigpy", "calib_size": 12}, "image_size": 32, "progress": False},
    )
    dm.prepare_data()
    ds = dm.eval_dataset("test", "brain", load_maps=True)
    assert len(ds) == 6 and sorted({ds[i].fname for i in range(6)}) == sorted(truth)
    recon = Reconstructor(FileMask(np.ones(32, dtype=bool)), methods=("zero_filled",))
    samples = [ds[i] for i in range(len(ds))]
    for s in samples:
        assert s.image.shape == (2, 32, 32) and s.image.dtype == np.float32
        assert s.maps.shape == (4, 32, 32) and s.maps.dtype == np.complex64
        img = from_two_channel(s.image) * s.scale
        true = crop_or_pad(truth[s.fname][s.slice_index], (32, 32))
        obj = np.abs(true) > 0.1
        assert np.linalg.norm(np.abs(img)[obj] - np.abs(true)[obj]) / np.linalg.norm(true[obj]) < 1e-3
        # the maps belong to this image: ESPIRiT of this file's k-space, cropped from its own width
        k = open_volume(root / "raw" / s.fname)[s.slice_index].kspace
        full = estimate_maps(k, backend="sigpy", calib_size=12)
        np.testing.assert_array_equal(s.maps, crop_or_pad(full, (32, 32)))
        np.testing.assert_allclose(img, crop_or_pad(mvue(k, full), (32, 32)), atol=1e-5 * np.abs(img).max())
        # and the reconstruction pipeline accepts them: a full mask gives back the image
        result = recon(s)
        assert psnr(result.images["ground_truth"], result.images["zero_filled"]) > 40
    widths_seen = {open_volume(root / "raw" / s.fname).kspace_shape[2] for s in samples}
    assert widths_seen == {32, 36, 44}
    batch = collate_images(samples)
    assert tuple(batch.image.shape) == (6, 2, 32, 32) and tuple(batch.maps.shape) == (6, 4, 32, 32)
    # maps were written for the evaluated items only, one file per slice, and none in the entries
    maps_files = sorted(p.relative_to(root / "cache" / "brain" / "maps").as_posix()
                        for p in (root / "cache" / "brain" / "maps").rglob("*.h5"))
    assert maps_files == sorted(f"{Path(n).stem}/s{s:04d}.h5" for n in truth for s in range(2))


def test_a_recon_size_wider_than_image_size_is_refused(tmp_path):
    """A header whose reconSpace keeps the whole width (32 x 44) next to image_size 32: refused
    rather than cropped (the same check catches any file larger than the configured size)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_brain_file(raw / "file_brain_x.h5", width=44, recon=(32, 44))
    dm = SliceDataModule(sources={"brain": str(raw)}, cache_dir=str(tmp_path / "cache"),
                         preprocess={"image_size": 32, "progress": False})
    with pytest.raises(ConfigError, match=r"image_size = \[32, 32\]: smaller than the recon size 32 x 44 .*"
                                          r"image_size=\[32,44\]"):
        dm.prepare_data()
