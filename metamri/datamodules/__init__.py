"""Lightning data modules over the preprocessed cache: brain, cardiac, mixed (OOD ratio)."""

from metamri.datamodules.datamodule import DomainSource, SliceDataModule
from metamri.datamodules.dataset import CachedSliceDataset, CacheEntry
from metamri.datamodules.file_pool import FilePool
from metamri.datamodules.ratio_sampler import RatioSampler
from metamri.datamodules.splits import split_patients, write_splits

__all__ = [
    "CacheEntry", "CachedSliceDataset", "DomainSource", "FilePool", "RatioSampler", "SliceDataModule",
    "split_patients", "write_splits",
]
