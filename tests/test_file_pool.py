"""The bounded pool of open cache files: the process never holds more than ``max_open_files``
HDF5 descriptors, however many volumes a split has (1,024 is the usual ``ulimit -n``)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from metamri.datamodules import CachedSliceDataset, FilePool, SliceDataModule
from metamri.errors import ConfigError
from metamri.metadata.record import Metadata
from metamri.preprocess.cache import VolumeEntry, read_index, write_entry

N_VOLUMES, BOUND, MARGIN = 2000, 16, 4
ITEMS = 2  # per volume


#: Name of this module's cache directory (``open_h5_fds`` counts only files under it).
CACHE_DIR_NAME = "file_pool_many"


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def open_h5_fds() -> int:
    """Open descriptors of this process that point at a ``.h5`` file of this module's cache
    (other test modules sharing the worker process may hold files of their own)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            n += target.endswith(".h5") and f"{os.sep}{CACHE_DIR_NAME}" in target
        except OSError:  # the descriptor of listdir itself, gone by now
            pass
    return n


def tiny_entry(v: int) -> VolumeEntry:
    """A two-item 4 x 4 brain entry (no maps), as the pipeline writes them, patient ``p{v}``."""
    image = np.full((ITEMS, 2, 4, 4), float(v), np.float32)
    return VolumeEntry(
        image=image, maps=None, scale=np.ones(ITEMS, np.float32), slice_index=np.arange(ITEMS, dtype=np.int32),
        frame=np.full(ITEMS, -1, np.int32), metadata=Metadata(anatomy="brain", contrast="AXT2"),
        domain="brain", patient_id=f"p{v:05d}", fname=f"file_brain_AXT2_{v:05d}.h5", format="fastmri_brain",
        source={"path": "none", "size": 0, "mtime_ns": 0, "sha256": None}, params={},
    )


@pytest.fixture(scope="module")
def many_volumes(tmp_path_factory) -> Path:
    """``<cache>/brain/`` with 2,000 tiny entries written directly in the cache format."""
    cache = tmp_path_factory.mktemp(CACHE_DIR_NAME)
    start = time.perf_counter()
    for v in range(N_VOLUMES):
        write_entry(cache / "brain" / f"file_brain_AXT2_{v:05d}.h5", tiny_entry(v))
    print(f"\nwrote {N_VOLUMES} entries in {time.perf_counter() - start:.1f} s")
    return cache


def test_iterating_2000_volumes_keeps_at_most_the_bound_open(many_volumes):
    entries = [read_index(p) for p in sorted((many_volumes / "brain").glob("*.h5"))]
    assert len(entries) == N_VOLUMES
    ds = CachedSliceDataset(entries, max_open_files=BOUND)
    base, base_h5 = open_fds(), open_h5_fds()
    assert base_h5 == 0
    peak, peak_h5 = base, 0
    for i in range(len(ds)):
        item = ds[i]
        assert item.image[0, 0, 0] == float(i // ITEMS)  # the right volume, row by row
        peak, peak_h5 = max(peak, open_fds()), max(peak_h5, open_h5_fds())
    print(f"\n{N_VOLUMES} volumes, {len(ds)} items, max_open_files={BOUND}: open descriptors "
          f"peak {peak} (baseline {base}, +{peak - base}); open .h5 descriptors peak {peak_h5}; "
          f"files opened {ds.pool.opened}")
    assert len(ds) == N_VOLUMES * ITEMS
    assert peak_h5 == BOUND  # exactly the bound once the pool is full
    assert peak <= base + BOUND + MARGIN
    assert ds.pool.opened == N_VOLUMES  # in order: each volume opened once, both rows read from it
    ds.pool.close()
    assert open_h5_fds() == 0


def test_random_order_reopens_but_stays_bounded(many_volumes):
    entries = [read_index(p) for p in sorted((many_volumes / "brain").glob("*.h5"))[:300]]
    ds = CachedSliceDataset(entries, max_open_files=BOUND)
    rng = np.random.default_rng(0)
    peak = 0
    for i in rng.permutation(len(ds)):
        assert ds[int(i)].image[0, 0, 0] == float(i // ITEMS)
        peak = max(peak, open_h5_fds())
    assert peak == BOUND and len(ds.pool) == BOUND
    assert len(entries) < ds.pool.opened <= len(ds)  # evicted volumes were reopened
    ds.pool.close()


def test_lru_evicts_the_least_recently_used(many_volumes):
    paths = sorted((many_volumes / "brain").glob("*.h5"))[:3]
    pool = FilePool(2)
    a = pool.get(paths[0])
    pool.get(paths[1])
    assert pool.get(paths[0]) is a  # reused, and now the most recent
    pool.get(paths[2])  # evicts paths[1]
    assert paths[0] in pool and paths[2] in pool and paths[1] not in pool
    assert pool.get(paths[0]).id.valid and len(pool) == 2 and pool.opened == 3
    pool.close()
    assert len(pool) == 0 and not a.id.valid
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ConfigError, match=r"config data\.max_open_files = .*must be an integer >= 1"):
            FilePool(bad)


def test_pool_is_never_pickled_with_its_handles(many_volumes):
    entries = [read_index(p) for p in sorted((many_volumes / "brain").glob("*.h5"))[:40]]
    ds = CachedSliceDataset(entries, max_open_files=8)
    for i in range(0, len(ds), ITEMS):
        ds[i]
    assert len(ds.pool) == 8
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone.pool) == 0 and clone.pool.max_open == 8 and len(ds.pool) == 8
    assert clone[5].image[0, 0, 0] == 2.0 and len(clone.pool) == 1
    clone.pool.close()
    ds.pool.close()


