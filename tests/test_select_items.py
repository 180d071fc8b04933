"""``items_per_volume``: the central k items of every volume, in dataset order."""

from __future__ import annotations

import pytest

from metamri.errors import ConfigError
from metamri.evaluation.run import select_items


class _Volumes:
    """A dataset stand-in: volumes of 5, 4 and 1 items (``index`` of (entry, row) pairs)."""

    def __init__(self, sizes=(5, 4, 1)):
        self.index = [(e, r) for e, n in enumerate(sizes) for r in range(n)]

    def __len__(self):
        return len(self.index)


def test_central_items_of_each_volume():
    d = _Volumes()
    assert select_items(d, None) == list(range(10))
    assert select_items(d, 1) == [2, 6, 9]          # rows 2 of 5, 1 of 4, 0 of 1
    assert select_items(d, 2) == [1, 2, 6, 7, 9]    # rows 1-2, 1-2, 0
    assert select_items(d, 10) == list(range(10))   # more than a volume has: all of it


def test_bad_count_names_the_key():
    with pytest.raises(ConfigError, match="items_per_volume"):
        select_items(_Volumes(), 0)


def test_plain_sequences_are_taken_whole():
    assert select_items(["a", "b", "c"], 1) == [0, 1, 2]
