"""A map-style dataset over the preprocessed cache: one item per cached slice.

The cache's on-disk layout is known only to :mod:`metamri.preprocess.cache`; this module
reads it through that module: an entry's index (:class:`~metamri.preprocess.cache.EntryIndex`,
with :meth:`~metamri.preprocess.cache.EntryIndex.item_metadata`), one item's image and scale
(:func:`~metamri.preprocess.cache.read_item`) and its coil maps
(:func:`~metamri.preprocess.cache.read_maps`, computed from the raw file on first use).

Open files: items read through a :class:`~metamri.datamodules.file_pool.FilePool`, at
most ``max_open_files`` HDF5 handles per process (LRU), never pickled.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from metamri.data.sample import ImageSample
from metamri.datamodules.file_pool import FilePool
from metamri.metadata.record import Metadata
from metamri.preprocess.cache import EntryIndex, read_item, read_maps

#: The index of one cached volume (attributes and small datasets; see :class:`EntryIndex`).
CacheEntry = EntryIndex


class CachedSliceDataset(Dataset[ImageSample]):
    """Items are (entry, row) pairs over a list of cache entries.

    Args:
        entries: Cached volumes to serve, in a fixed order (:func:`~metamri.preprocess.cache.read_index`).
        load_maps: Also return the coil maps, complex64 (C, H, W) (evaluation; computed from
            the raw file the first time an item is read, then cached); training does not
            need them.
        max_open_files: Bound of this dataset's own pool of open HDF5 files (per process);
            ignored when ``pool`` is given.
        pool: A :class:`FilePool` shared with other datasets (the data module's).
    """

    def __init__(
        self,
        entries: list[CacheEntry],
        *,
        load_maps: bool = False,
        max_open_files: int = 64,
        pool: FilePool | None = None,
    ) -> None:
        self.entries = list(entries)
        self.load_maps = load_maps
        self.index = [(e, r) for e, entry in enumerate(self.entries) for r in range(len(entry))]
        self.pool = pool if pool is not None else FilePool(max_open_files)

    def __len__(self) -> int:
        return len(self.index)

    def metadata(self, i: int) -> Metadata:
        """Metadata of item ``i`` without reading any pixel data."""
        e, r = self.index[i]
        return self.entries[e].item_metadata(r)

    def domain(self, i: int) -> str:
        return self.entries[self.index[i][0]].domain

    def __getitem__(self, i: int) -> ImageSample:
        e, r = self.index[i]
        entry = self.entries[e]
        f = self.pool.get(entry.path)
        image, scale = read_item(f, r, entry.path)
        maps = read_maps(entry, [r], handle=f)[0] if self.load_maps else None
        return ImageSample(
            image=image,
            metadata=self.metadata(i),
            domain=entry.domain,
            fname=entry.fname,
            slice_index=int(entry.slice_index[r]),
            frame=int(entry.frame[r]),
            scale=scale,
            maps=None if maps is None else np.ascontiguousarray(maps, dtype=np.complex64),
        )
