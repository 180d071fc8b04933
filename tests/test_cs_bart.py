"""The project's CS baseline against a direct ``bart pics`` command line, on a 320 x 320 file.

A fastMRI-format phantom file at fastMRI's size (k-space 640 x 320, 4 coils, one slice) goes
through what ``metamri.reconstruct`` does for ``method=cs`` (calibration-region ESPIRiT maps,
the paper's mask, p99 scaling, ``compressed_sensing`` with the configured weight, back to file
units, magnitude at the recon size). The reference is ``bart pics`` run by hand on the same
maps and mask with the k-space in the file's units: ``-w <scale>`` divides the data by the same
scale so that ``-r`` is the same weight, ``-S`` multiplies the image back; BART's own cycle
spinning as configured (on by default). Both are scored
against the file's ``reconstruction_rss``.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.skipif(shutil.which("bart") is None, reason="needs the BART command line"),
              pytest.mark.slow]  # ~40 s on 2 cores (phantom at 320, two 100-iteration solves)


@pytest.fixture(scope="module")
def file320(tmp_path_factory):
    from metamri.phantom.generate import generate_domain

    root = tmp_path_factory.mktemp("p320")
    generate_domain("brain", root, seed=0, image_size=320, patients=1, volumes_per_patient=1,
                    slices=1, coils=4)
    (path,) = sorted((root / "multicoil_train").glob("*.h5"))
    return path


def _direct_bart_pics(y, maps, mask, lamda, n_iter, scale, spin, tmp_path):
    """``bart pics -l1 -r lamda -i n_iter -w scale -S [-n] --wavelet dau2 -p pattern k sens out``
    (``-n``, no cycle spinning, only when the project's config turns it off)."""
    from metamri.bart import read_cfl, write_cfl

    write_cfl(tmp_path / "k", np.transpose(y, (1, 2, 0))[:, :, None, :])      # (x, y, 1, coils)
    write_cfl(tmp_path / "s", np.transpose(maps, (1, 2, 0))[:, :, None, :])
    write_cfl(tmp_path / "p", np.broadcast_to(mask[None, :], y.shape[1:])[:, :, None].astype(np.complex64))
    cmd = ["bart", "pics", "-l1", "-r", str(lamda), "-i", str(n_iter), "-w", str(scale), "-S",
           *([] if spin else ["-n"]), "--wavelet", "dau2", "-p", str(tmp_path / "p"), str(tmp_path / "k"), str(tmp_path / "s"),
           str(tmp_path / "x")]
    subprocess.run(cmd, check=True, capture_output=True)
    return read_cfl(tmp_path / "x").reshape(y.shape[1:])


def test_project_cs_matches_direct_bart_pics_within_0_3_db(file320, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from metamri.data.readers import open_volume
    from metamri.evaluation.builder import build_reconstructor
    from metamri.evaluation.reconstructor import SliceKey
    from metamri.metrics import psnr
    from metamri.preprocess.espirit import EspiritParams
    from metamri.preprocess.measured import prepare_slice
    from metamri.preprocess.mvue import crop_or_pad
    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("reconstruct", overrides=["inputs=x", "method=cs"])
    rec = build_reconstructor(cfg, None, methods=("cs",))
    lamda, n_iter = float(cfg.cs.lamda), int(cfg.cs.n_iter)
    (item,) = list(open_volume(file320))
    mask = rec.mask(item.kspace.shape[-2:], seed=file320.name)
    assert item.kspace.shape[-1] == 320 and mask[160 - 12: 160 + 13].all()  # 8% of 320: 25 lines
    m = prepare_slice(item.kspace, mask, item.recon_size, EspiritParams.from_config(cfg.espirit), path=file320)
    images, _, _ = rec.reconstruct_kspace(SliceKey(file320.name, 0, None), item.metadata,
                                          torch.from_numpy(m.y), torch.from_numpy(m.maps), m.mask)
    project = np.abs(crop_or_pad(images["cs"] * m.scale, m.recon_size))
    spin = bool(cfg.cs.cycle_spinning)
    direct = np.abs(crop_or_pad(_direct_bart_pics(m.y * m.scale, m.maps, m.mask, lamda, n_iter, m.scale,
                                                  spin, tmp_path), m.recon_size))
    zf = np.abs(crop_or_pad(images["zero_filled"] * m.scale, m.recon_size))
    from metamri.recon.baselines import compressed_sensing

    cs_kw = {k: v for k, v in rec.cs.items() if k != "backend"}
    sig = np.abs(crop_or_pad(compressed_sensing(m.y, m.maps, m.mask, backend="sigpy", **cs_kw) * m.scale,
                             m.recon_size))
    target = item.target
    p_project, p_direct, p_zf, p_sig = psnr(target, project), psnr(target, direct), psnr(target, zf), psnr(target, sig)
    with capsys.disabled():
        print(f"\n320x320: project CS ({rec.cs.get('backend', 'auto')}) {p_project:.3f} dB, direct bart pics "
              f"{p_direct:.3f} dB (difference {p_project - p_direct:+.3f} dB), sigpy backend {p_sig:.3f} dB "
              f"({p_sig - p_direct:+.3f} dB), zero-filled {p_zf:.3f} dB")
    assert abs(p_project - p_direct) < 0.3
    assert abs(p_sig - p_direct) < 0.5  # the fallback backend solves the same problem
    assert p_project > p_zf + 1.0
