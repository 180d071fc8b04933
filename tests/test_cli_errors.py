"""The shared one-line error handling (:mod:`metamri.utils.cli`) and the cases issue 12 named."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from metamri.errors import ConfigError, DataFileError
from metamri.utils import cli


def test_user_errors_print_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        with cli.user_errors():
            raise DataFileError("/data/a.h5", "two\nlines", field="kspace")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: /data/a.h5: kspace: two lines\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        with cli.user_errors():
            _ = 1 / 0


def test_errors_wrapped_by_instantiate_and_missing_values_are_user_errors():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(Exception) as wrapped:
        instantiate({"_target_": "metamri.physics.masks.Uniform1D", "acceleration": "abc"})
    assert type(wrapped.value).__name__ == "InstantiationException"
    found = cli.user_error(wrapped.value)
    assert isinstance(found, ConfigError) and found.key == "mask.acceleration"
    with pytest.raises(MissingMandatoryValue) as missing:
        _ = OmegaConf.create({"inputs": "???"}).inputs
    assert "config inputs = '???': missing mandatory value" in str(cli.user_error(missing.value))
    assert cli.user_error(ValueError("x")) is None


def test_debug_switch_re_raises(monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ConfigError):
        with cli.user_errors():
            raise ConfigError("k", 1, "bad")
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert not cli.debug_enabled()


def fake_run_dir(monkeypatch, tmp_path, subdir=".hydra"):
    logs = tmp_path / "logs"
    out = logs / "evaluate" / "runs" / "2026-01-01" / "10-00-00_abc"
    (out / ".hydra").mkdir(parents=True)
    for name in cli.HYDRA_FILES:
        (out / ".hydra" / name).write_text("x: 1\n")
    handler = logging.FileHandler(out / "evaluate.log")
    logging.getLogger().addHandler(handler)
    monkeypatch.setattr(cli, "_hydra_output_dir", lambda: (out, subdir))
    return logs, out, handler


def test_a_bare_run_dir_goes_with_its_empty_parents(monkeypatch, tmp_path):
    logs, out, handler = fake_run_dir(monkeypatch, tmp_path)
    assert cli.remove_bare_run_dir(logs) == out.resolve()
    assert not out.exists() and list(logs.iterdir()) == [] and handler not in logging.getLogger().handlers


def test_a_run_dir_with_results_is_kept(monkeypatch, tmp_path):
    logs, out, handler = fake_run_dir(monkeypatch, tmp_path)
    (out / "reconstruction").mkdir()
    (out / "reconstruction" / "test_progress.rank0.jsonl").write_text("{}\n")
    try:
        assert cli.remove_bare_run_dir(logs) is None and (out / ".hydra" / "config.yaml").exists()
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child never removes the parent's directory
        (out / "reconstruction" / "test_progress.rank0.jsonl").unlink()
        (out / "reconstruction").rmdir()
        assert cli.remove_bare_run_dir(logs) is None and out.exists()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


# -- the cases issue 12 named ---------------------------------------------------------------------


def test_ood_ratio_zero_names_the_key_not_a_type_error(tmp_path):
    from metamri.datamodules import SliceDataModule

    with pytest.raises(ConfigError, match=r"data.ood_ratio = 0: must be \[ood, in_distribution\]"):
        SliceDataModule(sources={"brain": str(tmp_path), "cardiac": str(tmp_path)}, cache_dir=str(tmp_path),
                        ood_ratio=0)


def test_guidance_scale_that_is_not_a_number_names_the_key():
    from metamri.evaluation.builder import build_sampler

    with pytest.raises(ConfigError, match="guidance_scale = 'abc': must be a finite number"):
        build_sampler({"_target_": "metamri.sampling.ddim.DDIMSampler", "num_steps": 2}, None, "abc")


def test_width_one_kspace_is_the_kspaces_fault_not_the_masks():
    from metamri.preprocess.measured import check_kspace_shape, prepare_slice

    k = np.ones((4, 32, 1), np.complex64)
    with pytest.raises(DataFileError) as err:
        prepare_slice(k, np.ones(1, bool), (16, 1), path="w.h5", where="slice 0")
    assert "w.h5: kspace: slice 0: the k-space has 32 readout sample(s) x 1 phase-encode line(s)" in str(err.value)
    assert "mask" not in str(err.value)
    with pytest.raises(DataFileError, match="no coils"):
        check_kspace_shape(np.ones((0, 32, 16), np.complex64), "z.h5")


@pytest.mark.skipif(not __import__("metamri.bart", fromlist=["bart_available"]).bart_available(),
                    reason="BART is not installed")
def test_bart_failures_are_one_line_without_the_temporary_path():
    from metamri.bart import BartError, run_bart

    with pytest.raises(BartError) as err:
        run_bart(["ecalib", "-m1", "-r", "8"], [np.zeros((32, 16, 1, 0), np.complex64)])
    msg = str(err.value)
    assert "\n" not in msg and "metamri-bart-" not in msg and "failed with exit code" in msg


def test_zero_coils_never_reach_espirit():
    from metamri.preprocess.espirit import EspiritParams

    with pytest.raises(ValueError, match="no coils"):
        EspiritParams(backend="sigpy", calib_size=8).estimator()(np.zeros((0, 32, 16), np.complex64))


KILLED_TASK = """
import os, signal, sys, time
import hydra
from metamri.utils.cli import hydra_task
from metamri.utils.io import atomic_output

