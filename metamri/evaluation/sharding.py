"""Split slices over processes and gather their metric rows, independent of the world size.

Each process reconstructs ``indices[rank::world]`` (as EDM splits its seeds), every
slice with seeds derived from its own name, so a slice's numbers do not depend on
which process ran it. The per-slice rows are then gathered with
``torch.distributed.all_gather_object`` (when a process group is initialised),
de-duplicated by ``(fname, slice, frame, method)`` (a padded or repeated index yields
the same row twice) and sorted, so the merged table is the same for 1 or N processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch.distributed as dist

from metamri.metrics.table import MetricRow


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The dataset indices of one process: ``range(rank, n, world_size)``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return list(range(rank, int(n), world_size))


def row_key(row: MetricRow) -> tuple[str, int, int, str]:
    """Sort / identity key of a row (frame ``None`` sorts as -1)."""
    return (row.fname, row.slice, -1 if row.frame is None else row.frame, row.method)


def merge_rows(shards: Iterable[Iterable[MetricRow]]) -> list[MetricRow]:
    """Union of the shards' rows, one per ``(fname, slice, frame, method)``, sorted by that key."""
    merged: dict[tuple, MetricRow] = {}
    for rows in shards:
        for row in rows:
            merged.setdefault(row_key(row), row)
    return [merged[k] for k in sorted(merged)]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (a list of length world_size); ``[obj]`` without a process group."""
    rank, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_rows(rows: Sequence[MetricRow]) -> list[MetricRow]:
    """All processes' rows merged with :func:`merge_rows` (every rank gets the result)."""
    return merge_rows(gather_objects(list(rows)))
