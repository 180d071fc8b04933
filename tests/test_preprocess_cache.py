"""The per-volume cache: format, validation, freshness, atomic writes, skip and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import sigpy.mri

import metamri.preprocess.pipeline as pipeline
from metamri.data.cmrxrecon_file import write_cmrxrecon_cine
from metamri.data.fastmri_file import write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.data.readers import open_volume
from metamri.errors import ConfigError, DataFileError
from metamri.metadata.record import Metadata
from metamri.physics.fft import fft2c_np
from metamri.preprocess.cache import (
    CACHE_VERSION,
    VolumeEntry,
    entry_name,
    is_up_to_date,
    read_entry,
    read_index,
    read_maps,
    remove_stale_tmp,
    source_info,
    write_entry,
)
from metamri.preprocess.espirit import EspiritParams, estimate_maps, make_estimator
from metamri.preprocess.mvue import crop_or_pad, from_two_channel, mvue
from metamri.preprocess.pipeline import (
    PreprocessError,
    PreprocessParams,
    discover_sources,
    preprocess_directory,
)

# small volumes: brain k-space (slices, coils, 2R, W) with 2x readout oversampling
SLICES, COILS, R, W = 2, 4, 32, 32
FRAMES, CINE_SLICES, KX, KY = 2, 2, 32, 32


# -- synthetic raw files ------------------------------------------------------------------------


def head(shape, seed, extent=(0.45, 0.8)):
    """Complex ellipse phantom with a smooth phase; extent = semi-axes as FOV fractions."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    mag = 0.8 * ((y / extent[0]) ** 2 + (x / extent[1]) ** 2 < 1)
    mag = mag + 0.3 * (((y - 0.1 * extent[0]) / (0.4 * extent[0])) ** 2 + (x / 0.3) ** 2 < 1)
    return mag * np.exp(1j * (rng.uniform(-3, 3) + 0.8 * y - 0.5 * x))


def write_brain(path, seed, *, mask=None):
    """A fastMRI brain file; returns the true images (slices, R, W) in the recon FOV."""
    maps = sigpy.mri.birdcage_maps((COILS, 2 * R, W))
    images = np.stack([head((2 * R, W), seed * 10 + s) for s in range(SLICES)])  # object in central R rows
    kspace = fft2c_np(maps[None] * images[:, None]).astype(np.complex64)
    info = HeaderInfo(
        tr=9000.0, te=86.0, ti=2500.0, flip_angle=150.0, sequence_type="TurboSpinEcho",
        field_strength=1.5, encoded_matrix=(2 * R, W, 1), recon_matrix=(R, W, 1), num_slices=SLICES,
    )
    write_fastmri_brain(
        path, kspace, np.abs(crop_or_pad(images, (R, W))).astype(np.float32), acquisition="AXFLAIR",
        patient_id=f"pat{seed}", header_xml=build_header(info), mask=mask,
    )
    return crop_or_pad(images, (R, W))


def write_cine(path, seed):
    """A CMRxRecon cine file (frames, slices, coils, ky, kx); returns images (frames, slices, kx, ky)."""
    maps = sigpy.mri.birdcage_maps((COILS, KX, KY))
    images = np.stack([
        np.stack([head((KX, KY), seed * 10 + 3 * t + s, extent=(0.7, 0.7)) for s in range(CINE_SLICES)])
        for t in range(FRAMES)
    ])
    k = fft2c_np(maps * images[:, :, None])  # (t, s, coils, kx, ky)
    write_cmrxrecon_cine(path, k.transpose(0, 1, 2, 4, 3))
    return images


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """raw/brain/{a,b}.h5 and raw/cine/FullSample/P001/cine_sax.mat, with their true images."""
    root = tmp_path_factory.mktemp("raw")
    (root / "brain").mkdir()
    truth = {
        "a": write_brain(root / "brain" / "file_brain_a.h5", 1),
        "b": write_brain(root / "brain" / "file_brain_b.h5", 2),
    }
    cine = root / "cine" / "FullSample" / "P001" / "cine_sax.mat"
    cine.parent.mkdir(parents=True)
    truth["cine"] = write_cine(cine, 3)
    return root, truth


def copy_raw(raw, dest: Path) -> Path:
    shutil.copytree(raw[0], dest)
    return dest