out = sys.argv.pop(1)
wrap = hydra_task() if sys.argv.pop(1) == "hydra_task" else (lambda f: f)

@hydra.main(config_path=None, version_base="1.3")
@wrap
def task(cfg):
    with atomic_output(os.path.join(out, "done.txt")) as tmp:
        tmp.write_text("complete")
    with atomic_output(os.path.join(out, "result.h5")) as tmp:
        tmp.write_text("half of it")
        os.kill(os.getpid(), signal.SIGTERM)   # scancel / kill / a SLURM time limit, mid-write
        time.sleep(30)
        tmp.write_text("all of it")

task()
"""


@pytest.mark.parametrize("wrap", ["hydra_task", "bare"])
def test_sigterm_mid_write_leaves_no_temporary_file(tmp_path, wrap):
    """Under :func:`hydra_task` SIGTERM ends the command with status 143 after the half-written
    file's temporary is removed; the finished output stays. The bare control shows why: Python's
    default SIGTERM kills the process without running ``finally``, and the ``.tmp`` stays."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "task.py"
    script.write_text(KILLED_TASK)
    proc = subprocess.run([sys.executable, str(script), str(out), wrap, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120)
    left = sorted(p.name for p in out.iterdir())
    if wrap == "hydra_task":
        assert proc.returncode == 143, proc.stderr
        assert left == ["done.txt"], left
        assert "stopped by SIGTERM" in proc.stderr and "Traceback" not in proc.stderr
    else:
        assert proc.returncode == -15, proc.stderr
        assert "done.txt" in left and any(name.startswith(".result.h5.") and name.endswith(".tmp") for name in left)


def test_termination_handlers_are_restored_after_the_task():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with cli.exit_on_termination():
        assert signal.getsignal(signal.SIGTERM) is cli._raise_exit
        with pytest.raises(SystemExit) as exit_:
            signal.raise_signal(signal.SIGTERM)
    assert exit_.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_status_turns_a_termination_into_its_status_after_the_clean_up(tmp_path):
    """The argparse tools (export) return through exit_status: SIGTERM there is status 143, and
    the file being written is gone."""
    import signal

    from metamri.utils.io import atomic_output

    def export():
        with atomic_output(tmp_path / "prior.safetensors") as tmp:
            tmp.write_bytes(b"half")
            signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    assert cli.exit_status(export) == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
