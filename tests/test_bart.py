"""metamri.bart: the .cfl/.hdr format (round trip, and against BART itself) and run_bart."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from metamri.bart import BartError, bart_available, read_cfl, run_bart, write_cfl
from metamri.errors import DataFileError
from metamri.physics.fft import fft2c_np, ifft2c_np


def _rand(shape, seed=0, dtype=np.complex64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 1, 2), (3, 1, 1, 1, 2), (2, 3, 4, 5, 6)])
def test_cfl_round_trip(tmp_path, shape):
    x = _rand(shape)
    write_cfl(tmp_path / "x", x)
    y = read_cfl(tmp_path / "x")
    assert y.dtype == np.complex64 and y.shape == shape
    np.testing.assert_array_equal(y, x)


def test_cfl_layout_is_fortran_order_with_16_dims(tmp_path):
    x = _rand((3, 4, 2))
    write_cfl(tmp_path / "x.cfl", x)  # a suffix is dropped
    lines = (tmp_path / "x.hdr").read_text().splitlines()
    assert lines[0] == "# Dimensions"
    assert [int(d) for d in lines[1].split()] == [3, 4, 2] + [1] * 13
    raw = np.fromfile(tmp_path / "x.cfl", dtype="<c8")
    assert raw.size == x.size
    # dim 0 varies fastest: x[0,0,0], x[1,0,0], x[2,0,0], x[0,1,0], ...
    np.testing.assert_array_equal(raw[:4], [x[0, 0, 0], x[1, 0, 0], x[2, 0, 0], x[0, 1, 0]])
    np.testing.assert_array_equal(raw, x.ravel(order="F"))


def test_cfl_stem_with_dots(tmp_path):
    write_cfl(tmp_path / "scan.v2", _rand((3, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.v2.cfl", "scan.v2.hdr"]
    np.testing.assert_array_equal(read_cfl(tmp_path / "scan.v2"), _rand((3, 2)))


def test_read_cfl_ndim_keeps_trailing_singletons(tmp_path):
    x = _rand((4, 1, 1))
    write_cfl(tmp_path / "x", x)
    assert read_cfl(tmp_path / "x").shape == (4,)
    assert read_cfl(tmp_path / "x", ndim=3).shape == (4, 1, 1)
    assert read_cfl(tmp_path / "x", ndim=5).shape == (4, 1, 1, 1, 1)
    write_cfl(tmp_path / "y", _rand((2, 3)))
    with pytest.raises(DataFileError, match="cannot read as 1 dimensions"):
        read_cfl(tmp_path / "y", ndim=1)


def test_read_cfl_rejects_broken_files(tmp_path):
    with pytest.raises(DataFileError, match="no such BART header"):
        read_cfl(tmp_path / "missing")
    write_cfl(tmp_path / "x", _rand((4, 4)))
    with open(tmp_path / "x.cfl", "r+b") as fh:
        fh.truncate(8 * 10)
    with pytest.raises(DataFileError, match=r"x\.cfl: size = 80: holds 80 bytes, expected 128"):
        read_cfl(tmp_path / "x")
    (tmp_path / "z.hdr").write_text("# Dims\n4 4\n")
    with pytest.raises(DataFileError, match="malformed BART header"):
        read_cfl(tmp_path / "z")


def test_bart_available_matches_path(monkeypatch):
    assert bart_available() == (shutil.which("bart") is not None)
    monkeypatch.setenv("BART", "/nonexistent/bart")
    assert not bart_available()
    with pytest.raises(BartError, match="not on PATH"):
        run_bart(["fft", "3"], [np.ones((2, 2))])


# -- against BART itself (BART reads our files, we read BART's) ------------------------------


@pytest.mark.parametrize("shape", [(8, 6), (7, 9)])
def test_bart_fft_equals_centred_numpy_fft(shape):
    """`bart fft -u 3` (dims 0 and 1, unitary, centred) is fft2c, for even and odd sizes."""
    x = _rand(shape, seed=1)
    (k,) = run_bart(["fft", "-u", "3"], [x])
    assert k.shape == shape
    np.testing.assert_allclose(k, fft2c_np(x), atol=2e-6 * np.abs(k).max())
    (xi,) = run_bart(["fft", "-u", "-i", "3"], [x])
    np.testing.assert_allclose(xi, ifft2c_np(x), atol=2e-6 * np.abs(xi).max())


def test_bart_dimension_zero_is_first_numpy_axis():
    """Bitmask 1 transforms dim 0 only: our axis 0 is BART's dim 0 (readout)."""
    x = _rand((8, 5, 1, 3), seed=2)
    (k,) = run_bart(["fft", "-u", "1"], [x])
    ref = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=0), axis=0, norm="ortho"), axes=0)
    np.testing.assert_allclose(k, ref, atol=2e-6 * np.abs(ref).max())


def test_bart_fmac_on_files_we_wrote_equals_numpy():
    a, b = _rand((6, 4, 1, 3), seed=3), _rand((6, 4, 1, 3), seed=4)
    (ab,) = run_bart(["fmac"], [a, b])
    np.testing.assert_allclose(ab, a * b, rtol=1e-6, atol=1e-6)
    # -C conjugates the second input, -s 8 sums over dim 3 (coils): sum_c a_c conj(b_c)
    (s,) = run_bart(["fmac", "-C", "-s", "8"], [a, b])
    assert s.shape == (6, 4)  # the summed dim and the trailing z=1 are dropped
    np.testing.assert_allclose(s, np.sum(a * np.conj(b), axis=3)[:, :, 0], rtol=1e-5, atol=1e-5)


def test_run_bart_named_inputs_and_placeholders():
    a, b = _rand((5, 3), seed=5), _rand((5, 3), seed=6)
    # saxpy: out = scale * in1 + in2; placeholders put b first although a was given first
    (out,) = run_bart(["saxpy", "2", "{b}", "{a}"], {"a": a, "b": b})
    np.testing.assert_allclose(out, 2 * b + a, rtol=1e-6, atol=1e-6)
    (out,) = run_bart(["saxpy", "2"], {"a": a, "b": b})  # appended in order
    np.testing.assert_allclose(out, 2 * a + b, rtol=1e-6, atol=1e-6)


def test_run_bart_several_outputs():
    """`bart ecalib` with two outputs: maps and eigenvalue maps."""
    k = _rand((32, 32, 1, 4), seed=7)
    maps, ev = run_bart(["ecalib", "-m1", "-r", "12"], [k], 2)
    assert maps.shape == (32, 32, 1, 4) and ev.shape == (32, 32)


def test_run_bart_error_carries_stderr():
    with pytest.raises(BartError, match=r"`bart fft -u 3` failed (?s:.*)too few or too many arguments"):
        run_bart(["fft", "-u", "3"], [], 1)
    with pytest.raises(BartError, match="no-such-tool"):
        run_bart(["no-such-tool"], [np.ones(2)])
    with pytest.raises(BartError) as err:
        run_bart(["fft", "-u", "3"], [], 1)
    assert "\x1b[" not in str(err.value)  # terminal colour codes stripped
