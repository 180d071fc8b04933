"""The LightningDataModule for brain, cardiac and mixed (brain + OOD cardiac) training.

One class serves the three configurations in ``conf/data/`` (``brain``,
``cardiac``, ``mixed``): it is given one source per domain and, when both are
present and ``ood_ratio`` is set, draws cardiac slices at that exact ratio.

Lifecycle (Lightning calls these):

* :meth:`prepare_data` (once, rank 0): if a domain's raw directory holds no
  files and a phantom is configured, write the phantom there (the embedded
  default); then bring the preprocessed cache up to date (ESPIRiT, MVUE, p99).
* :meth:`setup` (every rank): read the cache index, split patients into
  train/val/test deterministically from ``split_seed`` and write the split to
  ``<output_dir>/splits.json``, and the metadata normalisation fitted on the
  training split to ``<output_dir>/metadata_stats.json``.

Real data (``conf/data/fastmri_brain.yaml``, ``cmrxrecon.yaml``, ``fastmri_cmrxrecon.yaml``):
the raw sources have no default (``???``), the phantom is off and every domain is
brought to 320 x 320. An ``image_size`` smaller than a file's recon size is refused
with a :class:`~metamri.errors.ConfigError` naming ``data.preprocess.image_size``
(no silent crop), unless the domain is listed in ``data.preprocess.allow_crop``
(the CMRxRecon presets list ``cardiac``: its 448-512-sample readout is centre-cropped
to 320 on purpose). Training entries hold no coil maps; :meth:`eval_dataset` with
``load_maps=True`` computes them for the items it serves, once
(:mod:`metamri.preprocess.cache`, "Coil maps"). Every dataset of the module reads
through one :class:`~metamri.datamodules.file_pool.FilePool`: at most
``max_open_files`` open HDF5 files per process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader

from metamri.data.batch import collate_images
from metamri.datamodules.dataset import CachedSliceDataset, CacheEntry
from metamri.datamodules.file_pool import FilePool
from metamri.datamodules.ratio_sampler import RatioSampler
from metamri.datamodules.resumable import ResumableDataLoader, ResumableRandomSampler
from metamri.datamodules.splits import SPLITS, split_patients, write_splits
from metamri.errors import ConfigError
from metamri.metadata.missing import required_fields
from metamri.metadata.normalization import NumericRanges, Vocabulary
from metamri.metadata.record import Metadata
from metamri.preprocess.cache import domain_dir, list_entries, read_index
from metamri.utils import checks
from metamri.utils.io import write_json_atomic

log = logging.getLogger(__name__)

DOMAINS = ("brain", "cardiac")


@dataclass(frozen=True)
class DomainSource:
    """Where one domain's data lives.

    Attributes:
        raw_dir: Directory of raw files (fastMRI ``*.h5`` or a CMRxRecon tree).
        cache_dir: Directory of this domain's preprocessed entries (``<cache root>/<domain>``).
    """

    raw_dir: Path
    cache_dir: Path


class SliceDataModule(L.LightningDataModule):
    """Serves :class:`~metamri.data.batch.ImageBatch` batches from the preprocessed cache.

    Args:
        sources: ``{domain: raw_dir}`` for ``brain`` and/or ``cardiac`` (``null`` disables one).
        cache_dir: Cache root; entries live in ``<cache_dir>/<domain>/``.
        ood_ratio: ``[ood, in_distribution]`` draws of cardiac to brain (``[1, 5]``
            in the paper); ``None`` concatenates the domains and shuffles.
        split_fractions: Patient fractions per split.
        split_seed: Seed of the patient split.
        sampler_seed: Seed of the training draw order (epoch ``e`` uses ``seed + e``).
        shuffle_seed: Without ``ood_ratio``: ``None`` shuffles each epoch from torch's global
            generator (as ``shuffle=True``); an int seeds each epoch's shuffle by ``(seed, e)``.
            The training loader resumes mid-epoch either way
            (:class:`~metamri.datamodules.resumable.ResumableDataLoader`); with an int, the
            epochs after a resumed one are also those of the uninterrupted run.
        batch_size: Training batch size (the paper's is 4).
        eval_batch_size: Batch size of validation/test loaders.
        num_workers: DataLoader workers.
        output_dir: Run directory; the split is written there.
        phantom: Keyword arguments of :func:`metamri.phantom.generate.generate_dataset`
            used when a raw directory is empty (``None``: an empty directory is an error).
        preprocess: Keyword arguments of the preprocessing run (``espirit``: a mapping of
            :class:`~metamri.preprocess.espirit.EspiritParams` fields, the ``espirit`` group
            in the data configs; image size, cardiac frames, workers; see
            :func:`~metamri.preprocess.pipeline.preprocess_directory`), plus
            ``allow_crop``: ``false`` (default), ``true`` or a list of domains whose files
            may be centre-cropped to ``image_size`` (otherwise a file whose recon size
            exceeds ``image_size`` stops :meth:`prepare_data` with a ``ConfigError``).
        val_max_items: Cap on validation slices per domain (keeps CPU runs short).
        max_open_files: Most cache files open at once per process (DataLoader worker),
            least recently used closed first (:class:`FilePool`).
        metadata_fields: The metadata fields the model's encoder reads (the data configs
            pass the encoder group's ``fields``: ``${oc.select:encoder.fields,null}``);
            :meth:`prepare_data` reports every raw file that lacks one of them (a fastMRI
            file without an ISMRMRD header, a cine file without a sidecar row), once per
            file, as a warning naming the file and the fields. ``None`` (no encoder in the
            config, or one that reads no fields such as ``encoder=none``): the schema's
            required fields (:data:`~metamri.metadata.schema.REQUIRED_FIELDS`).
        metadata_strict: Make such a file an error (:meth:`prepare_data` fails naming it and
            the fields) instead of a warning.
    """

    def __init__(
        self,
        sources: Mapping[str, str | None],
        cache_dir: str,
        ood_ratio: Sequence[int] | None = None,
        split_fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        sampler_seed: int = 0,
        shuffle_seed: int | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        output_dir: str | None = None,
        phantom: Mapping[str, Any] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        val_max_items: int | None = None,
        max_open_files: int = 64,
        metadata_fields: str | Sequence[str] | None = None,
        metadata_strict: bool = False,
    ) -> None:
        super().__init__()
        sources = {d: s for d, s in sources.items() if s is not None}  # `brain: null` disables a domain
        unknown = set(sources) - set(DOMAINS)
        if unknown or not sources:
            raise ConfigError("data.sources", sorted(sources), f"domains must be a non-empty subset of {DOMAINS}")
        self.cache_dir = Path(cache_dir).expanduser()
        self.sources = {
            d: DomainSource(Path(raw).expanduser(), domain_dir(self.cache_dir, d)) for d, raw in sources.items()
        }
        if ood_ratio is not None:
            ood_ratio = checks.int_pair(ood_ratio, "data.ood_ratio", minimum=(0, 1),
                                        what="[ood, in_distribution] draws per block",
                                        hint="e.g. data.ood_ratio=[1,5] (the paper's 1:5), or null without OOD data")
            if set(self.sources) != set(DOMAINS):
                raise ConfigError("data.ood_ratio", list(ood_ratio), "an OOD ratio needs both brain and cardiac sources",
                                  hint="set data.sources.cardiac, or data.ood_ratio=null")
        self.ood_ratio = ood_ratio
        self.split_fractions = dict(split_fractions or {"train": 0.7, "val": 0.15, "test": 0.15})
        self.split_seed = split_seed
        self.sampler_seed = sampler_seed
        self.shuffle_seed = shuffle_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.phantom = dict(phantom) if phantom else None
        self.preprocess_kwargs = dict(preprocess or {})
        self.allow_crop = _allow_crop(self.preprocess_kwargs.pop("allow_crop", False))
        self.val_max_items = val_max_items
        self.pool = FilePool(max_open_files, key="data.max_open_files")
        try:
            self.metadata_fields = required_fields(metadata_fields)
        except (KeyError, ValueError) as exc:
            raise ConfigError("data.metadata_fields", metadata_fields, str(exc.args[0]),
                              hint="a named set (paper, contextmri, all), a list of schema fields, "
                                   "or null for the schema's required fields") from None
        self.metadata_strict = bool(metadata_strict)
        self.splits: dict[str, dict[str, list[str]]] = {}
        self.entries: dict[str, dict[str, list[CacheEntry]]] = {}  # split -> domain -> entries
        self.datasets: dict[str, dict[str, CachedSliceDataset]] = {}

    # -- preparation ---------------------------------------------------------------
    def prepare_data(self) -> None:
        from metamri.preprocess.pipeline import preprocess_directory

        for domain, src in self.sources.items():
            if not _has_raw_files(src.raw_dir) and self.phantom is not None:
                from metamri.phantom.generate import generate_domain

                log.info("No raw %s files in %s: writing the phantom there", domain, src.raw_dir)
                generate_domain(domain, src.raw_dir, **self.phantom)
            preprocess_directory(
                src.raw_dir, self.cache_dir, **self.preprocess_kwargs, allow_crop=domain in self.allow_crop,
                config_prefix="data.preprocess.", metadata_fields=self.metadata_fields,
                metadata_strict=self.metadata_strict,
            )

    def setup(self, stage: str | None = None) -> None:
        if self.entries:
            return
        self.entries = {s: {} for s in SPLITS}
        for domain, src in self.sources.items():
            entries = [read_index(p) for p in list_entries(self.cache_dir, domain)]
            if not entries:
                raise ConfigError(
                    "data.cache_dir", str(src.cache_dir), f"holds no {domain} cache entries",
                    hint="run `python -m metamri.preprocess` on your raw files, or point raw_dir at them",
                )
            splits = split_patients([e.patient_id for e in entries], self.split_fractions, self.split_seed)
            self.splits[domain] = splits
            for split, patients in splits.items():
                keep = set(patients)
                self.entries[split][domain] = [e for e in entries if e.patient_id in keep]
        self.datasets = {
            split: {d: CachedSliceDataset(es, load_maps=False, pool=self.pool) for d, es in by_domain.items()}
            for split, by_domain in self.entries.items()
        }
        if self.output_dir is not None:
            write_splits(self.output_dir / "splits.json", self.splits)
            write_json_atomic(self.output_dir / "metadata_stats.json", self.metadata_statistics())

    # -- what the model needs to know about the data ------------------------------------
    def train_metadata(self) -> list[Metadata]:
        """Metadata of every training slice (both domains when mixed), for normalisation ranges."""
        self.setup()
        out: list[Metadata] = []
        for ds in self.datasets["train"].values():
            out.extend(ds.metadata(i) for i in range(len(ds)))
        return out

    def metadata_statistics(self) -> dict[str, Any]:
        """Numeric ranges and category vocabularies of the training split (both domains when
        mixed): what a fine-grained encoder fits on (``FineGrainedEncoder.fit``), written to
        ``<output_dir>/metadata_stats.json`` so a run's normalisation can be read without
        loading its checkpoint."""
        records = self.train_metadata()
        return {
            "train_slices": len(records),
            "numeric_ranges": NumericRanges.fit(records).to_dict(),
            "vocabulary": Vocabulary.fit(records).to_dict(),
        }

    def eval_dataset(self, split: str, domain: str = "brain", *, load_maps: bool = True) -> CachedSliceDataset:
        """A dataset of one split and domain, for reconstruction.

        With ``load_maps`` its items carry coil maps, complex64 (C, H, W) at the image's
        size: computed from the raw file (same ESPIRiT settings as the cached image) the
        first time an item is read, then cached beside the entry (see "Coil maps" in
        :mod:`metamri.preprocess.cache`), so only evaluated slices pay for them.
        """
        self.setup()
        if split not in self.entries:
            raise ConfigError("split", split, f"choose one of {list(SPLITS)}")
        return CachedSliceDataset(self.entries[split].get(domain, []), load_maps=load_maps, pool=self.pool)

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, dataset, *, sampler=None, batch_size: int, cls: type[DataLoader] = DataLoader) -> DataLoader:
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.datasets["train"]
        if self.ood_ratio is not None:
            brain, heart = train["brain"], train["cardiac"]
            dataset = ConcatDataset([brain, heart])
            sampler = RatioSampler(len(brain), len(heart), self.ood_ratio, seed=self.sampler_seed)
        else:
            dataset = ConcatDataset(list(train.values()))
            sampler = ResumableRandomSampler(dataset, seed=self.shuffle_seed)
        # resumes mid-epoch from a checkpoint (Lightning saves and loads its state)
        return self._loader(dataset, sampler=sampler, batch_size=self.batch_size, cls=ResumableDataLoader)

    def _eval_loader(self, split: str) -> DataLoader:
        datasets = list(self.datasets[split].values())
        if self.val_max_items is not None and split == "val":
            from torch.utils.data import Subset

            datasets = [Subset(d, range(min(len(d), self.val_max_items))) for d in datasets]
        return self._loader(ConcatDataset(datasets), batch_size=self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def _allow_crop(value: Any) -> frozenset[str]:
    """``data.preprocess.allow_crop`` -> the domains whose files may be cropped."""
    if value is None or value is False:
        return frozenset()
    if value is True:
        return frozenset(DOMAINS)
    if isinstance(value, str):
        value = [value]
    try:
        domains = frozenset(str(v) for v in value)
    except TypeError:
        raise ConfigError("data.preprocess.allow_crop", value, f"expected true, false or a list of {DOMAINS}") from None
    if not domains <= set(DOMAINS):
        raise ConfigError("data.preprocess.allow_crop", sorted(domains), f"domains must be in {DOMAINS}")
    return domains


def _has_raw_files(raw_dir: Path) -> bool:
    if not raw_dir.exists():
        return False
    return any(raw_dir.rglob("*.h5")) or any(raw_dir.rglob("*.mat"))