class CountingEstimators:
    """Stands in for ``make_estimator`` in the pipeline; counts ESPIRiT calls, can fail on one."""

    def __init__(self, fail_at: int | None = None, exc: type[BaseException] = KeyboardInterrupt):
        self.calls, self.fail_at, self.exc = 0, fail_at, exc
        self.real = pipeline.make_estimator

    def __call__(self, backend, **params):
        est = self.real(backend, **params)
        spy = self

        class Spied:
            def params(self):
                return est.params()

            def __call__(self, kspace):
                spy.calls += 1
                if spy.fail_at is not None and spy.calls == spy.fail_at:
                    raise spy.exc("simulated crash")
                return est(kspace)

        return Spied()


def all_entries(cache: Path) -> list[Path]:
    """The entries (``<cache>/<domain>/*.h5``), not the maps files under ``<domain>/maps/``."""
    return sorted(cache.glob("*/*.h5"))


# -- the file format ----------------------------------------------------------------------------


def make_entry(n=3, c=2, h=8, w=6, seed=0) -> VolumeEntry:
    rng = np.random.default_rng(seed)
    return VolumeEntry(
        image=rng.standard_normal((n, 2, h, w)).astype(np.float32),
        maps=(rng.standard_normal((n, c, h, w)) + 1j * rng.standard_normal((n, c, h, w))).astype(np.complex64),
        scale=rng.uniform(0.5, 2, n).astype(np.float32),
        slice_index=np.arange(n, dtype=np.int32),
        frame=np.full(n, -1, np.int32),
        metadata=Metadata(anatomy="brain", contrast="AXT2", tr=6000.0, te=100.0, pathology=("a", "b")),
        domain="brain",
        patient_id="p1",
        fname="file_brain_x.h5",
        format="fastmri_brain",
        source={"path": "/x.h5", "size": 1, "mtime_ns": 2, "sha256": "ab"},
        params={"espirit": {"backend": "bart", "crop": 0.95}, "image_size": (8, 6)},
    )


def test_entry_round_trip(tmp_path):
    entry = make_entry()
    path = write_entry(tmp_path / "brain" / "x.h5", entry)
    assert path == tmp_path / "brain" / "x.h5" and not list(tmp_path.rglob("*.tmp"))
    back = read_entry(path)
    for name in ("image", "maps", "scale", "slice_index", "frame"):
        np.testing.assert_array_equal(getattr(back, name), getattr(entry, name))
    assert back.image.dtype == np.float32 and back.maps.dtype == np.complex64
    assert back.scale.dtype == np.float32 and back.slice_index.dtype == np.int32
    assert back.metadata == entry.metadata
    assert (back.domain, back.patient_id, back.fname, back.format) == ("brain", "p1", "file_brain_x.h5",
                                                                        "fastmri_brain")
    assert back.source == entry.source and back.version == CACHE_VERSION
    assert back.params == {"espirit": {"backend": "bart", "crop": 0.95}, "image_size": [8, 6]}
    assert read_entry(path, load_maps=False).maps is None
    with h5py.File(path) as f:  # the documented raw layout, as the data modules read it
        assert json.loads(f.attrs["metadata"])["slice"] is None
        assert f["image"].chunks == (1, 2, 8, 6) and f["maps"].compression == "lzf"


def test_write_rejects_inconsistent_entries_and_writes_nothing(tmp_path):
    bad = make_entry()
    bad.scale = bad.scale[:2]
    with pytest.raises(ValueError, match="scale: expected shape"):
        write_entry(tmp_path / "x.h5", bad)
    bad = make_entry()
    bad.maps = bad.maps[:, :, :4]
    with pytest.raises(ValueError, match="maps: expected shape"):
        write_entry(tmp_path / "x.h5", bad)
    bad = make_entry()
    bad.scale[1] = 0
    with pytest.raises(ValueError, match="scale"):
        write_entry(tmp_path / "x.h5", bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_entry_and_leaves_no_tmp(tmp_path):
    path = write_entry(tmp_path / "x.h5", make_entry(seed=0))
    bad = make_entry(seed=1)
    bad.source = {"not json": {1, 2}}  # fails after the datasets are written
    with pytest.raises(TypeError):
        write_entry(path, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]
    np.testing.assert_array_equal(read_entry(path).image, make_entry(seed=0).image)


def test_read_entry_names_what_is_broken(tmp_path):
    path = write_entry(tmp_path / "x.h5", make_entry())
    with h5py.File(path, "a") as f:
        del f["scale"]
    with pytest.raises(DataFileError, match=r"x\.h5: scale: missing dataset in cache entry\. delete it"):
        read_entry(path)

    path = write_entry(tmp_path / "v.h5", make_entry())
    with h5py.File(path, "a") as f:
        f.attrs["version"] = CACHE_VERSION + 1
    v = CACHE_VERSION + 1
    with pytest.raises(DataFileError, match=rf"attrs/version = {v}: cache version {v}"):
        read_entry(path)

    path = write_entry(tmp_path / "m.h5", make_entry())
    with h5py.File(path, "a") as f:
        f.attrs["metadata"] = json.dumps({"tr": "slow"})
    with pytest.raises(DataFileError, match=r"m\.h5: not a valid cache entry \(metadata field 'tr'"):
        read_entry(path)

    path = write_entry(tmp_path / "s.h5", make_entry())
    with h5py.File(path, "a") as f:
        f["image"][1, 0, 0, 0] = np.nan
    with pytest.raises(DataFileError, match="image: non-finite values"):
        read_entry(path)

    path = write_entry(tmp_path / "t.h5", make_entry())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"t\.h5: not a valid cache entry"):
        read_entry(path)
    (tmp_path / "g.h5").write_bytes(b"garbage" * 100)
    with pytest.raises(DataFileError, match=r"g\.h5: not a valid cache entry"):
        read_entry(tmp_path / "g.h5")


