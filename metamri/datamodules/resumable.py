"""A training DataLoader that resumes mid-epoch where it stopped.

Lightning restores its loop counters from a checkpoint, but a plain ``DataLoader`` starts its
epoch again from the first batch: a run resumed after ``k`` of an epoch's ``n`` batches would
draw batches ``0 .. n-k-1`` of that epoch (some slices twice, others never) and its weights
would part from those of the uninterrupted run. Lightning saves and restores the state of a
loader that implements ``state_dict`` / ``load_state_dict`` (``fit_loop`` ->
``combined_loader`` in the checkpoint); :class:`ResumableDataLoader` does, so that

* the resumed epoch draws the same order as the interrupted one (the sampler is seeded per
  epoch: :class:`~metamri.datamodules.ratio_sampler.RatioSampler`, or a
  :class:`ResumableRandomSampler`, which records the seed it drew) and skips, at the index
  level (no slice is read), the ``k`` batches already trained on;
* later epochs are those of the uninterrupted run whenever the sampler's order depends on
  its epoch only (``RatioSampler``; ``ResumableRandomSampler(seed=int)``; Lightning's
  ``DistributedSampler`` under DDP). ``ResumableRandomSampler(seed=None)`` draws each epoch's
  seed from torch's global generator, as ``RandomSampler`` does: bit-identical to
  ``shuffle=True`` on a fresh run, but the global generator's state after a resume is not
  that of the uninterrupted run, so the epochs *after* the resumed one get other (equally
  random) orders.

The skip counts the batches this loader handed out in the current epoch: with a sized loader
Lightning fetches no batch ahead, so at a checkpoint this is the number of batches trained on
(also under DDP, where each rank skips ``k`` batches of its own shard: the wrapper works on the
batch sampler Lightning builds around its distributed sampler).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


class ResumableRandomSampler(RandomSampler):
    """``RandomSampler`` (without replacement) whose epoch order can be replayed.

    Args:
        data_source: The dataset.
        seed: ``None``: each epoch's seed is drawn from torch's global generator exactly as
            ``RandomSampler`` draws it (the same orders as ``shuffle=True``); an int: epoch
            ``e`` uses a generator seeded by ``(seed, e)`` (call :meth:`set_epoch`), so every
            epoch is reproducible, also after a resume.
    """

    def __init__(self, data_source, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = None if seed is None else int(seed)
        self.epoch = 0
        self.last_seed: int | None = None  # the seed of the epoch drawn last
        self._replay: tuple[int, int] | None = None  # (epoch, seed) to draw again

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "last_seed": self.last_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Draw the saved epoch again with its seed (when that epoch is the next one drawn)."""
        self.epoch = int(state.get("epoch", self.epoch))
        if state.get("last_seed") is not None:
            self._replay = (self.epoch, int(state["last_seed"]))

    def _epoch_seed(self) -> int:
        replay, self._replay = self._replay, None
        if replay is not None and replay[0] == self.epoch:
            return replay[1]
        if self.seed is not None:
            return int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1)
        # what RandomSampler does without a generator
        return int(torch.empty((), dtype=torch.int64).random_().item())

    def __iter__(self) -> Iterator[int]:
        seed = self.last_seed = self._epoch_seed()
        generator = torch.Generator()
        generator.manual_seed(seed)
        n = len(self.data_source)
        for _ in range(self.num_samples // n):
            yield from torch.randperm(n, generator=generator).tolist()
        yield from torch.randperm(n, generator=generator).tolist()[: self.num_samples % n]


def _sampler_epoch(sampler: Any) -> int | None:
    epoch = getattr(sampler, "epoch", None)
    return None if epoch is None else int(epoch)


class _SkipFirst:
    """The loader's batch sampler with the first ``k`` batches of a resumed epoch left out.

    ``len`` stays that of the whole epoch (Lightning counts the epoch's batches from it and
    restores how many of them were done); the skip is decided when iteration starts, after
    Lightning has set the sampler's epoch, and applies to one epoch only.
    """

    def __init__(self, base: Any, loader: ResumableDataLoader) -> None:
        self.base, self.loader = base, loader

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[Any]:
        # a generator: decided at the first draw (a worker iterator calls iter() twice)
        yield from islice(self.base, self.loader._take_skip(), None)


class _Counting:
    """The DataLoader's iterator, counting the batches handed out in this epoch."""

    def __init__(self, it: Iterator[Any], loader: ResumableDataLoader) -> None:
        self._it, self._loader = it, loader

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self._it)
        self._loader._consumed += 1
        return batch

    def __len__(self) -> int:
        return len(self._it)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # the wrapped iterator's other attributes
        if name.startswith("__") or name in ("_it", "_loader"):
            raise AttributeError(name)
        return getattr(self._it, name)


class ResumableDataLoader(DataLoader):
    """A map-style ``DataLoader`` with Lightning's ``state_dict`` / ``load_state_dict``.

    The state is ``{"epoch", "batches", "sampler"}``: the sampler's epoch, the batches handed
    out in it, and the sampler's own state (when it has one: :class:`ResumableRandomSampler`'s
    seed). Loading it makes the next epoch the saved one, minus its first ``batches`` batches;
    a state saved at the end of an epoch resumes at the start of the next.
    """

    _consumed: int = 0
    _resume: tuple[int | None, int] | None = None

    @property
    def _index_sampler(self) -> Any:  # what the iterator draws its indices from
        return _SkipFirst(super()._index_sampler, self)

    def __iter__(self) -> Any:
        self._consumed = 0 if self._resume is None else self._resume[1]
        return _Counting(super().__iter__(), self)

    def _samplers(self) -> list[Any]:
        """The sampler, and the one inside Lightning's distributed wrapper (it holds the state)."""
        out = [self.sampler]
        inner = getattr(getattr(self.sampler, "dataset", None), "_sampler", None)
        if inner is not None:
            out.append(inner)
        return out

    def _take_skip(self) -> int:
        resume, self._resume = self._resume, None
        if resume is None:
            return 0
        epoch, skip = resume
        if _sampler_epoch(self.sampler) != epoch:  # Lightning moved on to another epoch
            self._consumed = 0
            return 0
        return skip

    def state_dict(self) -> dict[str, Any]:
        sampler_state = next((s.state_dict() for s in self._samplers() if hasattr(s, "state_dict")), None)
        return {"epoch": _sampler_epoch(self.sampler), "batches": int(self._consumed), "sampler": sampler_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from lightning.fabric.utilities.data import _set_sampler_epoch

        epoch, batches = state.get("epoch"), int(state.get("batches", 0))
        if 0 < batches < len(self):
            self._resume = (epoch, batches)
            for s in self._samplers():
                if state.get("sampler") is not None and hasattr(s, "load_state_dict"):
                    s.load_state_dict(state["sampler"])
        elif epoch is not None and batches >= len(self):
            epoch += 1  # saved at the end of its epoch: the next one starts from its first batch
        # Lightning sets the epoch before each epoch, but with workers the first indices are
        # drawn when the iterator is created, which on a resume comes before that.
        if epoch is not None:
            _set_sampler_epoch(self, epoch)

