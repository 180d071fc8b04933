"""``python -m metamri.preprocess`` end to end on the phantom (as ``python -m metamri.phantom`` writes it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

import metamri
from metamri.phantom.generate import generate_dataset
from metamri.preprocess.__main__ import run
from metamri.preprocess.cache import read_entry
from metamri.preprocess.mvue import from_two_channel

CONF_DIR = str(Path(metamri.__file__).resolve().parents[1] / "conf")


def compose(overrides):
    """The CLI's config, composed as ``python -m metamri.preprocess <overrides>`` would."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("preprocess", overrides=overrides)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The phantom (what ``python -m metamri.phantom`` writes), small: 2 brain volumes
    (k-space 64 x 32, 8 coils, 2 slices) and 2 cine volumes (sax, lax; 2 frames)."""
    root = tmp_path_factory.mktemp("phantom")
    generate_dataset(
        root,
        seed=0,
        brain={"patients": 1, "volumes_per_patient": 2, "slices": 2, "image_size": 32},
        cardiac={"patients": 1, "frames": 2, "sax_slices": 1, "lax_slices": 1, "image_size": 32},
    )
    return root


def test_cli_processes_in_workers_then_skips_everything(phantom, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = [f"input_dir={phantom}", f"cache_dir={cache}", "image_size=32", "progress=false"]
    # the real command line, with two worker processes
    first = subprocess.run(
        [sys.executable, "-m", "metamri.preprocess", *args, "workers=2", f"hydra.run.dir={tmp_path / 'h'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert first.returncode == 0, first.stderr
    assert "4 processed (8 items), 0 up to date (skipped), 0 failed" in first.stdout
    entries = sorted(cache.rglob("*.h5"))
    assert [p.relative_to(cache).as_posix() for p in entries] == [
        "brain/file_brain_AXFLAIR_001_0000000.h5", "brain/file_brain_AXT1POST_001_0000001.h5",
        "cardiac/P001_lax.h5", "cardiac/P001_sax.h5",
    ]
    for p in entries:
        e = read_entry(p)
        assert e.image.shape[1:] == (2, 32, 32) and e.maps.shape[2:] == (32, 32)
        assert e.params["image_size"] == [32, 32] and e.params["espirit"]["backend"] == "bart"
        for img in from_two_channel(e.image):
            assert np.percentile(np.abs(img), 99) == pytest.approx(1.0, rel=1e-4)
    cine = read_entry(cache / "cardiac" / "P001_sax.h5")
    np.testing.assert_array_equal(cine.frame, [0, 1])
    assert cine.metadata.view == "SAX" and cine.metadata.tr is not None  # from the phantom's sidecar

    assert run(compose(args + ["workers=0"])) == 0  # inline, same config: nothing to do
    assert "0 processed (0 items), 4 up to date (skipped), 0 failed" in capsys.readouterr().out
    assert not list(cache.rglob("*.tmp"))


def test_cli_reports_each_failed_file_and_exits_non_zero(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "file_brain_broken.h5").write_bytes(b"\x00" * 64)
    assert run(compose([f"input_dir=[{raw}]", f"cache_dir={tmp_path / 'c'}", "progress=false"])) == 1
    out = capsys.readouterr().out
    assert "0 processed (0 items), 0 up to date (skipped), 1 failed" in out
    assert f"FAILED {raw / 'file_brain_broken.h5'}: DataFileError: " in out
    assert "not a readable HDF5 file" in out


def test_cli_rejects_bad_configuration(tmp_path, capsys):
    assert run(compose([f"input_dir={tmp_path}", "espirit.backend=matlab"])) == 2
    assert "espirit.backend = 'matlab': unknown ESPIRiT backend" in capsys.readouterr().err
    assert run(compose([f"input_dir={tmp_path / 'nope'}"])) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert run(compose([])) == 2  # no default for the raw data: one line naming the key
    assert "error: config input_dir = '???': missing mandatory value" in capsys.readouterr().err
