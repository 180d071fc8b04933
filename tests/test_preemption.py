"""Preemption that saves: SIGTERM / SIGUSR1 write ``last.ckpt`` at a step boundary and exit
``128 + signum``; a resume reproduces the uninterrupted run; checkpoints are written atomically;
``last.ckpt`` is kept current every N steps / T minutes without waiting for validation.

The first tests send real signals to real ``python -m metamri.train`` processes on the tiny
phantom (12 steps of batch 2: 7 batches an epoch, so a run crosses an epoch boundary and one
validation); the rest run a toy model in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils.data import TensorDataset

from metamri.datamodules.ratio_sampler import RatioSampler
from metamri.datamodules.resumable import ResumableDataLoader, ResumableRandomSampler
from metamri.training.checkpointing import AtomicCheckpointIO, LastCheckpoint, save_atomic
from metamri.training.preemption import (
    EXIT_SIGTERM,
    Preempted,
    PreemptionCheckpoint,
    preempted_exit_code,
)
from tests.conftest import REPO

MAX_STEPS = 12


def _train_args(data: dict[str, Path], run: Path, probe: Path, *extra: str, sleep_s: float = 0.0) -> list[str]:
    return [
        sys.executable, "-m", "metamri.train",
        f"paths.root_dir={run.parent}", f"hydra.run.dir={run}", f"paths.cache_dir={data['cache']}",
        "data.phantom=null", f"data.sources.brain={data['raw'] / 'brain'}",
        f"data.sources.cardiac={data['raw'] / 'cardiac'}", "data.num_workers=0",
        "data.preprocess.espirit.backend=sigpy", "data.preprocess.espirit.calib_size=12",
        "data.preprocess.image_size=32", "data.preprocess.cardiac_frames=all", "data.batch_size=2",
        f"trainer.max_steps={MAX_STEPS}", "trainer.enable_progress_bar=false", "logger=csv",
        "~callbacks.rich_progress_bar", "~callbacks.reconstruction",
        "+callbacks.pace._target_=tests.preemption_probe.Pace", f"+callbacks.pace.out_dir={probe}",
        f"+callbacks.pace.sleep_s={sleep_s}", *extra,
    ]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"training did not finish:\n{log.read_text()[-4000:]}") from None


def _wait_for_step(proc: subprocess.Popen, probe: Path, log: Path, step: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before step {step}:\n"
                                 f"{log.read_text()[-4000:]}")
        try:
            reached = int((probe / "step").read_text())
        except (FileNotFoundError, ValueError):
            reached = 0
        if reached >= step:
            return reached
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s:\n{log.read_text()[-4000:]}")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint entry, by its key path."""
    out: dict[str, torch.Tensor] = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        if torch.is_tensor(v):
            out[f"{prefix}{k}"] = v
        else:
            out.update(_tensors(v, f"{prefix}{k}."))
    return out


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)


def _batches(probe: Path) -> list[dict]:
    return [json.loads(line) for line in (probe / "batches.jsonl").read_text().splitlines()]