class _CountingDataset(Dataset):
    """Reads item ``i``; returns its process, the .h5 descriptors and pool files the process
    holds, and the item's value."""

    def __init__(self, ds: CachedSliceDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, int, int, float]:
        value = float(self.ds[i].image[0, 0, 0])
        return os.getpid(), open_h5_fds(), len(self.ds.pool), value


def _as_is(batch):
    return batch


def test_forked_workers_close_inherited_handles_and_stay_bounded(many_volumes):
    """Each DataLoader worker (fork) holds at most the bound, even when the parent had a full pool."""
    entries = [read_index(p) for p in sorted((many_volumes / "brain").glob("*.h5"))[:200]]
    ds = CachedSliceDataset(entries, max_open_files=BOUND)
    for i in range(0, 2 * BOUND * ITEMS, ITEMS):  # the parent's pool is full when the workers fork
        ds[i]
    assert open_h5_fds() == BOUND
    loader = DataLoader(_CountingDataset(ds), batch_size=None, num_workers=2, collate_fn=_as_is,
                        multiprocessing_context="fork")
    seen = list(loader)
    pids = {pid for pid, *_ in seen}
    peak = max(n for _, n, _, _ in seen)
    print(f"\n2 workers, max_open_files={BOUND}: peak open .h5 descriptors per worker {peak}")
    assert len(pids) == 2 and os.getpid() not in pids
    assert [v for *_, v in seen] == [float(i // ITEMS) for i in range(len(ds))]
    assert peak <= BOUND
    # a worker never reads through the parent's handles: its first read finds an empty pool
    first = {}
    for pid, _, in_pool, _ in seen:
        first.setdefault(pid, in_pool)
    assert set(first.values()) == {1}, first
    assert len(ds.pool) == BOUND  # the parent's own handles are untouched
    ds.pool.close()


def test_datamodule_shares_one_bounded_pool(many_volumes, tmp_path):
    dm = SliceDataModule(
        sources={"brain": str(tmp_path / "raw")}, cache_dir=str(many_volumes), max_open_files=BOUND,
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    )
    dm.setup()
    train, val = dm.datasets["train"]["brain"], dm.datasets["val"]["brain"]
    test = dm.eval_dataset("test", "brain", load_maps=False)
    assert train.pool is val.pool is test.pool is dm.pool
    for ds in (train, val, test):
        for i in range(0, len(ds), 7):
            ds[i]
    assert open_h5_fds() == BOUND == len(dm.pool)
    dm.pool.close()
    with pytest.raises(ConfigError, match="data.max_open_files = 0"):
        SliceDataModule(sources={"brain": "x"}, cache_dir=str(many_volumes), max_open_files=0)