def test_remove_stale_tmp(tmp_path):
    (tmp_path / "brain").mkdir()
    (tmp_path / "brain" / "a.h5.tmp").write_bytes(b"half")
    (tmp_path / "brain" / "b.h5").write_bytes(b"keep")
    assert [p.name for p in remove_stale_tmp(tmp_path)] == ["a.h5.tmp"]
    assert [p.name for p in (tmp_path / "brain").iterdir()] == ["b.h5"]
    assert remove_stale_tmp(tmp_path / "missing") == []


def test_is_up_to_date_rules(tmp_path):
    src = tmp_path / "src.h5"
    src.write_bytes(b"0123456789")
    params = {"espirit": {"backend": "bart"}, "image_size": [8, 6]}
    entry = make_entry()
    entry.source, entry.params = source_info(src), params
    path = write_entry(tmp_path / "e.h5", entry)
    assert is_up_to_date(path, src, params)
    assert is_up_to_date(path, src, {"image_size": (8, 6), "espirit": {"backend": "bart"}})  # JSON-equal
    assert not is_up_to_date(path, src, {**params, "image_size": None})
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: the hash decides
    assert is_up_to_date(path, src, params)
    src.write_bytes(b"0123456780")  # same size, new content
    assert not is_up_to_date(path, src, params)
    src.write_bytes(b"01234567890")  # other size
    assert not is_up_to_date(path, src, params)
    assert not is_up_to_date(tmp_path / "none.h5", src, params)


def test_entry_names():
    assert entry_name("/d/file_brain_AXT2_1.h5", "fastmri_brain") == "file_brain_AXT2_1"
    assert entry_name("/d/P007/cine_lax.mat", "cmrxrecon_cine", "P007") == "P007_lax"
    with pytest.raises(ValueError):
        entry_name("/d/P007/cine_lax.mat", "cmrxrecon_cine")


# -- the pipeline over a directory --------------------------------------------------------------


