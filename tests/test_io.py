"""metamri.utils.io: atomic outputs are whole or absent, and as readable as a plain file."""

from __future__ import annotations

import os

import pytest

from metamri.utils.io import atomic_output, write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_an_atomic_output_has_the_mode_of_a_plainly_written_file(tmp_path, umask):
    """mkstemp makes owner-only (0600) files; a shared output (a reconstruction, a CSV, a
    phantom file) must get what ``open(path, "w")`` gives under the same umask."""
    old = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        write_text_atomic(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old)
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.h5"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"] and target.read_text() == "old"
