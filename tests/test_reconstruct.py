"""``python -m metamri.reconstruct``: fastMRI files in, ``reconstruction`` (slices, H, W) out."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from metamri.data.fastmri_file import write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.metrics import psnr
from metamri.physics.fft import center_crop, fft2c_np
from metamri.reconstruct import acs_width, crop_readout, reconstruct
from tests.test_reconstructor import make_maps, make_module, save_checkpoint, smooth

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SLICES, COILS, READOUT, PHASE, RECON = 2, 4, 32, 16, (16, 16)


def write_file(path: Path, mask=None, seed: int = 0) -> np.ndarray:
    """A fastMRI brain file (2x readout oversampling) of a smooth object; returns |x| cropped."""
    rng = np.random.default_rng(seed)
    images = smooth(rng, (SLICES,), READOUT)[:, :, 8:24] * 1e-4  # (S, 32, 16), fastMRI-like units
    maps = make_maps(rng, COILS, READOUT)[:, :, 8:24]
    maps = maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    kspace = fft2c_np(maps[None] * images[:, None]).astype(np.complex64)
    target = np.abs(center_crop(images, RECON)).astype(np.float32)
    header = build_header(HeaderInfo(tr=9000.0, te=86.0, ti=2500.0, flip_angle=150.0,
                                     sequence_type="TurboSpinEcho", field_strength=1.5,
                                     encoded_matrix=(READOUT, PHASE, 1), recon_matrix=(*RECON, 1),
                                     num_slices=SLICES))
    if mask is not None:
        kspace = kspace * mask[None, None, None, :]
    write_fastmri_brain(path, kspace, None if mask is not None else target, acquisition="AXFLAIR",
                        patient_id="p0", header_xml=header, mask=mask)
    return target


def run(tmp_path: Path, inputs, **extra):
    args = {"inputs": str(inputs), "out_dir": str(tmp_path / "out"), "paths.output_dir": str(tmp_path),
            "mask.center_fraction": "0.2", "espirit.backend": "sigpy", "cs.n_iter": "20",
            "cs.backend": "sigpy", "sampler.num_steps": "2", **extra}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reconstruct", overrides=[f"{k}={v}" for k, v in args.items()])
    return reconstruct(cfg)


def test_helpers():
    mask = np.zeros(16, bool)
    mask[6:11] = True
    mask[0] = True
    assert acs_width(mask) == 5
    rng = np.random.default_rng(0)
    k = fft2c_np(rng.standard_normal((2, 32, 16)) + 0j)
    k[..., ~mask] = 0
    cropped = crop_readout(k, 16)
    assert cropped.shape == (2, 16, 16) and np.abs(cropped[..., ~mask]).max() < 1e-6
    # the readout crop is the image-domain centre crop
    from metamri.physics.fft import ifft2c_np
    np.testing.assert_allclose(ifft2c_np(cropped), center_crop(ifft2c_np(k), (16, 16)), atol=1e-6)


def test_zero_filled_full_file_mask_matches_the_image_and_cs_runs(tmp_path):
    full = np.ones(PHASE, np.float32)
    target = write_file(tmp_path / "in" / "file_brain_AXFLAIR_1.h5", mask=full)
    (out,) = run(tmp_path, tmp_path / "in", method="zero_filled")
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][()]
        assert f.attrs["method"] == "zero_filled" and f.attrs["acceleration"] == 1.0
    assert out.name == "file_brain_AXFLAIR_1.h5" and rec.shape == (SLICES, *RECON)
    assert rec.dtype == np.float32
    for s in range(SLICES):  # file units kept; full mask: A^H y is the image up to ESPIRiT's crop
        assert psnr(target[s], rec[s]) > 30, psnr(target[s], rec[s])

    (out_cs,) = run(tmp_path, tmp_path / "in" / "file_brain_AXFLAIR_1.h5", method="cs",
                    out_dir=str(tmp_path / "cs"))
    with h5py.File(out_cs, "r") as f:
        cs = f["reconstruction"][()]
    assert cs.shape == (SLICES, *RECON) and psnr(target[0], cs[0]) > 25


def test_fully_sampled_file_is_undersampled_by_the_configured_mask(tmp_path):
    target = write_file(tmp_path / "a.h5")
    (out,) = run(tmp_path, tmp_path / "a.h5", method="zero_filled", **{"mask.acceleration": "2",
                                                                        "mask.center_fraction": "0.45"})
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][()]
        assert f.attrs["acceleration"] == pytest.approx(2.0)
    assert rec.shape == (SLICES, *RECON)
    assert 10 < psnr(target[0], rec[0]) < 40


def test_diffusion_needs_a_checkpoint_and_runs_with_one(tmp_path):
    from metamri.errors import ConfigError

    write_file(tmp_path / "a.h5")
    with pytest.raises(ConfigError, match="prior"):
        run(tmp_path, tmp_path / "a.h5", method="diffusion")
    save_checkpoint(make_module(), tmp_path / "m.ckpt")
    (out,) = run(tmp_path, tmp_path / "a.h5", method="diffusion", prior=str(tmp_path / "m.ckpt"))
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][()]
    assert rec.shape == (SLICES, *RECON) and np.isfinite(rec).all()


def test_output_attrs_state_mask_acceleration_and_coil_maps(tmp_path):
    import json

    write_file(tmp_path / "a.h5")
    (out,) = run(tmp_path, tmp_path / "a.h5", method="cs")
    with h5py.File(out, "r") as f:
        attrs = dict(f.attrs)
    # 16 columns: the configured 20% centre is 3 lines, raised to min_center_lines = 8; the 4x
    # budget is 4 lines, so the centre alone is sampled: an effective 2x
    assert attrs["mask"] == ("Uniform1D(acceleration=4, center_fraction=0.2, with_replacement=True, "
                             "min_center_lines=8)")
    assert attrs["acceleration"] == pytest.approx(2.0) and attrs["acs_lines"] == 8
    assert attrs["coil_maps"] == "calibration" and json.loads(attrs["espirit"])["backend"] == "sigpy"
    assert json.loads(attrs["cs"])["n_iter"] == 20 and "p99" in attrs["scaling"]


def test_narrow_calibration_region_stops_with_the_file_and_acs_width(tmp_path):
    """A file's own mask with a 4-line centre: ESPIRiT from it is refused, naming file, slice, ACS."""
    from metamri.errors import DataFileError

    mask = np.zeros(PHASE, np.float32)
    mask[6:10] = 1  # 4 centred lines (W // 2 = 8)
    mask[[0, 3, 13]] = 1
    write_file(tmp_path / "in" / "file_brain_AXFLAIR_2.h5", mask=mask)
    with pytest.raises(DataFileError) as err:
        run(tmp_path, tmp_path / "in", method="zero_filled")
    msg = str(err.value)
    assert "file_brain_AXFLAIR_2.h5: slice 0:" in msg and "ACS 4 lines" in msg
    assert "at least 8" in msg and "min_center_lines" in msg