def test_preprocess_directory_writes_correct_entries(raw, tmp_path):
    root, truth = raw
    summary = preprocess_directory(root, tmp_path / "cache", progress=False)
    names = [p.relative_to(tmp_path / "cache").as_posix() for p in all_entries(tmp_path / "cache")]
    assert names == ["brain/file_brain_a.h5", "brain/file_brain_b.h5", "cardiac/P001_sax.h5"]
    assert len(summary.processed) == 3 and summary.items == 2 * SLICES + FRAMES * CINE_SLICES
    assert summary.skipped == [] and summary.ok

    a = read_entry(tmp_path / "cache" / "brain" / "file_brain_a.h5")
    assert a.image.shape == (SLICES, 2, R, W) and a.maps.shape == (SLICES, COILS, R, W)
    np.testing.assert_array_equal(a.slice_index, np.arange(SLICES))
    np.testing.assert_array_equal(a.frame, -1)
    volume = open_volume(root / "brain" / "file_brain_a.h5")
    assert a.metadata == volume.volume_metadata() and a.patient_id == "pat1" and a.domain == "brain"
    assert a.params["espirit"]["backend"] == "bart" and a.params["image_size"] is None
    assert a.source["size"] == (root / "brain" / "file_brain_a.h5").stat().st_size
    for s in range(SLICES):
        img = from_two_channel(a.image[s])
        assert np.percentile(np.abs(img), 99) == pytest.approx(1.0, rel=1e-4)
        # the same computation by hand: ESPIRiT, MVUE, crop the oversampled readout
        k = volume[s].kspace
        ref = crop_or_pad(mvue(k, estimate_maps(k, backend="bart")), (R, W))
        np.testing.assert_allclose(img * a.scale[s], ref, atol=1e-5 * np.abs(ref).max())
        # and it is the true image, in magnitude, inside the object
        obj = np.abs(truth["a"][s]) > 0.1
        err = np.linalg.norm(np.abs(img * a.scale[s])[obj] - np.abs(truth["a"][s])[obj])
        assert err / np.linalg.norm(truth["a"][s][obj]) < 1e-3

    cine = read_entry(tmp_path / "cache" / "cardiac" / "P001_sax.h5")
    assert cine.image.shape == (FRAMES * CINE_SLICES, 2, KX, KY) and cine.format == "cmrxrecon_cine"
    np.testing.assert_array_equal(cine.slice_index, [0, 0, 1, 1])
    np.testing.assert_array_equal(cine.frame, [0, 1, 0, 1])
    assert cine.params["cardiac_frames"] == "all" and cine.metadata.contrast == "CINE"
    obj = np.abs(truth["cine"][1, 0]) > 0.1  # frame 1, slice 0 is item 1
    est = np.abs(from_two_channel(cine.image[1]) * cine.scale[1])
    assert np.linalg.norm(est[obj] - np.abs(truth["cine"][1, 0])[obj]) / np.linalg.norm(est[obj]) < 1e-3


def test_image_size_and_frames_are_applied(raw, tmp_path):
    root, _ = raw
    preprocess_directory(root, tmp_path, image_size=[40, 24], cardiac_frames=1, allow_crop=True, progress=False)
    brain = read_entry(tmp_path / "brain" / "file_brain_b.h5")
    cine = read_entry(tmp_path / "cardiac" / "P001_sax.h5")
    assert brain.image.shape == (SLICES, 2, 40, 24) and brain.maps.shape == (SLICES, COILS, 40, 24)
    assert np.all(brain.image[:, :, :4] == 0)  # 32 recon rows padded to 40
    assert cine.image.shape == (CINE_SLICES, 2, 40, 24)
    np.testing.assert_array_equal(cine.frame, [1, 1])
    assert brain.params["image_size"] == [40, 24] and "cardiac_frames" not in brain.params
    assert cine.params["cardiac_frames"] == 1


def test_rerun_on_an_up_to_date_cache_does_no_espirit_work(raw, tmp_path, monkeypatch):
    root = copy_raw(raw, tmp_path / "raw")
    spy = CountingEstimators()
    monkeypatch.setattr(pipeline, "make_estimator", spy)
    first = preprocess_directory(root, tmp_path / "cache", progress=False)
    assert first.items == 2 * SLICES + FRAMES * CINE_SLICES
    espirit_calls = 2 * SLICES + CINE_SLICES  # cine: one ESPIRiT per slice (time-averaged k-space)
    assert spy.calls == espirit_calls
    second = preprocess_directory(root, tmp_path / "cache", progress=False)
    assert spy.calls == espirit_calls and second.items == 0
    assert second.processed == [] and len(second.skipped) == 3
    # touching a file (new mtime, same bytes) does not invalidate it: the hash decides
    os.utime(root / "brain" / "file_brain_a.h5")
    assert len(preprocess_directory(root, tmp_path / "cache", progress=False).skipped) == 3
    assert spy.calls == espirit_calls
    # the cine frame choice only invalidates the cardiac entry
    third = preprocess_directory(root, tmp_path / "cache", cardiac_frames=[0], progress=False)
    assert [p.name for p in third.processed] == ["P001_sax.h5"] and spy.calls == espirit_calls + CINE_SLICES
    # an ESPIRiT parameter invalidates everything; overwrite recomputes regardless
    fourth = preprocess_directory(root, tmp_path / "cache", espirit={"crop": 0.9}, cardiac_frames=[0], progress=False)
    assert len(fourth.processed) == 3
    calls = spy.calls
    preprocess_directory(root, tmp_path / "cache", espirit={"crop": 0.9}, cardiac_frames=[0], overwrite=True, progress=False)
    assert spy.calls == calls + 2 * SLICES + CINE_SLICES