def test_sigterm_saves_last_ckpt_and_the_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    from metamri.training.module import MetaDiffusionModule

    ref_run, run = tmp_path / "reference", tmp_path / "preempted"
    ref_probe, probe = tmp_path / "reference_probe", tmp_path / "preempted_probe"
    # the uninterrupted run goes on beside the one that is stopped
    ref = _start(_train_args(tiny_data, ref_run, ref_probe), tmp_path / "reference.log")
    proc = _start(_train_args(tiny_data, run, probe, sleep_s=0.4), tmp_path / "preempted.log")
    at_signal = _wait_for_step(proc, probe, tmp_path / "preempted.log", 3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = _finish(proc, tmp_path / "preempted.log")
    log = (tmp_path / "preempted.log").read_text()
    assert rc == EXIT_SIGTERM == 143, log[-4000:]

    last = run / "checkpoints" / "last.ckpt"
    ckpt = _load(last)
    step = ckpt["global_step"]
    print(f"\nSIGTERM at step {at_signal}: exit {rc} after {time.monotonic() - t0:.1f} s, "
          f"last.ckpt at global step {step}")
    assert at_signal <= step < MAX_STEPS and step <= at_signal + 1  # the next step boundary
    assert f"saved {last} at step {step}" in log
    assert not list(last.parent.glob(".*.tmp"))  # no temporary file left over
    # the loader's place in the epoch, the training generator and the EMA at the same step
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": step, "sampler": None}]
    assert len(ckpt["train_generator"]) == 1 and ckpt["ema"]["num_updates"] == step
    module = MetaDiffusionModule.load_from_checkpoint(last, map_location="cpu")
    assert module.ema.num_updates == step

    resumed = _start(_train_args(tiny_data, run, probe, f"ckpt_path={last}"), tmp_path / "resumed.log")
    assert _finish(resumed, tmp_path / "resumed.log") == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    assert _finish(ref, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-4000:]

    a, b = _load(ref_run / "checkpoints" / "last.ckpt"), _load(last)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    diffs = {
        "weights": _max_abs_diff(_tensors(a["state_dict"]), _tensors(b["state_dict"])),
        "ema": _max_abs_diff(_tensors(a["ema"]["shadow"]), _tensors(b["ema"]["shadow"])),
        "adam": _max_abs_diff(_tensors(a["optimizer_states"]), _tensors(b["optimizer_states"])),
    }
    print(f"max |uninterrupted - resumed| at step {MAX_STEPS}: {diffs}")
    # one process, one thread, the same batches and random draws: bit for bit
    assert diffs == {"weights": 0.0, "ema": 0.0, "adam": 0.0}
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] == MAX_STEPS
    assert all(torch.equal(x, y) for x, y in zip(a["train_generator"], b["train_generator"], strict=True))
    # the same batches in the same order: the resume skipped the epoch's first `step` batches
    # and went on into the next epoch
    ref_rows, rows = _batches(ref_probe), _batches(probe)
    assert [r["step"] for r in rows] == list(range(MAX_STEPS)) == [r["step"] for r in ref_rows]
    assert [(r["epoch"], r["batch_idx"], r["slices"]) for r in rows] == \
        [(r["epoch"], r["batch_idx"], r["slices"]) for r in ref_rows]
    assert {r["epoch"] for r in rows} == {0, 1}


def test_sigusr1_after_validation_saves_and_exits_138(tiny_data, tmp_path):
    run, probe = tmp_path / "run", tmp_path / "probe"
    proc = _start(_train_args(tiny_data, run, probe, sleep_s=0.4), tmp_path / "train.log")
    at_signal = _wait_for_step(proc, probe, tmp_path / "train.log", 8)  # epoch 1, after a validation
    proc.send_signal(signal.SIGUSR1)
    rc = _finish(proc, tmp_path / "train.log")
    assert rc == preempted_exit_code(signal.SIGUSR1) == 128 + signal.SIGUSR1, (tmp_path / "train.log").read_text()
    ckpt = _load(run / "checkpoints" / "last.ckpt")
    print(f"\nSIGUSR1 at step {at_signal}: exit {rc}, last.ckpt at global step {ckpt['global_step']}")
    assert at_signal <= ckpt["global_step"] <= at_signal + 1 < MAX_STEPS
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": ckpt["global_step"] - 7, "sampler": None}]
    assert (run / "checkpoints" / "step000007.ckpt").is_file()  # the best by val/loss, as before


@pytest.mark.slow
def test_ddp_sigterm_stops_both_ranks_and_the_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    """Two gloo processes: SIGTERM to the launching process reaches the other rank (forwarded),
    both stop at the same step; the checkpoint holds both ranks' generators, and the resumed
    run ends bit for bit where the uninterrupted one does, on the same per-rank batches."""
    ddp = ("trainer=ddp", "trainer.devices=2")
    ref_run, run = tmp_path / "reference", tmp_path / "preempted"
    ref_probe, probe = tmp_path / "reference_probe", tmp_path / "preempted_probe"
    ref = _start(_train_args(tiny_data, ref_run, ref_probe, *ddp), tmp_path / "reference.log")
    proc = _start(_train_args(tiny_data, run, probe, *ddp, sleep_s=0.4), tmp_path / "preempted.log")
    _wait_for_step(proc, probe, tmp_path / "preempted.log", 2)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc, tmp_path / "preempted.log") == EXIT_SIGTERM
    log = (tmp_path / "preempted.log").read_text()
    assert log.count("received signal 15") == 2 and log.count("exiting with 143") == 2
    last = run / "checkpoints" / "last.ckpt"
    ckpt = _load(last)
    step = ckpt["global_step"]
    assert 2 <= step < MAX_STEPS and len(ckpt["train_generator"]) == 2
    resumed = _start(_train_args(tiny_data, run, probe, *ddp, f"ckpt_path={last}"), tmp_path / "resumed.log")
    assert _finish(resumed, tmp_path / "resumed.log") == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    assert _finish(ref, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-4000:]
    a, b = _load(ref_run / "checkpoints" / "last.ckpt"), _load(last)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert _max_abs_diff(_tensors(a["state_dict"]), _tensors(b["state_dict"])) == 0.0
    assert _max_abs_diff(_tensors(a["ema"]["shadow"]), _tensors(b["ema"]["shadow"])) == 0.0
    for name in ("batches.jsonl", "batches_rank1.jsonl"):
        ref_rows = [json.loads(x) for x in (ref_probe / name).read_text().splitlines()]
        rows = [json.loads(x) for x in (probe / name).read_text().splitlines()]
        assert [r["slices"] for r in rows] == [r["slices"] for r in ref_rows]


