"""A map-style dataset over the preprocessed cache: one item per cached slice.

The cache layout is documented in :mod:`metamri.preprocess.cache`: one HDF5 per
volume with ``image`` (N, 2, H, W) float32, ``maps`` (N, C, H, W) complex64,
``scale`` (N,), ``slice_index`` (N,), ``frame`` (N,) and attrs ``metadata`` (JSON),
``domain``, ``patient_id``, ``fname``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from torch.utils.data import Dataset

from metamri.data.sample import ImageSample
from metamri.errors import DataFileError
from metamri.metadata.record import Metadata


@dataclass(frozen=True)
class CacheEntry:
    """What the index needs to know about one cached volume (read once, small)."""

    path: Path
    domain: str
    patient_id: str
    fname: str
    metadata: Metadata  # volume-level; ``slice`` is filled per item
    slice_index: np.ndarray  # (N,) int
    frame: np.ndarray  # (N,) int, -1 for static

    @classmethod
    def read(cls, path: str | Path) -> CacheEntry:
        path = Path(path)
        try:
            with h5py.File(path, "r") as f:
                meta = Metadata.from_dict(json.loads(f.attrs["metadata"]))
                return cls(
                    path=path,
                    domain=str(f.attrs["domain"]),
                    patient_id=str(f.attrs["patient_id"]),
                    fname=str(f.attrs["fname"]),
                    metadata=meta,
                    slice_index=np.asarray(f["slice_index"][()], dtype=np.int64),
                    frame=np.asarray(f["frame"][()], dtype=np.int64),
                )
        except (OSError, KeyError) as err:
            raise DataFileError(
                path, f"not a valid cache entry ({err})", hint="delete it and rerun `python -m metamri.preprocess`"
            ) from err

    def __len__(self) -> int:
        return len(self.slice_index)


class CachedSliceDataset(Dataset[ImageSample]):
    """Items are (entry, row) pairs over a list of cache entries.

    HDF5 handles are opened lazily in each worker process and never pickled.

    Args:
        entries: Cached volumes to serve, in a fixed order.
        load_maps: Also return the coil maps (evaluation); training does not need them.
    """

    def __init__(self, entries: list[CacheEntry], *, load_maps: bool = False) -> None:
        self.entries = list(entries)
        self.load_maps = load_maps
        self.index = [(e, r) for e, entry in enumerate(self.entries) for r in range(len(entry))]
        self._handles: dict[int, h5py.File] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _file(self, e: int) -> h5py.File:
        handle = self._handles.get(e)
        if handle is None:
            handle = self._handles[e] = h5py.File(self.entries[e].path, "r")
        return handle

    def metadata(self, i: int) -> Metadata:
        """Metadata of item ``i`` without reading any pixel data."""
        e, r = self.index[i]
        entry = self.entries[e]
        return entry.metadata.replace(slice=float(entry.slice_index[r]))

    def domain(self, i: int) -> str:
        return self.entries[self.index[i][0]].domain

    def __getitem__(self, i: int) -> ImageSample:
        e, r = self.index[i]
        entry = self.entries[e]
        f = self._file(e)
        image = np.asarray(f["image"][r], dtype=np.float32)
        if not np.isfinite(image).all():
            raise DataFileError(entry.path, "non-finite values in the cached image", field=f"image[{r}]")
        return ImageSample(
            image=image,
            metadata=self.metadata(i),
            domain=entry.domain,
            fname=entry.fname,
            slice_index=int(entry.slice_index[r]),
            frame=int(entry.frame[r]),
            scale=float(f["scale"][r]),
            maps=np.asarray(f["maps"][r]) if self.load_maps else None,
        )
