"""Draw out-of-distribution samples at an exact configured ratio.

The mixed data module concatenates the brain and cardiac training sets; this
sampler decides, for every draw, which of the two to take from.  Draws come in
blocks of ``ood + ind`` (6 for the paper's 1:5): each block holds exactly
``ood`` cardiac and ``ind`` brain draws in a random order, so the OOD fraction
is exactly ``ood / (ood + ind)`` over every whole block, independent of how many
slices each dataset has.  Within a domain, indices follow a fresh random
permutation each time that domain's data is exhausted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from metamri.errors import ConfigError


class RatioSampler(Sampler[int]):
    """Indices into ``ConcatDataset([in_dist, ood])`` at the ratio ``ood : ind``.

    Args:
        n_in: Size of the in-distribution (brain) dataset, indices ``[0, n_in)``.
        n_ood: Size of the OOD (cardiac) dataset, indices ``[n_in, n_in + n_ood)``.
        ratio: ``(ood, ind)`` draws per block, e.g. ``(1, 5)``.
        num_samples: Draws per epoch; default ``n_in * (ood + ind) / ind`` so that
            each brain slice is seen about once an epoch.
        seed: Base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`).
    """

    def __init__(
        self, n_in: int, n_ood: int, ratio: tuple[int, int] = (1, 5), num_samples: int | None = None, seed: int = 0
    ) -> None:
        ood, ind = int(ratio[0]), int(ratio[1])
        if ood < 0 or ind < 1:
            raise ConfigError("data.ood_ratio", list(ratio), "need [ood, in_distribution] with ood >= 0 and in_distribution >= 1")
        if n_in < 1 or (ood > 0 and n_ood < 1):
            raise ConfigError("data.ood_ratio", list(ratio), f"cannot draw from empty datasets (brain {n_in}, cardiac {n_ood})")
        self.n_in, self.n_ood, self.ood, self.ind = n_in, n_ood, ood, ind
        self.num_samples = num_samples or max(1, round(n_in * (ood + ind) / ind))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    @staticmethod
    def _cycle(rng: np.random.Generator, n: int) -> Iterator[int]:
        while True:
            yield from rng.permutation(n).tolist()

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        block = np.array([1] * self.ood + [0] * self.ind)
        n_blocks = -(-self.num_samples // len(block))
        is_ood = np.concatenate([rng.permutation(block) for _ in range(n_blocks)])[: self.num_samples]
        brain, heart = self._cycle(rng, self.n_in), self._cycle(rng, max(self.n_ood, 1))
        for flag in is_ood:
            yield self.n_in + next(heart) if flag else next(brain)