# --------------------------------------------------------------------------- in-process
class _Signal(L.Callback):
    """Sends ``signum`` to this process at the end of the batch that reaches ``at_step``, and
    records which handler each signal had during training."""

    def __init__(self, signum: int | None = None, at_step: int = 3) -> None:
        self.signum, self.at_step = signum, at_step
        self.handlers: dict[int, object] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            self.handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
        if self.signum is not None and trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


def _trainer(root: Path, *callbacks: L.Callback, max_steps: int = 8, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=str(root), max_steps=max_steps, accelerator="cpu", devices=1,
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0, callbacks=list(callbacks), plugins=[AtomicCheckpointIO()],
                     **kwargs)


@pytest.fixture
def handlers():
    """The SIGTERM / SIGUSR1 handlers before the test; asserts that they are back after it."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield before
    after = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    for s, h in before.items():  # restore before asserting, so that one failure does not leak
        signal.signal(s, h)
    assert after == before


def test_sigusr1_in_process_saves_through_last_checkpoint_and_restores_handlers(tmp_path, handlers):
    probe = _Signal(signal.SIGUSR1, at_step=3)
    pre, last = PreemptionCheckpoint(), LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=100)
    trainer = _trainer(tmp_path, probe, pre, last)
    with pytest.raises(Preempted) as err:
        trainer.fit(BoringModel())
    assert err.value.code == 128 + signal.SIGUSR1 and err.value.signum == signal.SIGUSR1
    assert err.value.path == last.last_path == str(tmp_path / "ckpt" / "last.ckpt")
    assert probe.handlers == {signal.SIGTERM: pre._handler, signal.SIGUSR1: pre._handler}
    ckpt = _load(tmp_path / "ckpt" / "last.ckpt")
    assert ckpt["global_step"] == 3  # the boundary right after the signal
    # LastCheckpoint's own state names the file, so a resume keeps writing last.ckpt itself
    assert ckpt["callbacks"][last.state_key]["last_model_path"] == last.last_path
    resumed_last = LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=100)
    _trainer(tmp_path, PreemptionCheckpoint(), resumed_last, max_steps=5).fit(BoringModel(), ckpt_path=last.last_path)
    assert _load(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 5
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]


def test_sigterm_through_lightnings_handler_gets_the_exit_code_and_a_checkpoint(tmp_path, handlers):
    """SIGTERM left to Lightning (here: not among the callback's signals): Lightning stops after
    the batch with its SIGTERMException (exit code None = 0); the callback makes it 143 and saves."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    probe = _Signal(signal.SIGTERM, at_step=2)
    pre = PreemptionCheckpoint(signals=["SIGUSR1"])
    with pytest.raises(SIGTERMException) as err:
        _trainer(tmp_path, probe, pre).fit(BoringModel())
    assert type(err.value) is SIGTERMException and err.value.code == EXIT_SIGTERM
    assert probe.handlers[signal.SIGUSR1] == pre._handler and probe.handlers[signal.SIGTERM] != pre._handler
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_under_slurm_auto_requeue_lightning_keeps_sigusr1_and_sigterm_links_an_hpc_checkpoint(
        tmp_path, handlers, monkeypatch):
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                       "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose

    assert SLURMEnvironment.detect()
    probe = _Signal(signal.SIGTERM, at_step=3)
    pre = PreemptionCheckpoint()
    trainer = _trainer(tmp_path, probe, pre)
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    with pytest.raises(Preempted) as err:
        trainer.fit(BoringModel())
    assert err.value.code == EXIT_SIGTERM
    assert isinstance(probe.handlers[signal.SIGUSR1], _HandlersCompose)  # Lightning's requeue handler
    assert probe.handlers[signal.SIGTERM] == pre._handler
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    assert _load(last)["global_step"] == 3 and os.path.samefile(last, hpc)
    # what a requeued job started without ckpt_path resumes from
    assert trainer._checkpoint_connector._hpc_resume_path == str(hpc)


# --------------------------------------------------------------------------- last.ckpt on a clock
class _Seen(L.Callback):
    """At each batch start: the global step and that of last.ckpt (None before the first save)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, _load(self.path)["global_step"] if self.path.exists() else None))


def test_last_checkpoint_every_n_steps_before_any_validation_and_at_the_end(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    path = tmp_path / "ckpt" / "last.ckpt"
    seen = _Seen(path)
    best = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/loss", save_last=False)
    _trainer(tmp_path, seen, best, LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3),
             max_steps=7).fit(BoringModel())
    assert [s for _, s in seen.seen] == [None, None, None, 3, 3, 3, 6]
    assert _load(path)["global_step"] == 7  # the final step, though 7 is no multiple of 3


def test_last_checkpoint_every_n_minutes(tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    seen = _Seen(path)
    _trainer(tmp_path, seen, LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_minutes=1e-9),
             max_steps=4).fit(BoringModel())
    assert seen.seen == [(0, None), (1, 1), (2, 2), (3, 3)]


def test_last_checkpoint_waits_for_the_step_under_accumulation(tmp_path):
    path = tmp_path / "ckpt" / "last.ckpt"
    seen = _Seen(path)
    _trainer(tmp_path, seen, LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_minutes=1e-9),
             max_steps=3, accumulate_grad_batches=2).fit(BoringModel())
    assert seen.seen == [(0, None), (0, None), (1, 1), (1, 1), (2, 2), (2, 2)]


def test_the_shipped_callbacks_and_trainer(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    data = {"raw": tmp_path / "raw", "cache": tmp_path / "cache"}
    cfg = compose_train([], tmp_path, data)
    assert isinstance(instantiate(cfg.trainer, logger=False).strategy.checkpoint_io, AtomicCheckpointIO)
    cfg = compose_train(["trainer=ddp"], tmp_path, data)
    assert isinstance(instantiate(cfg.trainer, logger=False).strategy.checkpoint_io, AtomicCheckpointIO)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        callbacks = compose(config_name="train", overrides=[f"paths.output_dir={tmp_path}"]).callbacks
    assert callbacks.model_checkpoint.save_last is False  # last.ckpt has one writer
    last, pre = instantiate(callbacks.last_checkpoint), instantiate(callbacks.preemption)
    assert isinstance(last, LastCheckpoint) and last.every_steps == 100 and last.interval.total_seconds() == 1800
    assert last.last_path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert pre.signals == [signal.SIGTERM, signal.SIGUSR1] and pre.code_for(signal.SIGTERM) == 143


# --------------------------------------------------------------------------- atomic writes
class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomic({"global_step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(10), "x": _Unpicklable()}, path)
    assert _load(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_kill_during_the_write_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL in the middle of writing: the old last.ckpt is intact (only a temporary is left)."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from metamri.training.checkpointing import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"global_step": 1, "w": torch.ones(1000)}}, {str(path)!r})
        real = torch.save
        def half(obj, f, *a, **k):
            f.write(b"\\x00" * 100_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = half
        io.save_checkpoint({{"global_step": 2, "w": torch.zeros(1000)}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _load(path)["global_step"] == 1
    left = [p for p in tmp_path.iterdir() if p != path]
    assert len(left) == 1 and left[0].name.startswith(".last.ckpt.") and left[0].stat().st_size == 100_000


# --------------------------------------------------------------------------- resumable data order
def _ids(loader) -> list[list[int]]:
    return [b[0].tolist() for b in loader]


def test_the_resumable_shuffle_is_shuffle_true_on_a_fresh_run():
    from torch.utils.data import DataLoader

    ds = TensorDataset(torch.arange(23))
    torch.manual_seed(5)
    ref = [_ids(DataLoader(ds, batch_size=4, shuffle=True)) for _ in range(3)]
    torch.manual_seed(5)
    loader = ResumableDataLoader(ds, batch_size=4, sampler=ResumableRandomSampler(ds))
    assert [_ids(loader) for _ in range(3)] == ref


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", ["ratio", "shuffle_global", "shuffle_seeded"])
def test_a_resumed_loader_draws_the_rest_of_the_interrupted_epoch(kind, num_workers):
    ds = TensorDataset(torch.arange(23))

    def make():
        sampler = {"ratio": lambda: RatioSampler(13, 10, (1, 5), seed=1),
                   "shuffle_global": lambda: ResumableRandomSampler(ds),
                   "shuffle_seeded": lambda: ResumableRandomSampler(ds, seed=7)}[kind]()
        return ResumableDataLoader(ds, batch_size=4, sampler=sampler, num_workers=num_workers)

    loader = make()
    loader.sampler.set_epoch(2)
    it = iter(loader)
    done = [next(it)[0].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 3
    rest = list(it)
    torch.manual_seed(123)  # another global generator state than the interrupted run's
    resumed = make()
    resumed.load_state_dict(state)
    assert done + _ids(resumed) == done + [b[0].tolist() for b in rest]
    resumed.sampler.set_epoch(3)  # the next epoch is whole again
    assert len(_ids(resumed)) == len(resumed) == len(loader)
    if kind != "shuffle_global":  # seeded per epoch: also the epochs after the resumed one
        loader.sampler.set_epoch(3)
        resumed.sampler.set_epoch(3)
        assert _ids(resumed) == _ids(loader)


def test_a_loader_saved_at_the_end_of_an_epoch_resumes_at_the_next():
    ds = TensorDataset(torch.arange(23))
    loader = ResumableDataLoader(ds, batch_size=4, sampler=RatioSampler(13, 10, (1, 5), seed=1))
    loader.sampler.set_epoch(4)
    _ids(loader)
    assert loader.state_dict()["batches"] == len(loader)
    resumed = ResumableDataLoader(ds, batch_size=4, sampler=RatioSampler(13, 10, (1, 5), seed=1))
    resumed.load_state_dict(loader.state_dict())
    assert resumed.sampler.epoch == 5  # before Lightning sets it: a worker iterator draws first
    loader.sampler.set_epoch(5)
    assert _ids(resumed) == _ids(loader)


# --------------------------------------------------------------------------- resume points
class _Ordered(BoringModel):
    """BoringModel on a resumable loader over a ratio sampler (8 batches an epoch), validating
    at each epoch end; records (global step, epoch, sample ids) of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, list[int]]] = []

    def train_dataloader(self):
        ds = TensorDataset(torch.randn(23, 32, generator=torch.Generator().manual_seed(0)), torch.arange(23))
        return ResumableDataLoader(ds, batch_size=2, sampler=RatioSampler(13, 10, (1, 5), seed=1))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(TensorDataset(torch.randn(4, 32)), batch_size=2)

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, self.current_epoch, batch[1].tolist()))
        return super().training_step(batch[0], batch_idx)

    def validation_step(self, batch, batch_idx):
        loss = self.step(batch[0])
        self.log("val/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_start(self) -> None:
        from metamri.training.checkpointing import repair_epoch_end_restart

        repair_epoch_end_restart(self.trainer)  # as MetaDiffusionModule.on_train_start


class _SignalInValidation(L.Callback):
    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 8:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit_ordered(root: Path, max_steps: int, ckpt: Path | None = None, *callbacks: L.Callback) -> _Ordered:
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = _Ordered()
    best = ModelCheckpoint(dirpath=str(root), monitor="val/loss", filename="step{step}",
                           auto_insert_metric_name=False, save_top_k=-1)
    trainer = L.Trainer(default_root_dir=str(root), max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()],
                        callbacks=[*callbacks, best, LastCheckpoint(dirpath=str(root), every_n_train_steps=5)])
    try:
        trainer.fit(model, ckpt_path=None if ckpt is None else str(ckpt))
    except Preempted:
        pass
    return model