def test_cine_maps_time_average_vs_per_frame(raw, tmp_path, monkeypatch):
    """Time-averaged maps: one ESPIRiT per slice, shared by its frames, and the MVUE still
    equals the true image; per-frame maps: one ESPIRiT per (slice, frame)."""
    root, truth = raw
    cine_dir = root / "cine"
    results = {}
    lazy_calls = {}
    for mode in ("time_average", "per_frame"):
        spy = CountingEstimators()
        monkeypatch.setattr(pipeline, "make_estimator", spy)
        preprocess_directory(cine_dir, tmp_path / mode, cine_maps=mode, progress=False)
        calls = spy.calls
        results[mode] = (read_entry(tmp_path / mode / "cardiac" / "P001_sax.h5"), calls)
        lazy_calls[mode] = spy.calls - calls  # the maps, recomputed on first use
        read_entry(tmp_path / mode / "cardiac" / "P001_sax.h5")  # now stored: no ESPIRiT
        assert spy.calls == calls + lazy_calls[mode]
    (avg, avg_calls), (per, per_calls) = results["time_average"], results["per_frame"]
    assert (avg_calls, per_calls) == (CINE_SLICES, FRAMES * CINE_SLICES)
    assert lazy_calls == {"time_average": CINE_SLICES, "per_frame": FRAMES * CINE_SLICES}
    # one maps file per ESPIRiT call
    assert [p.name for p in sorted((tmp_path / "time_average" / "cardiac" / "maps" / "P001_sax").iterdir())] == \
        ["s0000.h5", "s0001.h5"]
    assert len(list((tmp_path / "per_frame" / "cardiac" / "maps" / "P001_sax").iterdir())) == FRAMES * CINE_SLICES
    assert avg.params["cine_maps"] == "time_average" and per.params["cine_maps"] == "per_frame"
    for s in range(CINE_SLICES):
        rows = np.flatnonzero(avg.slice_index == s)
        for r in rows[1:]:
            np.testing.assert_array_equal(avg.maps[r], avg.maps[rows[0]])
    for i, (s, t) in enumerate(zip(avg.slice_index, avg.frame, strict=True)):
        true = np.abs(truth["cine"][t, s])
        obj = true > 0.1
        for entry in (avg, per):
            est = np.abs(from_two_channel(entry.image[i]) * entry.scale[i])
            assert np.linalg.norm(est[obj] - true[obj]) / np.linalg.norm(true[obj]) < 1e-3
    with pytest.raises(ConfigError, match="cine_maps"):
        preprocess_directory(cine_dir, tmp_path / "bad", cine_maps="average", progress=False)


def test_run_interrupted_in_the_second_volume_resumes(raw, tmp_path, monkeypatch):
    root = copy_raw(raw, tmp_path / "raw")
    cache = tmp_path / "cache"
    monkeypatch.setattr(pipeline, "make_estimator", CountingEstimators(fail_at=SLICES + 2))
    with pytest.raises(KeyboardInterrupt):
        preprocess_directory(root, cache, progress=False)
    assert [p.name for p in all_entries(cache)] == ["file_brain_a.h5"]
    assert not list(cache.rglob("*.tmp"))
    spy = CountingEstimators()
    monkeypatch.setattr(pipeline, "make_estimator", spy)
    summary = preprocess_directory(root, cache, progress=False)
    assert [p.name for p in summary.skipped] == ["file_brain_a.h5"]
    assert [p.name for p in summary.processed] == ["file_brain_b.h5", "P001_sax.h5"]
    assert spy.calls == SLICES + CINE_SLICES  # b, and the cine (one ESPIRiT per slice)
    for p in all_entries(cache):
        read_entry(p)
    assert not list(cache.rglob("*.tmp"))


