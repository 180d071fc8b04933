"""A held-out corpus of bad inputs through every command line: one line, a non-zero exit, nothing left.

The tests write the corpus themselves: malformed raw files of every kind the readers accept
(fastMRI HDF5 and CMRxRecon MATLAB v7.3), bad config values for every tool, and bad
checkpoints. Each goes through every command that accepts it; each must end with exactly one
line on stderr that names the file or the key (``error: ...``, never a traceback), a non-zero
exit status, and nothing half-written: no output file, cache entry, temporary file, Hydra run
directory or W&B run. Batch commands (``preprocess``, ``reconstruct``, ``inspect``) take the
whole corpus in one call (one line per bad file, the good file still done). Config and
checkpoint cases run the Hydra ``main`` in this process, as ``python -m`` would (same argv,
same run directory handling), and one case per command runs as a real subprocess.

:data:`CASES` counts inputs x commands.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from metamri.data.cmrxrecon_file import write_cmrxrecon_cine
from metamri.data.fastmri_file import write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")

# -- the raw-file corpus -------------------------------------------------------------------------

HEADER = build_header(HeaderInfo(tr=9000.0, te=86.0, ti=2500.0, flip_angle=150.0, sequence_type="TurboSpinEcho",
                                 field_strength=1.5, encoded_matrix=(32, 16, 1), recon_matrix=(16, 16, 1),
                                 num_slices=1))
#: Malformed files and what their one line must say (besides the file's name).
BAD_FILES = {
    "empty.h5": "not a readable HDF5 file",
    "text.h5": "not a readable HDF5 file",
    "truncated.h5": "truncated HDF5 file",
    "no_kspace.h5": "kspace: missing dataset",
    "broken_header.h5": "not a valid ISMRMRD XML header",
    "html_header.h5": "not a valid ISMRMRD XML header",
    "zero_coils.h5": "no coils",
    "wrong_rank.h5": "expected 4 dimensions",
    "real_dtype.h5": "expected complex data",
    "nan.h5": "non-finite",
    "inf.h5": "non-finite",
    "width1.h5": "phase-encode line",
    "cine/P001/cine_sax.mat": "not a readable HDF5 file",  # empty
    "cine/P002/cine_sax.mat": "truncated HDF5 file",
    "cine/P003/cine_sax.mat": "kspace_full: missing dataset",  # the wrong variable
    "cine/P004/cine_lax.mat": "expected 5 dimensions",
}
#: What only reading the k-space values (or reconstructing) can find: ``inspect`` describes
#: these (it reads the header and shapes) and exits 0.
DESCRIBED_BY_INSPECT = ("nan.h5", "inf.h5", "width1.h5")
#: ``preprocess`` says what ESPIRiT refuses about a width-1 k-space.
PREPROCESS_SAYS = {"width1.h5": "smaller than the calibration block"}


def kspace(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def brain(path: Path, k: np.ndarray, header: str = HEADER) -> Path:
    return write_fastmri_brain(path, k, None, acquisition="AXFLAIR", patient_id="p", header_xml=header)


def write_bad_files(root: Path) -> None:
    """Every file of :data:`BAD_FILES` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.h5").write_bytes(b"")
    (root / "text.h5").write_text("not HDF5 at all\n")
    data = brain(root / "whole.h5", kspace((1, 4, 32, 16))).read_bytes()
    (root / "whole.h5").unlink()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    with h5py.File(root / "no_kspace.h5", "w") as f:
        f.create_dataset("other", data=np.zeros(3))
    brain(root / "broken_header.h5", kspace((1, 4, 32, 16)), header="<ismrmrdHeader><encoding>")
    brain(root / "html_header.h5", kspace((1, 4, 32, 16)), header="<html><body>not ISMRMRD</body></html>")
    for name, value in (("zero_coils.h5", np.zeros((1, 0, 32, 16), np.complex64)),
                        ("wrong_rank.h5", kspace((4, 32, 16))),
                        ("real_dtype.h5", np.ones((1, 4, 32, 16), np.float32))):
        with h5py.File(root / name, "w") as f:  # everything else as a fastMRI file has it
            f.create_dataset("kspace", data=value)
            f.create_dataset("ismrmrd_header", data=HEADER.encode())
            f.attrs["acquisition"], f.attrs["patient_id"] = "AXFLAIR", "p"
    for name, bad in (("nan.h5", np.nan), ("inf.h5", np.inf)):
        k = kspace((1, 4, 32, 16))
        k[0, 0, 3, 3] = bad
        brain(root / name, k)
    brain(root / "width1.h5", kspace((1, 4, 32, 1)),
          header=build_header(HeaderInfo(tr=9000.0, te=86.0, ti=2500.0, flip_angle=150.0,
                                         sequence_type="TurboSpinEcho", field_strength=1.5,
                                         encoded_matrix=(32, 1, 1), recon_matrix=(16, 1, 1))))
    cine = root / "cine"
    for p in ("P001", "P002", "P003", "P004"):
        (cine / p).mkdir(parents=True, exist_ok=True)
    (cine / "P001" / "cine_sax.mat").write_bytes(b"")
    data = write_cmrxrecon_cine(cine / "P002" / "cine_sax.mat", kspace((2, 1, 4, 12, 16))).read_bytes()
    (cine / "P002" / "cine_sax.mat").write_bytes(data[: len(data) // 2])
    write_cmrxrecon_cine(cine / "P003" / "cine_sax.mat", None, extra={"foo": np.zeros((3, 3))})
    write_cmrxrecon_cine(cine / "P004" / "cine_lax.mat", None, extra={"kspace_full": kspace((4, 12, 16))})


# -- checkpoints ---------------------------------------------------------------------------------

#: Bad priors / resume checkpoints and what their one line must say.
BAD_CHECKPOINTS = {
    "truncated.ckpt": "not a readable torch checkpoint",
    "random.ckpt": "not a readable torch checkpoint",
    "not_a_prior": "not",  # a directory: "is not a prior" / "is a directory, not a ... file"
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``{"bad": malformed raw files, "good": one good brain file, "ckpt": bad checkpoints,
    "cache": an evaluation cache, "model": a good checkpoint, "root": the folder}``."""
    from tests.test_reconstruct import write_file
    from tests.test_reconstructor import make_module, save_checkpoint, write_cache

    root = tmp_path_factory.mktemp("bad_inputs")
    write_bad_files(root / "bad")
    write_file(root / "good" / "file_brain_AXFLAIR_1.h5", seed=1)
    (root / "cache" / "brain").mkdir(parents=True)
    write_cache(root / "cache" / "brain", n_files=2, n_slices=2)
    save_checkpoint(make_module(), root / "model.ckpt")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    data = (root / "model.ckpt").read_bytes()
    (ckpt / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (ckpt / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (ckpt / "not_a_prior").mkdir()
    (ckpt / "not_a_prior" / "notes.txt").write_text("not a prior\n")
    return {"root": root, "bad": root / "bad", "good": root / "good", "ckpt": ckpt, "cache": root / "cache",
            "model": root / "model.ckpt"}


# -- bad config values, per command --------------------------------------------------------------

TRAIN_CONFIG = [  # (overrides, what the line names)
    (["data.ood_ratio=0"], "data.ood_ratio = 0"),
    (["data.batch_size=0"], "data.batch_size = 0"),
    (["data.split_fractions={train: 0.5, val: 0.1, test: 0.1}"], "data.split_fractions"),
    (["optimizer.lr=-1"], "optimizer.lr = -1"),
    (["module.ema_decay=1.5"], "module.ema_decay = 1.5"),
    (["trainer.max_steps=abc"], "trainer.max_steps = 'abc'"),
    (["seed=abc"], "seed = 'abc'"),
    (["dropout.p=2"], "dropout.p = 2"),
    (["timesteps.ranges.cardiac=[0.9,0.1]"], "timesteps.ranges.cardiac"),
    (["finetune=lora", "finetune.rank=0"], "finetune.rank = 0"),
    (["data.preprocess.image_size=0"], "data.preprocess.image_size"),
    (["ckpt_path={root}/missing.ckpt"], "ckpt_path = "),
]
EVALUATE_CONFIG = [
    (["data.ood_ratio=0"], "data.ood_ratio = 0"),
    (["guidance_scale=abc"], "guidance_scale = 'abc'"),
    (["max_slices=0"], "max_slices = 0"),
    (["items_per_volume=0"], "items_per_volume = 0"),
    (["batch_size=0"], "batch_size = 0"),
    (["ensemble=0"], "ensemble = 0"),
    (["mask.acceleration=abc"], "mask.acceleration = 'abc'"),
    (["mask.center_fraction=2"], "mask.center_fraction = 2"),
    (["cs.n_iter=0"], "cs.n_iter = 0"),
    (["+cs.bogus=1"], "cs.bogus"),
    (["sampler.num_steps=0"], "sampler.num_steps = 0"),
    (["split=bogus"], "split = 'bogus'"),
    (["methods=[foo]"], "methods = ['foo']"),
    (["coil_maps=x"], "coil_maps = 'x'"),
    (["drop_fields=[nope]"], "drop_fields = ['nope']"),
    (["corrupt.missing_rate=2"], "corrupt.missing_rate = 2"),
    (["corrupt.wrong_fields=[tr]"], "corrupt.wrong_fields = ['tr']"),
    (["wandb.mode=bogus"], "wandb.mode = 'bogus'"),
    (["espirit.backend=matlab"], "espirit.backend = 'matlab'"),
    (["prior={root}/missing.ckpt"], "prior = "),
]
RECONSTRUCT_CONFIG = [
    (["method=foo"], "method = 'foo'"),
    (["inputs={root}/missing"], "inputs = "),
    (["inputs=null"], "inputs"),
    (["method=diffusion", "prior={model}", "guidance_scale=abc"], "guidance_scale = 'abc'"),
    (["method=diffusion"], "prior = None"),
    (["device=tpu9"], "device = 'tpu9'"),
    (["coil_maps=fully_sampled"], "coil_maps = 'fully_sampled'"),
    (["mask.acceleration=0"], "mask.acceleration = 0"),
    (["espirit.calib_size=abc"], "espirit.calib_size"),
    (["overwrite=maybe"], "overwrite = 'maybe'"),
    (["corrupt.shuffle=true"], "corrupt.shuffle = True"),
]
INFORMATION_CONFIG = [
    (["max_items=0"], "max_items = 0"),
    (["batch_size=-1"], "batch_size = -1"),
    (["split=bogus"], "split = 'bogus'"),
    (["device=tpu9"], "device = 'tpu9'"),
    (["prior=null"], "prior = None"),
    (["timesteps=[1000]"], "timestep_grid = [1000]"),
    (["data.ood_ratio=0"], "data.ood_ratio = 0"),
]
PREPROCESS_CONFIG = [
    (["espirit.backend=matlab"], "espirit.backend = 'matlab'"),
    (["workers=-1"], "workers = -1"),
    (["image_size=0"], "image_size"),
    (["cardiac_frames=[]"], "cardiac_frames = []"),
    (["cine_maps=x"], "cine_maps = 'x'"),
    (["input_dir={root}/missing"], "input_dir = "),
    (["~input_dir"], "input_dir = '???': missing mandatory value"),
]
PHANTOM_CONFIG = [
    (["brain.patients=-1"], "brain.patients = -1"),
    (["cardiac.image_size=15"], "cardiac.image_size = 15"),
    (["noise.snr=abc"], "noise.snr = 'abc'"),
    (["seed=abc"], "seed = 'abc'"),
    (["preset=nope"], "preset = 'nope'"),
    (["cardiac.phase_fraction=x"], "cardiac.phase_fraction = 'x'"),
]
REPORT_CONFIG = [
    (["manifest={root}/none.yaml", "out_dir={root}/report"], "manifest = "),
    (["manifest={root}/bad.yaml", "out_dir={root}/report"], "not valid YAML"),
    (["manifest={root}/bad.yaml"], "out_dir = '???'"),
    (["manifest={root}/bad.yaml", "out_dir={root}/report", "source=bogus"], "source = 'bogus'"),
]
EXPORT_ARGS = [  # argv (besides CKPT OUT_DIR of a good checkpoint)
    (["--layout", "nope"], "layout = 'nope'"),
    (["--layout", "contextmri", "--dtype", "float16"], "dtype = 'float16'"),
    (["--layout", "metamri", "--dtype", "int8"], "dtype = 'int8'"),
]
#: Commands whose prior / checkpoint argument takes each of :data:`BAD_CHECKPOINTS`.
CHECKPOINT_COMMANDS = ("train", "evaluate", "reconstruct", "information", "export")
#: Raw-file commands: each takes every file of :data:`BAD_FILES`.
FILE_COMMANDS = ("inspect", "preprocess", "reconstruct")
CONFIG_CASES = {"train": TRAIN_CONFIG, "evaluate": EVALUATE_CONFIG, "reconstruct": RECONSTRUCT_CONFIG,
                "information": INFORMATION_CONFIG, "preprocess": PREPROCESS_CONFIG, "phantom": PHANTOM_CONFIG,
                "report": REPORT_CONFIG, "export": EXPORT_ARGS}
#: Inputs x commands of this module: files x raw-file commands + config values + checkpoints x commands.
CASES = (len(BAD_FILES) * len(FILE_COMMANDS) + sum(len(v) for v in CONFIG_CASES.values())
         + len(BAD_CHECKPOINTS) * len(CHECKPOINT_COMMANDS))


def base_args(command: str, c: dict, work: Path) -> list[str]:
    """Overrides under which ``command`` would run (and fail only on the bad value added)."""
    logs = f"paths.log_dir={work / 'logs'}"
    root = f"paths.root_dir={work}"
    if command == "train":
        return [root, logs, "trainer.max_steps=1", "data.num_workers=0"]  # W&B logger on: no run may appear
    if command == "evaluate":
        return [root, logs, f"data.cache_dir={c['cache']}", f"data.sources.brain={work / 'raw'}", "data.phantom=null",
                "data.split_fractions={train: 0.0, val: 0.0, test: 1.0}", "prepare_data=false",
                f"prior={c['model']}", "sampler.num_steps=2", "lpips=false", "cs.backend=sigpy",
                "wandb.mode=offline"]
    if command == "reconstruct":
        return [root, logs, f"inputs={c['good']}", f"out_dir={work / 'out'}", "method=zero_filled",
                "espirit.backend=sigpy"]
    if command == "information":
        return [root, logs, f"prior={c['model']}", f"data.cache_dir={c['cache']}", f"data.sources.brain={work / 'raw'}",
                "data.phantom=null", "data.split_fractions={train: 0.0, val: 0.0, test: 1.0}", "split=test",
                "prepare_data=false", f"out={work / 'info.csv'}", "device=cpu"]
    if command == "preprocess":
        return [root, logs, f"input_dir={c['good']}", f"cache_dir={work / 'cache'}", "progress=false"]
    if command == "phantom":
        return [root, logs, f"out_dir={work / 'phantom'}"]
    if command == "report":
        return []
    raise KeyError(command)


MAINS = {"train": "metamri.train", "evaluate": "metamri.evaluate", "reconstruct": "metamri.reconstruct",
         "information": "metamri.information", "preprocess": "metamri.preprocess.__main__",
         "phantom": "metamri.phantom.__main__", "report": "metamri.report.__main__"}


def hydra_in_process(command: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``python -m metamri.<command> argv`` in this process: ``(status, stdout, stderr)``.

    Imported (not ``__main__``), Hydra needs the config directory spelled out; the root
    logger's handlers (Hydra configures job logging) are put back afterwards.
    """
    import importlib

    main = importlib.import_module(MAINS[command]).main
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "argv", [f"metamri.{command}", f"--config-path={CONF}", *argv])
    capsys.readouterr()
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
    out = capsys.readouterr()
    return status, out.out, out.err


def one_error_line(err: str, *words: str) -> str:
    """``err`` is exactly one ``error: ...`` line holding every one of ``words``; return it."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def nothing_left(work: Path) -> None:
    """No run directory, output, cache entry, W&B run or temporary file under ``work``."""
    left = [p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()]
    assert left == [], left
    dirs = [p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_dir() and p.name != "logs"]
    assert dirs == [], dirs


def argv(command: str, c: dict, work: Path, args: list[str], root: Path) -> list[str]:
    """:func:`base_args` with ``args`` (``{root}``, ``{model}``, ``{ckpt}`` filled in) replacing
    the base's value of the same key; ``~key`` removes the key from the base."""
    extra = [a.replace("{root}", str(root)).replace("{model}", str(c["model"])).replace("{ckpt}", str(c["ckpt"]))
             for a in args]
    keys = {a.lstrip("~+").split("=", 1)[0] for a in extra}
    base = [a for a in base_args(command, c, work) if a.split("=", 1)[0] not in keys]
    return base + [a for a in extra if not a.startswith("~")]


# -- raw files: the batch commands ---------------------------------------------------------------


def stderr_lines_per_file(err: str, files: list[str]) -> dict[str, str]:
    """Each stderr line must be ``error: ...`` naming exactly one of ``files``; returns file -> line."""
    assert "Traceback" not in err, err
    found: dict[str, str] = {}
    for line in err.splitlines():
        assert line.startswith("error: "), line
        named = [f for f in files if f"/{f}:" in line]
        assert len(named) == 1, (line, named)
        assert named[0] not in found, ("named twice", line)
        found[named[0]] = line
    return found


def test_inspect_names_each_bad_file_in_one_line(corpus, capsys):
    from metamri.inspect import main

    for name, says in BAD_FILES.items():
        status = main([str(corpus["bad"] / name)])
        out = capsys.readouterr()
        if name in DESCRIBED_BY_INSPECT:
            assert status == 0 and out.err == "" and '"format": "fastmri_brain"' in out.out, name
        else:
            assert status == 1 and out.out == "", name
            one_error_line(out.err, name, says)
    # the real command line over the whole corpus: one line per rejected file, status 1
    proc = subprocess.run([sys.executable, "-m", "metamri.inspect", *sorted(str(p) for p in corpus["bad"].rglob("*")
                                                                              if p.is_file())],
                          capture_output=True, text=True, timeout=300, cwd=corpus["root"])
    assert proc.returncode == 1
    found = stderr_lines_per_file(proc.stderr, list(BAD_FILES))
    assert sorted(found) == sorted(set(BAD_FILES) - set(DESCRIBED_BY_INSPECT))
    assert "no coils" in found["zero_coils.h5"]


def test_preprocess_names_each_bad_file_and_writes_no_entry(corpus, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "metamri.preprocess", f"input_dir={corpus['bad']}", f"cache_dir={cache}",
         "progress=false", "espirit.calib_size=8", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    found = stderr_lines_per_file(proc.stderr, list(BAD_FILES))
    assert sorted(found) == sorted(BAD_FILES)
    for name, line in found.items():
        assert PREPROCESS_SAYS.get(name, BAD_FILES[name]) in line, line
        assert "metamri-bart-" not in line and "private cfl" not in line, line  # no BART temp paths
    assert f"0 processed (0 items), 0 up to date (skipped), {len(BAD_FILES)} failed" in proc.stdout
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_reconstruct_goes_on_past_bad_files_and_writes_only_whole_outputs(corpus, tmp_path):
    inputs = tmp_path / "in"
    write_bad_files(inputs)
    (inputs / "good").mkdir()
    (inputs / "good" / "file_brain_AXFLAIR_1.h5").write_bytes((corpus["good"] / "file_brain_AXFLAIR_1.h5").read_bytes())
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "metamri.reconstruct", f"inputs={inputs}", f"out_dir={out}", "method=zero_filled",
         "mask.center_fraction=0.2", "espirit.backend=sigpy", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    found = stderr_lines_per_file(proc.stderr, list(BAD_FILES))
    assert sorted(found) == sorted(BAD_FILES)
    for name, line in found.items():
        assert BAD_FILES[name] in line, line
    assert "mask" not in found["width1.h5"]  # the k-space's fault, not the mask's
    summary = proc.stdout[proc.stdout.index("reconstruct: "):]
    assert summary.startswith(f"reconstruct: 1 done, 0 skipped (up to date), {len(BAD_FILES)} failed in ")
    assert all(f"  FAILED {inputs / name}: " in summary for name in BAD_FILES)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["good/file_brain_AXFLAIR_1.h5"]  # no partial output, no temporary file


# -- bad config values and checkpoints through the Hydra commands --------------------------------


def config_cases():
    for command, cases in CONFIG_CASES.items():
        if command == "export":
            continue
        for args, says in cases:
            yield pytest.param(command, args, says, id=f"{command}:{' '.join(args)}")


@pytest.mark.parametrize(("command", "args", "says"), list(config_cases()))
def test_bad_config_value_is_one_line_before_anything_exists(corpus, tmp_path, monkeypatch, capsys, command,
                                                             args, says):
    if command == "report":
        (tmp_path / "bad.yaml").write_text("tables: [\n")
    work = tmp_path / "work"
    work.mkdir()
    status, out, err = hydra_in_process(command, argv(command, corpus, work, args, tmp_path), monkeypatch, capsys)
    assert status == 2, (out, err)
    one_error_line(err, says)
    nothing_left(work)
    assert not (tmp_path / "report").exists()


def checkpoint_cases():
    for name, says in BAD_CHECKPOINTS.items():
        for command in CHECKPOINT_COMMANDS:
            yield pytest.param(command, name, says, id=f"{command}:{name}")


@pytest.mark.parametrize(("command", "name", "says"), list(checkpoint_cases()))
def test_bad_checkpoint_is_one_line_naming_it(corpus, tmp_path, monkeypatch, capsys, command, name, says):
    ckpt = corpus["ckpt"] / name
    work = tmp_path / "work"
    work.mkdir()
    if command == "export":
        from metamri.export import main

        assert main([str(ckpt), str(work / "exported")]) == 1
        one_error_line(capsys.readouterr().err, name, says)
        nothing_left(work)
        return
    key = "ckpt_path" if command == "train" else "prior"
    extra = ["method=diffusion"] if command == "reconstruct" else []
    status, out, err = hydra_in_process(command, argv(command, corpus, work, [*extra, f"{key}={ckpt}"], tmp_path),
                                        monkeypatch, capsys)
    assert status == 2, (out, err)
    one_error_line(err, name, says)
    nothing_left(work)


@pytest.mark.parametrize(("args", "says"), EXPORT_ARGS)
def test_bad_export_option_is_one_line(corpus, tmp_path, capsys, args, says):
    from metamri.export import main

    assert main([str(corpus["model"]), str(tmp_path / "exported"), *args]) == 1
    one_error_line(capsys.readouterr().err, says)
    assert not list(tmp_path.iterdir())


# -- the real command lines ----------------------------------------------------------------------

SUBPROCESS_CASES = [  # one per Hydra command (the in-process cases above run the same mains)
    ("train", ["data.ood_ratio=0"], "data.ood_ratio = 0"),
    ("evaluate", ["max_slices=0"], "max_slices = 0"),
    ("reconstruct", ["guidance_scale=abc", "method=diffusion", "prior={model}"], "guidance_scale = 'abc'"),
    ("information", ["prior={ckpt}/random.ckpt"], "random.ckpt"),
    ("preprocess", ["workers=-1"], "workers = -1"),
    ("phantom", ["cardiac.image_size=15"], "cardiac.image_size = 15"),
]


@pytest.mark.parametrize(("command", "args", "says"), SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_command_line_prints_one_line_and_leaves_no_run_dir(corpus, tmp_path, command, args, says):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("METAMRI_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", MAINS[command].removesuffix(".__main__"),
                           *argv(command, corpus, work, args, tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, says)
    nothing_left(work)


def test_debug_switch_shows_the_traceback(corpus, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("METAMRI_DEBUG", "1")
    status, _, err = hydra_in_process("evaluate", argv("evaluate", corpus, work, ["max_slices=0"], tmp_path),
                                      monkeypatch, capsys)
    assert status == 1 and "Traceback" in err and "max_slices = 0" in err
    nothing_left(work)  # the bare run directory goes even so


def test_the_corpus_covers_every_command():
    assert set(CONFIG_CASES) | set(FILE_COMMANDS) | set(CHECKPOINT_COMMANDS) | {"inspect"} == {
        "train", "evaluate", "reconstruct", "preprocess", "inspect", "report", "export", "information", "phantom"}
    assert CASES == 16 * 3 + 12 + 20 + 11 + 7 + 7 + 6 + 4 + 3 + 3 * 5