def test_reconstruct_refuses_settings_a_measured_file_cannot_have(tmp_path):
    from metamri.errors import ConfigError

    write_file(tmp_path / "a.h5")
    with pytest.raises(ConfigError, match="coil_maps = 'fully_sampled'"):
        run(tmp_path, tmp_path / "a.h5", method="zero_filled", coil_maps="fully_sampled")
    with pytest.raises(ConfigError, match="scaling = 'reference'"):
        run(tmp_path, tmp_path / "a.h5", method="zero_filled", scaling="reference")


def test_a_batch_goes_on_past_bad_files_mirrors_paths_and_skips_what_is_done(tmp_path, capsys):
    """Good files in two patient folders with the same name, a bad file among them: every good
    file gets its own output (P001/a.h5, P002/a.h5), the bad one is named in one line, the
    summary counts them, a rerun skips the finished outputs, and ``reconstruct`` raises the
    failure after trying every file."""
    from metamri.errors import DataFileError
    from metamri.reconstruct import reconstruct_all

    write_file(tmp_path / "in" / "P001" / "a.h5", seed=1)
    write_file(tmp_path / "in" / "P002" / "a.h5", seed=2)
    (tmp_path / "in" / "P001" / "broken.h5").write_bytes(b"\x89HDF\r\n")  # truncated signature
    args = {"inputs": str(tmp_path / "in"), "out_dir": str(tmp_path / "out"), "paths.output_dir": str(tmp_path),
            "mask.center_fraction": "0.2", "espirit.backend": "sigpy", "method": "zero_filled"}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("reconstruct", overrides=[f"{k}={v}" for k, v in args.items()])
    summary = reconstruct_all(cfg)
    err = capsys.readouterr().err.splitlines()
    assert [p.relative_to(tmp_path / "out").as_posix() for _, p in summary.done] == ["P001/a.h5", "P002/a.h5"]
    assert len(summary.failed) == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert str(tmp_path / "in" / "P001" / "broken.h5") in err[0] and "HDF5" in err[0]
    text = summary.format()
    assert text.startswith("reconstruct: 2 done, 0 skipped (up to date), 1 failed in ")
    assert "FAILED " + str(tmp_path / "in" / "P001" / "broken.h5") in text
    with h5py.File(tmp_path / "out" / "P001" / "a.h5") as a, h5py.File(tmp_path / "out" / "P002" / "a.h5") as b:
        assert not np.array_equal(a["reconstruction"][()], b["reconstruction"][()])  # two files, two outputs
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["P001", "P002", "a.h5", "a.h5"]

    again = reconstruct_all(cfg)  # up to date: nothing redone, the bad file tried again
    assert (len(again.done), len(again.skipped), len(again.failed)) == (0, 2, 1)
    with pytest.raises(DataFileError, match="broken.h5"):
        reconstruct(cfg)
    (tmp_path / "in" / "P001" / "broken.h5").unlink()
    write_file(tmp_path / "in" / "P002" / "a.h5", seed=3)  # a changed source is recomputed
    assert len(reconstruct(cfg)) == 2
    assert reconstruct_all(cfg).skipped and not reconstruct_all(cfg).done


def test_outputs_never_replace_the_inputs(tmp_path):
    from metamri.errors import ConfigError

    write_file(tmp_path / "a.h5")
    with pytest.raises(ConfigError, match="would replace the file itself"):
        run(tmp_path, tmp_path / "a.h5", method="zero_filled", out_dir=str(tmp_path))