@pytest.fixture(scope="module")
def ordered_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ordered")
    return root, _fit_ordered(root / "reference", 20).seen


def test_resume_from_lightnings_end_of_epoch_checkpoint_keeps_the_epochs(ordered_reference):
    """ModelCheckpoint saves after the epoch-end validation in on_train_epoch_end; Lightning
    counts that epoch twice on a resume (set_epoch(e + 1) for epoch e) unless repaired."""
    root, ref = ordered_reference
    assert [e for _, e, _ in ref] == [0] * 8 + [1] * 8 + [2] * 4
    resumed = _fit_ordered(root / "from_epoch_end", 20, root / "reference" / "step8.ckpt").seen
    assert resumed == ref[8:]


def test_resume_from_a_preemption_at_the_end_of_validation(ordered_reference, handlers):
    root, ref = ordered_reference
    run = root / "preempted_in_validation"
    _fit_ordered(run, 20, None, PreemptionCheckpoint(), _SignalInValidation())
    assert _load(run / "last.ckpt")["global_step"] == 8  # saved once validation was over
    assert _fit_ordered(run, 20, run / "last.ckpt").seen == ref[8:]


def test_resume_from_last_checkpoint_mid_epoch(ordered_reference):
    root, ref = ordered_reference
    run = root / "mid_epoch"
    _fit_ordered(run, 13)  # last.ckpt at 10 (every 5), then 13 at the end
    assert _load(run / "last.ckpt")["global_step"] == 13
    assert _fit_ordered(run, 20, run / "last.ckpt").seen == ref[13:]
