"""Data modules: exact OOD ratio, patient-level splits, typed batches from the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metamri.data.batch import ImageBatch
from metamri.datamodules import RatioSampler, SliceDataModule, split_patients
from metamri.errors import ConfigError


def test_ratio_sampler_ood_fraction_is_one_sixth():
    sampler = RatioSampler(n_in=90, n_ood=7, ratio=(1, 5), num_samples=10_000, seed=3)
    idx = np.array(list(sampler))
    frac = float((idx >= 90).mean())
    # block-stratified: exactly 1 in every block of 6 (10_000 = 1666 blocks + 4 draws)
    assert abs(frac - 1 / 6) < 3 * np.sqrt((1 / 6) * (5 / 6) / 10_000)
    assert abs(frac - 1 / 6) < 1e-3
    # every block of six holds exactly one OOD draw, whatever the dataset sizes
    blocks = (idx[: 6 * 1666] >= 90).reshape(-1, 6).sum(axis=1)
    assert (blocks == 1).all()
    # all brain indices are visited (permutation cycles), OOD indices in range
    assert set(idx[idx < 90]) == set(range(90))
    assert idx.max() < 97


def test_ratio_sampler_is_seeded_per_epoch():
    s = RatioSampler(20, 5, (1, 5), seed=0)
    a = list(s)
    assert a == list(s)
    s.set_epoch(1)
    assert list(s) != a


def test_ratio_sampler_rejects_bad_ratio():
    with pytest.raises(ConfigError, match="data.ood_ratio"):
        RatioSampler(10, 5, (1, 0))


def test_split_patients_disjoint_deterministic_and_complete():
    ids = [f"p{i:03d}" for i in range(40)] * 3
    a = split_patients(ids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    b = split_patients(ids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    assert a == b
    sets = [set(a[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(ids)
    assert [len(s) for s in sets] == [28, 6, 6]
    assert split_patients(ids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=2) != a
    with pytest.raises(ConfigError, match="sum to 1"):
        split_patients(ids, {"train": 0.7, "val": 0.1, "test": 0.1}, seed=1)


def test_mixed_datamodule_serves_typed_batches_at_the_ratio(tiny_data, tmp_path):
    dm = SliceDataModule(
        sources={"brain": str(tiny_data["raw"] / "brain"), "cardiac": str(tiny_data["raw"] / "cardiac")},
        cache_dir=str(tiny_data["cache"]), ood_ratio=(1, 5), batch_size=6, output_dir=str(tmp_path),
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    )
    dm.setup("fit")
    splits = json.loads((tmp_path / "splits.json").read_text())
    for domain, by_split in splits.items():
        members = [set(v) for v in by_split.values()]
        assert sum(len(m) for m in members) == len(set().union(*members)), domain
    # no cache entry of one patient in two splits, per domain
    for domain in ("brain", "cardiac"):
        seen = {}
        for split, by_domain in dm.entries.items():
            for e in by_domain.get(domain, []):
                assert seen.setdefault(e.patient_id, split) == split
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, ImageBatch)
    assert batch.image.shape[1:] == (2, 32, 32) and batch.image.dtype == torch.float32
    assert len(batch.metadata) == len(batch) == len(batch.domain)
    for meta, domain in zip(batch.metadata, batch.domain, strict=True):
        assert meta.anatomy == ("brain" if domain == "brain" else "heart")
        assert meta.slice is not None
    domains = [d for b in dm.train_dataloader() for d in b.domain]
    assert domains.count("cardiac") == len(domains) // 6 + (1 if len(domains) % 6 else 0) or \
        abs(domains.count("cardiac") / len(domains) - 1 / 6) < 0.1
    # p99 normalisation: the 99th percentile of |x| of every cached slice is 1
    x = batch.image[:, 0] + 1j * batch.image[:, 1]
    p99 = torch.quantile(x.abs().flatten(1), 0.99, dim=1)
    assert torch.allclose(p99, torch.ones_like(p99), atol=1e-3)
    # training metadata covers both domains (for normalisation ranges)
    anatomies = {m.anatomy for m in dm.train_metadata()}
    assert anatomies == {"brain", "heart"}


def test_metadata_stats_are_fitted_on_the_training_split_only_and_saved(tiny_data, tmp_path):
    from metamri.encoders.finegrained import FineGrainedEncoder

    dm = SliceDataModule(
        sources={"brain": str(tiny_data["raw"] / "brain"), "cardiac": str(tiny_data["raw"] / "cardiac")},
        cache_dir=str(tiny_data["cache"]), ood_ratio=(1, 5), output_dir=str(tmp_path),
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    )
    dm.setup("fit")
    saved = json.loads((tmp_path / "metadata_stats.json").read_text())
    train = dm.train_metadata()
    assert saved["train_slices"] == len(train) == sum(len(d) for d in dm.datasets["train"].values())
    # the ranges span exactly the training slices' values (not val/test)
    slices = [m.slice for m in train]
    assert saved["numeric_ranges"]["slice"] == [min(slices), max(slices)]
    all_slices = [m.slice for split in ("train", "val", "test") for d in dm.datasets[split].values()
                  for m in (d.metadata(i) for i in range(len(d)))]
    assert max(all_slices) >= max(slices)
    # the encoder fitted inside training sees the same statistics
    enc = FineGrainedEncoder(context_dim=8).fit(train)
    assert enc.get_extra_state()["numeric_ranges"] == saved["numeric_ranges"]
    assert enc.get_extra_state()["vocabulary"] == saved["vocabulary"]


def test_training_reads_no_maps_and_eval_dataset_computes_them_once(tiny_data, tmp_path, monkeypatch):
    """Training entries hold no coil maps; eval_dataset(load_maps=True) gives complex64 (C, H, W)
    maps at the image's size for the items it serves, computing each ESPIRiT call once."""
    import shutil

    import h5py

    import metamri.preprocess.pipeline as pipeline

    cache = shutil.copytree(tiny_data["cache"], tmp_path / "cache")  # maps written here, not in the shared one
    shutil.rmtree(cache / "brain" / "maps", ignore_errors=True)
    shutil.rmtree(cache / "cardiac" / "maps", ignore_errors=True)
    dm = SliceDataModule(
        sources={"brain": str(tiny_data["raw"] / "brain"), "cardiac": str(tiny_data["raw"] / "cardiac")},
        cache_dir=str(cache), split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
    )
    dm.setup()
    for domain in ("brain", "cardiac"):
        for e in dm.entries["train"][domain]:
            with h5py.File(e.path) as f:
                assert "maps" not in f
    assert all(s.maps is None for s in dm.datasets["train"]["brain"])
    calls = []
    real = pipeline.compute_entry_maps
    monkeypatch.setattr(pipeline, "compute_entry_maps", lambda index, rows: calls.append(len(rows)) or
                        real(index, rows))
    for domain, coils in (("brain", 4), ("cardiac", 4)):
        ds = dm.eval_dataset("test", domain, load_maps=True)
        assert len(ds) > 0
        samples = [ds[i] for i in range(len(ds))]
        for s in samples:
            assert s.maps.shape == (coils, 32, 32) and s.maps.dtype == np.complex64
            rss = np.sqrt((np.abs(s.maps) ** 2).sum(0))
            inside = np.abs(s.image[0] + 1j * s.image[1]) > 0.2
            assert np.allclose(rss[inside], 1, atol=0.05)  # ESPIRiT maps: unit RSS on the object
        if domain == "cardiac":  # time-averaged cine maps: the frames of a slice share one estimate
            by_slice: dict = {}
            for s in samples:
                by_slice.setdefault((s.fname, s.slice_index), []).append(s.maps)
            assert any(len(v) > 1 for v in by_slice.values())
            for maps in by_slice.values():
                for m in maps[1:]:
                    np.testing.assert_array_equal(m, maps[0])
    n_calls = len(calls)
    assert n_calls > 0
    again = dm.eval_dataset("test", "brain", load_maps=True)
    [again[i] for i in range(len(again))]
    assert len(calls) == n_calls  # stored: no recomputation
    with pytest.raises(ConfigError, match="config split = 'dev'"):
        dm.eval_dataset("dev")
