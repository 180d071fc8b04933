"""How much the metadata tells the prior, at each noise level.

For a prior ``eps_theta`` and N items ``(x_0, c)`` of one split, the denoising loss

    L_cond(t) = mean_i  mean_pixels ( eps_i - eps_theta(x_t,i, t, c_i^cond) )^2
    x_t,i     = sqrt(abar_t) x_0,i + sqrt(1 - abar_t) eps_i,   eps_i ~ N(0, I)

(the per-element mean of the training loss, paper Eq. 1; unitless, ``eps`` has unit
variance, so a prior that predicts 0 scores about 1) is measured at each timestep of a
fixed grid under three conditions (:data:`CONDITIONS`):

* ``true``: each item's own metadata;
* ``dropped``: every field dropped (the all-True drop mask, ``encoder.drop_all``): the
  unconditional branch classifier-free guidance uses;
* ``shuffled``: metadata permuted across volumes: item i gets the metadata of item
  ``donor[i]``, a seeded derangement over the items in which no item keeps metadata
  from its own source volume (:func:`volume_derangement`); the donor's slice number
  comes with its metadata (``dataset.metadata(donor)``).

The three conditions are paired: the same x_0, the same eps and the same t for every
condition. Noise is drawn per item and timestep from a generator seeded by
``(seed, crc32("fname|slice|frame"), t)``, so it depends neither on the batching nor on
which other items are measured (two priors measured with the same seed see the same
noise on the same slices). Items are a seeded random subset when ``max_items`` is given.
Nothing reads or changes the global RNGs.

``dropped - true`` is what the metadata buys at that noise level (it is >= 0 for a prior
that uses it well); ``shuffled - true`` separates "some plausible metadata" from "this
slice's metadata": a prior that learned only the population of protocols shows
``shuffled ~ true``, one that reads the item's own protocol shows ``shuffled > true``.

Output (:func:`information_curves`, written by :func:`write_information`): one row per
``(timestep, condition)``, columns :data:`COLUMNS`:

==============  ==============================================================
``timestep``    int, in [0, T)
``condition``   ``true`` | ``dropped`` | ``shuffled``
``loss_mean``   mean over the N items of the per-item loss (float)
``loss_se``     standard error over items of the per-item loss, ``std(ddof=1)/sqrt(N)``
``n``           N, the number of items
``diff_mean``   paired difference ``condition - true``: mean over items of the per-item
                loss difference (0 on ``true`` rows)
``diff_se``     its standard error over items (0 on ``true`` rows)
==============  ==============================================================

Standard errors are NaN when N = 1. The CSV has no comment lines (any CSV reader takes
it as is); what was measured (prior, split, N, seed, ...) goes to a sidecar JSON beside
it (``<out>.json``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import zlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from metamri.errors import ConfigError
from metamri.utils.io import atomic_output, write_json_atomic

log = logging.getLogger(__name__)

#: The metadata conditions, in output row order.
CONDITIONS = ("true", "dropped", "shuffled")
#: The CSV's columns, in order.
COLUMNS = ("timestep", "condition", "loss_mean", "loss_se", "n", "diff_mean", "diff_se")
#: What each column holds (copied into the sidecar JSON).
COLUMN_DOC = {
    "timestep": "DDPM timestep t in [0, T)",
    "condition": "true (own metadata) | dropped (every field dropped) | shuffled (metadata of "
                 "an item of another volume)",
    "loss_mean": "mean over items of the per-item loss mean_pixels (eps - eps_theta)^2",
    "loss_se": "standard error over items of the per-item loss (std ddof=1 / sqrt(n))",
    "n": "number of items",
    "diff_mean": "paired difference condition - true: mean over items (0 for true)",
    "diff_se": "standard error over items of the paired difference (0 for true)",
}

# Stream tags mixed into the seed: item subset, derangement and noise draw independently.
_TAG_SELECT, _TAG_SHUFFLE, _TAG_NOISE = 0x53454C, 0x534846, 0x4E4F49
_STYLES = {"true": "-", "dropped": "--", "shuffled": ":"}


def _seed_from(*parts: int) -> int:
    """A 32-bit seed from integers (negative ones wrap), via :class:`numpy.random.SeedSequence`."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng(_seed_from(seed, tag))


# ------------------------------------------------------------------ timesteps
def default_timesteps(num_train_timesteps: int, n: int = 20) -> list[int]:
    """``n`` timesteps over [0, T), denser at small t: ``round((T - 1) (k / (n - 1))^2)``.

    For T = 1000: 0, 3, 11, 25, 44, 69, 100, 136, 177, 224, 277, 335, 398, 468, 542, 623,
    708, 800, 897, 999 (sorted, duplicates removed for small T).
    """
    t_max = int(num_train_timesteps) - 1
    k = np.linspace(0.0, 1.0, int(n))
    return [int(t) for t in np.unique(np.round(t_max * k**2).astype(np.int64))]


