"""Patient-level train/val/test splits, deterministic from a seed.

Slices of one patient never end up in two splits: the split is drawn over the
sorted list of patient ids with a seeded generator, then every volume follows
its patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from metamri.errors import ConfigError
from metamri.utils.io import write_json_atomic

SPLITS = ("train", "val", "test")


def split_patients(
    patient_ids: Iterable[str], fractions: Mapping[str, float], seed: int
) -> dict[str, list[str]]:
    """Assign each patient to one split.

    Args:
        patient_ids: Ids (duplicates allowed; each patient is assigned once).
        fractions: ``{"train": 0.7, "val": 0.15, "test": 0.15}``; must sum to 1.
        seed: Seed of the permutation.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.  Every
        split with a positive fraction gets at least one patient when there are
        at least as many patients as such splits; the train split takes the rest.
    """
    for name in fractions:
        if name not in SPLITS:
            raise ConfigError(f"data.split_fractions.{name}", fractions[name], f"unknown split; use {SPLITS}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6 or any(v < 0 for v in fractions.values()):
        raise ConfigError("data.split_fractions", dict(fractions), "fractions must be >= 0 and sum to 1")
    ids = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    ids = [ids[i] for i in order]
    n = len(ids)
    counts = {s: int(round(fractions.get(s, 0.0) * n)) for s in ("val", "test")}
    for s in ("val", "test"):
        if fractions.get(s, 0.0) > 0 and counts[s] == 0 and n >= 3:
            counts[s] = 1
    counts["train"] = n - counts["val"] - counts["test"]
    if counts["train"] <= 0 and fractions.get("train", 0) > 0:
        raise ConfigError("data.split_fractions", dict(fractions), f"leaves no training patient out of {n}")
    out, start = {}, 0
    for s in SPLITS:
        out[s] = sorted(ids[start : start + counts[s]])
        start += counts[s]
    return out


def write_splits(path: str | Path, splits: Mapping[str, Mapping[str, list[str]]]) -> None:
    """Write ``{domain: {split: [patient ids]}}`` as JSON (into the run directory)."""
    write_json_atomic(path, splits)