def test_killed_process_leaves_only_a_tmp_that_the_next_run_removes(raw, tmp_path):
    """SIGKILL between writing an entry and moving it into place, then rerun."""
    root = copy_raw(raw, tmp_path / "raw")
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os, signal
        from metamri.preprocess.pipeline import preprocess_directory
        real_replace, count = os.replace, [0]
        def dying_replace(a, b):
            count[0] += 1
            if count[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(a, b)
        os.replace = dying_replace
        preprocess_directory({str(root)!r}, {str(cache)!r}, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in cache.rglob("*.tmp")] == ["file_brain_b.h5.tmp"]
    assert [p.name for p in all_entries(cache)] == ["file_brain_a.h5"]
    summary = preprocess_directory(root, cache, progress=False)
    assert summary.removed_tmp == 1 and len(summary.skipped) == 1 and len(summary.processed) == 2
    assert not list(cache.rglob("*.tmp"))
    assert [read_entry(p).image.shape[0] for p in all_entries(cache)] == [SLICES, SLICES, FRAMES * CINE_SLICES]


def test_failures_are_reported_per_file(raw, tmp_path, monkeypatch):
    root = copy_raw(raw, tmp_path / "raw")
    mask = np.zeros(W, np.float32)
    mask[::2] = 1
    write_brain(root / "brain" / "file_brain_masked.h5", 4, mask=mask)
    (root / "brain" / "file_brain_broken.h5").write_bytes(b"not hdf5")
    bad = [root / "brain" / "file_brain_masked.h5", root / "brain" / "file_brain_broken.h5"]
    with pytest.raises(PreprocessError, match="2 volume\\(s\\) failed"):
        preprocess_directory(bad, tmp_path / "c1", progress=False)
    summary = preprocess_directory(root, tmp_path / "c2", progress=False, raise_on_failure=False)
    failed = dict(summary.failed)
    assert len(summary.processed) == 3 and len(failed) == 2
    assert "not a readable HDF5 file" in failed[str(root / "brain" / "file_brain_broken.h5")]
    assert "undersampled k-space (16/32 lines)" in failed[str(root / "brain" / "file_brain_masked.h5")]
    assert "FAILED" in summary.format() and "2 failed" in summary.format()
    # a failure inside ESPIRiT names the file and the item, and other volumes go on
    monkeypatch.setattr(pipeline, "make_estimator", CountingEstimators(fail_at=2, exc=ValueError))
    summary = preprocess_directory(root / "brain" / "file_brain_a.h5", tmp_path / "c3", progress=False,
                                   raise_on_failure=False)
    assert "slice 1: ESPIRiT/MVUE failed (simulated crash)" in summary.failed[0][1]
    assert not list((tmp_path / "c3").rglob("*.tmp"))


def test_discover_sources(tmp_path):
    for rel in ["a/x.h5", "a/.hidden/y.h5", "a/cache/brain/z.h5", "c/FullSample/P1/cine_sax.mat",
                "c/AccFactor04/P1/cine_sax.mat", "c/FullSample/P1/other.mat", "a/x.h5.tmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = discover_sources([tmp_path / "a", tmp_path / "c"], exclude=[tmp_path / "a" / "cache"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.h5", "c/FullSample/P1/cine_sax.mat"]
    assert discover_sources(tmp_path / "a" / "x.h5") == [(tmp_path / "a" / "x.h5").resolve()]
    with pytest.raises(Exception, match="input_dir = .*no such file or directory"):
        discover_sources(tmp_path / "nope")


def test_params_hold_one_espirit_object_and_record_the_same_json():
    """``PreprocessParams.espirit`` is an :class:`EspiritParams` (a mapping is accepted); the
    cache record keeps its flat ESPIRiT fields, and an entry's record rebuilds the parameters."""
    params = PreprocessParams(espirit={"backend": "sigpy", "calib_size": 12}, image_size=8)
    assert params.espirit == EspiritParams(backend="sigpy", calib_size=12)
    record = params.cache_params("fastmri_brain")
    assert record["espirit"] == make_estimator("sigpy", calib_size=12, threshold=0.02, kernel_size=6,
                                               crop=0.95).params()
    assert PreprocessParams.from_cache_params("fastmri_brain", record) == params
    assert PreprocessParams().resolved().espirit.backend in {"bart", "sigpy"}


def test_params_validation():
    assert PreprocessParams(image_size=64).image_size == (64, 64)
    assert PreprocessParams(cardiac_frames=[0, 2]).cardiac_frames == (0, 2)
    with pytest.raises(Exception, match="image_size"):
        PreprocessParams(image_size="big")
    with pytest.raises(Exception, match="cardiac_frames = 'some'"):
        PreprocessParams(cardiac_frames="some")
    with pytest.raises(Exception, match="espirit.crop"):
        PreprocessParams(espirit={"crop": 2.0})


# -- coil maps: not in the training entries, computed on first use for evaluation ------------------


def test_pipeline_entries_hold_no_maps_and_maps_are_recomputed_exactly(raw, tmp_path, monkeypatch):
    """Version 3: the entry stores images only; read_maps gives the ESPIRiT maps the MVUE was made
    with (same backend and parameters, cropped like the image), computes each item once, and
    stores them beside the entry."""
    root, _ = raw
    cache = tmp_path / "cache"
    preprocess_directory(root / "brain", cache, espirit={"backend": "sigpy", "calib_size": 12}, progress=False)
    path = cache / "brain" / "file_brain_a.h5"
    with h5py.File(path) as f:
        assert "maps" not in f and int(f.attrs["version"]) == CACHE_VERSION == 3
        assert set(f) == {"image", "scale", "slice_index", "frame"}
    index = read_index(path)
    assert not index.has_maps and index.image_size == (R, W) and len(index) == SLICES
    assert read_entry(path, load_maps=False).maps is None
    with pytest.raises(DataFileError, match=r"file_brain_a\.h5: maps: no coil maps stored for 1 item"):
        read_maps(index, [1], compute=False)

    spy = CountingEstimators()
    monkeypatch.setattr(pipeline, "make_estimator", spy)
    maps = read_maps(index, [1, 0])
    assert maps.shape == (2, COILS, R, W) and maps.dtype == np.complex64 and spy.calls == SLICES
    volume = open_volume(root / "brain" / "file_brain_a.h5")
    entry = read_entry(path)  # load_maps=True: from the stored maps files, no ESPIRiT
    assert spy.calls == SLICES
    for s in range(SLICES):
        k = volume[s].kspace
        full = estimate_maps(k, backend="sigpy", calib_size=12)
        np.testing.assert_array_equal(entry.maps[s], crop_or_pad(full, (R, W)))
        # the cached image is the MVUE with exactly these maps
        img = from_two_channel(entry.image[s]) * entry.scale[s]
        np.testing.assert_allclose(img, crop_or_pad(mvue(k, full), (R, W)), atol=1e-5 * np.abs(img).max())
    np.testing.assert_array_equal(maps[0], entry.maps[1])
    assert sorted(p.name for p in (cache / "brain" / "maps" / "file_brain_a").iterdir()) == ["s0000.h5", "s0001.h5"]
    assert not list(cache.rglob("*.tmp"))
    # the maps files do not count as entries, and are not taken for raw files
    assert [p.name for p in all_entries(cache)] == ["file_brain_a.h5", "file_brain_b.h5"]
    assert len(preprocess_directory(root / "brain", cache, espirit={"backend": "sigpy", "calib_size": 12},
                                    progress=False).skipped) == 2
    # rewriting the entry (other parameters) deletes its maps; a stale maps file is not served
    stale = cache / "brain" / "maps" / "file_brain_b" / "s0000.h5"
    read_maps(read_index(cache / "brain" / "file_brain_b.h5"), [0])
    assert stale.is_file()
    preprocess_directory(root / "brain", cache, espirit={"backend": "sigpy", "calib_size": 12, "crop": 0.9}, progress=False)
    assert not (cache / "brain" / "maps" / "file_brain_a").exists() and not stale.exists()
    calls = spy.calls
    new = read_maps(read_index(path), [0])
    assert spy.calls == calls + 1
    np.testing.assert_array_equal(
        new[0], crop_or_pad(estimate_maps(volume[0].kspace, backend="sigpy", calib_size=12, crop=0.9), (R, W)))


def test_stale_maps_file_is_recomputed_not_served(raw, tmp_path):
    root, _ = raw
    cache = tmp_path / "cache"
    preprocess_directory(root / "brain" / "file_brain_a.h5", cache, espirit={"backend": "sigpy", "calib_size": 12},
                         progress=False)
    index = read_index(cache / "brain" / "file_brain_a.h5")
    good = read_maps(index, [0])[0]
    mfile = cache / "brain" / "maps" / "file_brain_a" / "s0000.h5"
    with h5py.File(mfile, "a") as f:  # as if written for another version of the entry
        f["maps"][...] = 0
        f.attrs["entry_params"] = json.dumps({"image_size": [1, 1]})
    np.testing.assert_array_equal(read_maps(index, [0])[0], good)
    mfile.write_bytes(b"truncated")  # unreadable: recomputed
    np.testing.assert_array_equal(read_maps(index, [0])[0], good)


def test_maps_need_the_unchanged_raw_file(raw, tmp_path):
    root = copy_raw(raw, tmp_path / "raw")
    cache = tmp_path / "cache"
    preprocess_directory(root / "brain", cache, espirit={"backend": "sigpy", "calib_size": 12}, progress=False)
    a, b = (read_index(cache / "brain" / f"file_brain_{n}.h5") for n in "ab")
    with open(root / "brain" / "file_brain_a.h5", "r+b") as fh:  # same size, new bytes and mtime
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x01" * 8)
    with pytest.raises(DataFileError, match=r"file_brain_a\.h5: attrs/source: the raw file .*file_brain_a\.h5 "
                                            r"changed since this entry was made"):
        read_maps(a, [0])
    (root / "brain" / "file_brain_b.h5").unlink()
    with pytest.raises(DataFileError, match=r"file_brain_b\.h5: attrs/source = .*: coil maps are computed from "
                                            r"the raw file on first use, and it is missing.*rerun"):
        read_maps(b, [0])


def test_entries_of_version_2_are_recomputed_without_maps(raw, tmp_path):
    root = copy_raw(raw, tmp_path / "raw")
    cache = tmp_path / "cache"
    preprocess_directory(root / "brain", cache, progress=False)
    old = make_entry(n=SLICES, c=COILS, h=R, w=W)
    old.version = 2
    src = root / "brain" / "file_brain_a.h5"
    old.source = source_info(src)
    old.params = read_entry(cache / "brain" / "file_brain_a.h5", load_maps=False).params
    write_entry(cache / "brain" / "file_brain_a.h5", old)
    assert not is_up_to_date(cache / "brain" / "file_brain_a.h5", src, old.params)
    with pytest.raises(DataFileError, match="cache version 2, this code reads version 3"):
        read_index(cache / "brain" / "file_brain_a.h5")
    summary = preprocess_directory(root / "brain", cache, progress=False)
    assert [p.name for p in summary.processed] == ["file_brain_a.h5"]
    with h5py.File(cache / "brain" / "file_brain_a.h5") as f:
        assert "maps" not in f and int(f.attrs["version"]) == 3


def test_entries_written_with_maps_serve_their_own(tmp_path):
    """Entries written by other tools with a ``maps`` dataset keep working, and need no raw file."""
    entry = make_entry(n=3, c=2, h=8, w=6)
    path = write_entry(tmp_path / "brain" / "x.h5", entry)
    index = read_index(path)
    assert index.has_maps
    np.testing.assert_array_equal(read_maps(index, [2, 0]), entry.maps[[2, 0]])
    no_maps = make_entry(n=3, c=2, h=8, w=6)
    no_maps.maps = None
    path = write_entry(tmp_path / "brain" / "y.h5", no_maps)
    with h5py.File(path) as f:
        assert "maps" not in f
    with pytest.raises(DataFileError, match=r"y\.h5: attrs/source = '/x\.h5': coil maps are computed"):
        read_entry(path)


# -- no silent crop -----------------------------------------------------------------------------


def test_image_size_smaller_than_the_recon_size_is_refused_before_any_work(raw, tmp_path, monkeypatch):
    root, _ = raw
    spy = CountingEstimators()
    monkeypatch.setattr(pipeline, "make_estimator", spy)
    with pytest.raises(ConfigError) as err:
        preprocess_directory(root, tmp_path / "c", image_size=[40, 24], progress=False)
    msg = str(err.value)
    assert msg.startswith("config image_size = [40, 24]: smaller than the recon size 32 x 32 of "), msg
    assert str(root / "brain" / "file_brain_a.h5") in msg and "(and 2 more of 3 files)" in msg
    assert "set image_size=[40,32] (or null" in msg and "allow_crop=true" in msg
    assert spy.calls == 0 and not list((tmp_path / "c").rglob("*.h5"))
    with pytest.raises(ConfigError, match=r"config data\.preprocess\.image_size = \[16, 16\]: smaller than the "
                                          r"recon size 32 x 32 of .*file_brain_a\.h5.*set data\.preprocess\."
                                          r"image_size=32 "):
        preprocess_directory(root / "brain", tmp_path / "c", image_size=16, config_prefix="data.preprocess.",
                             progress=False)
    # the same size, larger (padding) and null are fine
    for size in (32, [40, 40], None):
        preprocess_directory(root / "brain" / "file_brain_a.h5", tmp_path / f"ok{size}", image_size=size,
                             progress=False)
    # preprocess_volume refuses too
    with pytest.raises(ConfigError, match="config image_size = \\[16, 16\\]: smaller than the recon size"):
        pipeline.preprocess_volume(open_volume(root / "brain" / "file_brain_a.h5"), tmp_path / "v",
                                   PreprocessParams(image_size=16))