def check_timesteps(timesteps: Sequence[Any] | None, num_train_timesteps: int,
                    key: str = "timesteps") -> list[int]:
    """The timestep grid as sorted, distinct ints in [0, T); ``None`` = :func:`default_timesteps`.

    Raises:
        ConfigError: naming ``key`` for an empty list, a value that is not an integer or
            one outside [0, T).
    """
    t_count = int(num_train_timesteps)
    if timesteps is None:
        return default_timesteps(t_count)
    if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__iter__"):
        raise ConfigError(key, timesteps, "expected a list of integer timesteps",
                          hint=f"e.g. {key}=[0,100,500,999], or null for the default grid")
    values = list(timesteps)
    if not values:
        raise ConfigError(key, values, "the timestep list is empty",
                          hint=f"give at least one timestep in [0, {t_count}), or null for the default grid")
    out = []
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) \
                or not float(t).is_integer():
            raise ConfigError(key, values, f"{t!r} is not an integer timestep")
        if not 0 <= int(t) < t_count:
            raise ConfigError(key, values, f"timestep {int(t)} lies outside [0, {t_count})",
                              hint=f"the prior's noise schedule has T = {t_count} steps")
        out.append(int(t))
    return sorted(set(out))


# ------------------------------------------------------------------ items and donors
def check_counts(max_items: Any, batch_size: Any) -> None:
    """``max_items`` is ``None`` or a positive int, ``batch_size`` a positive int, else a
    :class:`ConfigError` naming the key."""
    def positive(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1

    if not positive(batch_size):
        raise ConfigError("batch_size", batch_size, "must be a positive integer")
    if max_items is not None and not positive(max_items):
        raise ConfigError("max_items", max_items, "must be a positive integer, or null for every item")


def sample_items(n_total: int, max_items: int | None, seed: int) -> np.ndarray:
    """Dataset indices to measure, int64 (N,) ascending: all when ``max_items`` is ``None``
    or at least ``n_total``, else a seeded random subset of ``max_items`` (spread over
    volumes, unlike the first ``max_items``, which would take a few whole volumes)."""
    if max_items is None or max_items >= n_total:
        return np.arange(n_total, dtype=np.int64)
    chosen = _rng(seed, _TAG_SELECT).choice(n_total, size=int(max_items), replace=False)
    return np.sort(chosen).astype(np.int64)


def volume_derangement(volumes: Sequence[Hashable], seed: int) -> np.ndarray:
    """A seeded permutation ``donor`` (int64 (N,)) with ``volumes[donor[i]] != volumes[i]`` for all i.

    A uniform random permutation, then every item that kept its own volume swaps donors
    with a random item j such that both are served from another volume afterwards (j is
    outside the item's volume and its donor too). Such a j always exists when no volume
    holds more than half of the items, and every swap fixes the item without breaking j,
    so one pass suffices. Deterministic for a seed; the global RNGs are not used.

    Args:
        volumes: The source volume of each item (any hashable: a cache path, a file name).
        seed: Seed of the permutation.

    Raises:
        ValueError: when one volume holds more than half of the items (no such permutation).
    """
    labels = list(volumes)
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    codes_of: dict[Hashable, int] = {}
    codes = np.array([codes_of.setdefault(v, len(codes_of)) for v in labels], dtype=np.int64)
    counts = np.bincount(codes)
    if 2 * int(counts.max()) > n:
        biggest = labels[int(np.flatnonzero(codes == counts.argmax())[0])]
        raise ValueError(
            f"volume {biggest} holds {int(counts.max())} of the {n} items: no permutation gives "
            "every item the metadata of another volume (no volume may hold more than half of them)")
    rng = _rng(seed, _TAG_SHUFFLE)
    donor = rng.permutation(n).astype(np.int64)
    for i in rng.permutation(np.flatnonzero(codes[donor] == codes)):
        g = codes[i]
        if codes[donor[i]] != g:  # fixed by an earlier swap
            continue
        candidates = np.flatnonzero((codes != g) & (codes[donor] != g))
        j = int(rng.choice(candidates))
        donor[i], donor[j] = donor[j], donor[i]
    if np.any(codes[donor] == codes):  # pragma: no cover - excluded by the argument above
        raise RuntimeError("derangement repair failed")
    return donor


def item_volumes(dataset: Any, indices: Sequence[int]) -> list[str]:
    """The source volume of each item: the cache entry's path for a
    :class:`~metamri.datamodules.dataset.CachedSliceDataset` (unique, unlike CMRxRecon file
    names), ``dataset.volume(i)`` where a dataset defines it, else the item's ``fname``."""
    if hasattr(dataset, "entries") and hasattr(dataset, "index"):
        return [str(dataset.entries[dataset.index[int(i)][0]].path) for i in indices]
    if hasattr(dataset, "volume"):
        return [str(dataset.volume(int(i))) for i in indices]
    return [str(dataset[int(i)].fname) for i in indices]


def _item_metadata(dataset: Any, i: int):
    """Item ``i``'s metadata (slice filled in), without reading pixels where the dataset can."""
    if hasattr(dataset, "metadata"):
        return dataset.metadata(int(i))
    return dataset[int(i)].metadata


# ------------------------------------------------------------------ module helpers
def _num_train_timesteps(module: Any) -> int:
    t = getattr(module, "num_train_timesteps", None)
    return int(t if t is not None else module.noise_scheduler.config.num_train_timesteps)


def _device(module: Any) -> torch.device:
    if isinstance(module, nn.Module):
        for p in (*module.parameters(), *module.buffers()):
            return p.device
    return torch.device("cpu")


def _uses_ema(module: Any) -> bool:
    """Whether :meth:`ema_weights` swaps weights in (an EMA exists or waits to be loaded)."""
    return (getattr(module, "ema_decay", None) is not None
            and (getattr(module, "_ema", None) is not None or getattr(module, "_pending_ema", None) is not None))


@contextlib.contextmanager
def measuring(module: Any) -> Iterator[None]:
    """Eval mode, EMA weights (as validation uses them) and no autograd; restored after."""
    was_training = isinstance(module, nn.Module) and module.training
    if isinstance(module, nn.Module):
        module.eval()
    ema = getattr(module, "ema_weights", None)
    try:
        with (ema() if callable(ema) else contextlib.nullcontext()), torch.no_grad():
            yield
    finally:
        if was_training:
            module.train()


def item_noise(keys: Sequence[str], shape: tuple[int, ...], seed: int, t: int) -> torch.Tensor:
    """float32 (B, *shape) standard normal noise, each row from its own seeded CPU generator."""
    rows = []
    for key in keys:
        g = torch.Generator().manual_seed(_seed_from(seed, _TAG_NOISE, zlib.crc32(key.encode()), t))
        rows.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(rows)


# ------------------------------------------------------------------ the measurement
def information_curves(
    module: Any,
    dataset: Any,
    timesteps: Sequence[int] | None = None,
    max_items: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Denoising loss per timestep with true, dropped and shuffled metadata (paired).

    Args:
        module: The prior: a :class:`~metamri.training.module.MetaDiffusionModule` (or any
            object with ``encoder.fields``, ``encoder.drop_all(B)``, ``context(metadata,
            drop) -> (B, L, D)``, ``eps_from_context(x_t (B, 2, H, W), t (B,), ctx) -> (B, 2,
            H, W)`` and ``noise_scheduler.add_noise``). Measured in eval mode with its EMA
            weights where it has them (``ema_weights()``, as validation), on the device its
            parameters are on; its mode is restored after.
        dataset: Items :class:`~metamri.data.sample.ImageSample` with ``image`` float32
            (2, H, W) (one size for all), ``metadata``, ``fname``, ``slice_index``,
            ``frame``; ``dataset.metadata(i)`` is used for donors where it exists (a
            :class:`~metamri.datamodules.dataset.CachedSliceDataset`).
        timesteps: Integer timesteps in [0, T); ``None`` = :func:`default_timesteps` (20).
        max_items: Measure a seeded random subset of this many items (``None``: all).
        seed: Seed of the subset, the derangement and the noise.
        batch_size: Items per UNet call (the result does not depend on it, up to float
            rounding of batched kernels).

    Returns:
        A frame with :data:`COLUMNS`, rows ordered by timestep then :data:`CONDITIONS`;
        ``attrs`` holds ``items`` and ``donors`` (dataset indices; donors equal items for
        a prior that reads no metadata), ``n_items``, ``n_volumes``, ``timesteps``,
        ``num_train_timesteps``, ``seed``, ``fields``, ``encoder``, ``conditional`` (the
        encoder reads any field) and ``ema`` (EMA weights were used).

    Raises:
        ConfigError: for bad ``timesteps`` / ``max_items`` / ``batch_size``, an empty
            dataset, or items whose volumes cannot be deranged (one volume holds more than
            half of them).
    """
    t_count = _num_train_timesteps(module)
    ts = check_timesteps(timesteps, t_count)
    check_counts(max_items, batch_size)
    n_total = len(dataset)
    if n_total == 0:
        raise ConfigError("split", "<empty>", "the dataset holds no items to measure",
                          hint="choose another split or domain")
    seed = int(seed)
    items = sample_items(n_total, max_items, seed)
    n = len(items)
    volumes = item_volumes(dataset, items)
    encoder = module.encoder
    fields = tuple(encoder.fields)
    conditional = bool(fields)
    if conditional:
        try:
            donors = items[volume_derangement(volumes, seed)]
        except ValueError as exc:
            raise ConfigError("max_items", max_items, f"shuffled metadata: {exc}",
                              hint="measure more items or a split with more volumes") from None
    else:
        log.info("the prior reads no metadata (encoder %s, no fields): the true, dropped and "
                 "shuffled conditions are identical", type(encoder).__name__)
        donors = items.copy()

    device = _device(module)
    losses = np.zeros((len(ts), len(CONDITIONS), n), dtype=np.float64)
    ema = _uses_ema(module)
    with measuring(module):
        for start in range(0, n, int(batch_size)):
            idx, don = items[start:start + batch_size], donors[start:start + batch_size]
            samples = [dataset[int(i)] for i in idx]
            b = len(samples)
            x0 = torch.from_numpy(np.stack([np.asarray(s.image, dtype=np.float32) for s in samples]))
            x0 = x0.to(device)
            metadata = [s.metadata for s in samples]
            if conditional:
                contexts = [module.context(metadata),
                            module.context(metadata, encoder.drop_all(b)),
                            module.context([_item_metadata(dataset, int(j)) for j in don])]
            else:
                contexts = [module.context(metadata)] * len(CONDITIONS)
            # conditions whose contexts are equal share one prediction (exactly equal losses)
            first = []
            for c, ctx in enumerate(contexts):
                same = next((k for k in range(c) if contexts[k] is ctx or (
                    contexts[k].shape == ctx.shape and torch.equal(contexts[k], ctx))), c)
                first.append(same)
            keys = [f"{s.fname}|{int(s.slice_index)}|{int(s.frame)}" for s in samples]
            for k, t in enumerate(ts):
                eps = item_noise(keys, tuple(x0.shape[1:]), seed, t).to(device=device, dtype=x0.dtype)
                tt = torch.full((b,), t, dtype=torch.long, device=device)
                x_t = module.noise_scheduler.add_noise(x0, eps, tt)
                for c, ctx in enumerate(contexts):
                    if first[c] != c:
                        losses[k, c, start:start + b] = losses[k, first[c], start:start + b]
                        continue
                    pred = module.eps_from_context(x_t, tt, ctx)
                    per = (pred.float() - eps.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
                    losses[k, c, start:start + b] = per.detach().cpu().double().numpy()

    rows = []
    for k, t in enumerate(ts):
        for c, cond in enumerate(CONDITIONS):
            loss_mean, loss_se = _mean_se(losses[k, c])
            diff_mean, diff_se = (0.0, 0.0) if c == 0 else _mean_se(losses[k, c] - losses[k, 0])
            rows.append({"timestep": int(t), "condition": cond, "loss_mean": loss_mean,
                         "loss_se": loss_se, "n": int(n), "diff_mean": diff_mean, "diff_se": diff_se})
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame.attrs.update({
        "items": [int(i) for i in items], "donors": [int(j) for j in donors], "n_items": int(n),
        "n_volumes": len(set(volumes)), "timesteps": list(ts), "num_train_timesteps": t_count,
        "seed": seed, "fields": list(fields), "encoder": type(encoder).__name__,
        "conditional": conditional, "ema": ema,
    })
    return frame


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (``std(ddof=1) / sqrt(n)``; NaN for n < 2) of a 1-D array."""
    n = values.size
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


# ------------------------------------------------------------------ output
def write_information(frame: pd.DataFrame, path: str | PathLike[str],
                      info: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``frame`` to the CSV ``path`` and a sidecar JSON ``<path minus suffix>.json``.

    Both atomically (:mod:`metamri.utils.io`). The JSON holds ``info`` (prior, split, ...),
    the frame's ``attrs`` (:func:`information_curves`) and :data:`COLUMN_DOC`.

    Returns:
        ``(csv_path, json_path)``.
    """
    csv_path = Path(path)
    json_path = csv_path.with_suffix(".json")
    if json_path == csv_path:
        json_path = csv_path.with_name(csv_path.name + ".json")
    with atomic_output(csv_path) as tmp:
        frame.to_csv(tmp, index=False, columns=list(COLUMNS))
    meta = {**_jsonable(dict(frame.attrs)), **_jsonable(dict(info or {})),
            "csv": csv_path.name, "columns": COLUMN_DOC,
            "differences": "rows of dropped/shuffled carry diff_mean, diff_se = paired "
                           "(condition - true) over items; true rows carry 0"}
    write_json_atomic(json_path, meta)
    return csv_path, json_path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------ plot
def _differences(frame: pd.DataFrame, cond: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, diff, se) of ``cond - true`` in percent of the true loss at that timestep, ``100 *
    diff_mean / loss_true`` (the loss spans three decades over t, so absolute differences
    hide the low-noise end); from loss_mean (se NaN) when the CSV has no paired columns."""
    sub = frame[frame["condition"] == cond].sort_values("timestep")
    t = sub["timestep"].to_numpy(float)
    true = frame[frame["condition"] == "true"].set_index("timestep")["loss_mean"]
    true = true.reindex(sub["timestep"]).to_numpy(float)
    if "diff_mean" in frame:
        d, se = sub["diff_mean"].to_numpy(float), sub["diff_se"].to_numpy(float)
    else:
        d = sub["loss_mean"].to_numpy(float) - true
        se = np.full_like(d, np.nan)
    return t, 100.0 * d / true, 100.0 * se / true


def plot_information(entries: Sequence[Mapping[str, Any]], out_png: str | PathLike[str]) -> Path:
    """One PNG: loss against timestep per prior and condition, and the paired differences.

    Left panel: ``loss_mean`` against t, one colour per prior (entry), one line style per
    condition (true solid, dropped dashed, shuffled dotted), a ±2 se band; log y when every
    loss is positive (the band is then that of log loss, ``y exp(±2 se / y)``). Right panel:
    ``dropped - true`` (dashed) and ``shuffled - true`` (dotted) against t, in percent of the
    true loss at t, with ±2 se bands (paired standard errors, same scale), and a zero line.

    Args:
        entries: ``{"label": str, "csv": path}`` per prior; each CSV as written by
            :func:`write_information` (columns :data:`COLUMNS`; one without ``diff_*``
            columns gets its differences from ``loss_mean``, without bands).
        out_png: Where the PNG goes (written atomically).

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = [(str(e["label"]), pd.read_csv(e["csv"])) for e in entries]
    log_y = bool(frames) and all(bool((f["loss_mean"] > 0).all()) for _, f in frames)
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_diff = fig.subplots(1, 2)
    for i, (label, frame) in enumerate(frames):
        colour = f"C{i % 10}"
        conds = [c for c in CONDITIONS if c in set(frame["condition"])]
        conds += sorted(set(frame["condition"]) - set(CONDITIONS))
        for cond in conds:
            sub = frame[frame["condition"] == cond].sort_values("timestep")
            t = sub["timestep"].to_numpy(float)
            y = sub["loss_mean"].to_numpy(float)
            se = sub["loss_se"].to_numpy(float) if "loss_se" in sub else np.full_like(y, np.nan)
            ax_loss.plot(t, y, _STYLES.get(str(cond), "-."), color=colour, marker=".", ms=3,
                         label=f"{label}, {cond}")
            band = np.nan_to_num(2 * se)
            if log_y:  # the band of log(loss), delta method: y exp(+-2 se / y), always positive
                lo, hi = y * np.exp(-band / y), y * np.exp(band / y)
            else:
                lo, hi = y - band, y + band
            ax_loss.fill_between(t, lo, hi, color=colour, alpha=0.12, lw=0)
        for cond in ("dropped", "shuffled"):
            if cond not in conds:
                continue
            t, d, se = _differences(frame, cond)
            ax_diff.plot(t, d, _STYLES[cond], color=colour, marker=".", ms=3,
                         label=f"{label}, {cond} − true")
            band = np.nan_to_num(2 * se)
            ax_diff.fill_between(t, d - band, d + band, color=colour, alpha=0.15, lw=0)
    if log_y:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("timestep t")
    ax_loss.set_ylabel("denoising loss  mean (ε − ε_θ)²")
    ax_loss.set_title("loss by metadata condition (±2 se)", fontsize=9)
    ax_diff.axhline(0.0, color="black", lw=0.8)
    ax_diff.set_xlabel("timestep t")
    ax_diff.set_ylabel("paired loss difference to true metadata (% of true loss)")
    ax_diff.set_title("what the metadata buys (% of the loss, ±2 se, paired)", fontsize=9)
    for ax in (ax_loss, ax_diff):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return Path(out_png)
