"""Does the header agree with the image? Candidate values of one field ranked by the prior.

For a slice image ``x0`` (float32 (2, H, W), real and imaginary parts in normalised units:
p99 of the magnitude about 1, as training saw them), its header record ``m`` and candidate
values ``v_1 .. v_K`` of one field ``f``, the prior's denoising loss with ``m[f := v_k]``:

    L_k = mean over (t, r) of mean_pixels (eps_tr - eps_theta(x_tr, t, c(m[f := v_k])))^2
    x_tr = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_tr,   eps_tr ~ N(0, I)

over a fixed grid of timesteps ``t`` and ``n_noise`` draws ``r`` per timestep. Every
candidate sees the same ``(t, eps_tr)`` (paired), so the candidates' losses differ through
the metadata alone. The field's value that explains the image best has the lowest loss; the
stated value's **rank** is 1 + the number of candidates with a strictly lower loss, and the
header is **flagged** when that rank exceeds ``flag_rank`` (default 1: any candidate
explains the image better than the stated value).

The noise of draw ``r`` at timestep ``t`` comes from a generator seeded by ``(seed,
crc32("fname|slice|frame|r"), t)`` (:func:`metamri.analysis.information.item_noise`): it
depends neither on the batching nor on the other slices. Measured in eval mode with the
EMA weights where the prior has them (:func:`metamri.analysis.information.measuring`).

The default timesteps, 100 to 400, are where the study's information curves
(``experiments/study/report/information.png``, measured on the *validation* split) show the
true metadata lowering the loss; above t of about 620 it does not.

On a split (:func:`split_losses`) one pass gives both rates of a categorical field, because
the candidates' losses do not depend on which value the header states:

* **false alarm**: the share of slices whose true value is flagged;
* **detection**: the share of (slice, wrong value) pairs in which the wrong value, stated
  instead of the true one, is flagged (every other candidate counts as one wrong header).

Both with a percentile bootstrap interval resampling patients
(:func:`metamri.report.bootstrap.volume_bootstrap` over per-unit means; :func:`rates`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from metamri.errors import ConfigError
from metamri.metadata import Metadata
from metamri.metadata.schema import FIELDS, FieldKind

log = logging.getLogger(__name__)

#: Timesteps of the loss (see the module doc).
DEFAULT_TIMESTEPS = (100, 200, 300, 400)


@dataclass(frozen=True)
class Verdict:
    """One slice's ranking of the candidates of ``field``.

    Attributes:
        key: ``"fname|slice|frame"``.
        field: The field ranked.
        stated: The header's value.
        candidates: The values ranked (the stated value among them).
        losses: float64 (K,) mean loss per candidate (unitless, as the training loss).
        rank: The stated value's rank, 1 = lowest loss.
        best: The candidate with the lowest loss.
        flagged: ``rank > flag_rank``.
    """

    key: str
    field: str
    stated: Any
    candidates: tuple[Any, ...]
    losses: np.ndarray
    rank: int
    best: Any
    flagged: bool

    def line(self) -> str:
        """One line for the terminal."""
        flag = "FLAGGED" if self.flagged else "ok"
        ranked = ", ".join(f"{c}={v:.5f}" for v, c in sorted(zip(self.losses, self.candidates, strict=True)))
        return (f"{self.key}: {self.field} stated {self.stated!r} ranks {self.rank}/{len(self.candidates)} "
                f"(best {self.best!r}) {flag}; losses {ranked}")


def check_field(field: str) -> str:
    """``field`` if the schema knows it and a prior can read it, else a :class:`ConfigError`."""
    if field not in FIELDS:
        raise ConfigError("field", field, "unknown metadata field", hint=f"known: {sorted(FIELDS)}")
    if FIELDS[field].kind not in (FieldKind.CATEGORICAL, FieldKind.NUMERIC):
        raise ConfigError("field", field, f"is a {FIELDS[field].kind} field",
                          hint="rank a categorical (contrast, sequence) or a numeric field (te, tr, ti, flip_angle)")
    return field


def check_timesteps(timesteps: Sequence[Any], num_train_timesteps: int) -> list[int]:
    """Sorted distinct timesteps in [0, T) (:func:`metamri.analysis.information.check_timesteps`)."""
    from metamri.analysis.information import check_timesteps as check

    return check(list(timesteps), num_train_timesteps, key="timestep_grid")


def candidates_with(stated: Any, candidates: Sequence[Any], field: str) -> tuple[Any, ...]:
    """The candidate values with the stated one among them (appended when missing), in order.

    Raises:
        ConfigError: Fewer than two distinct candidates, or a numeric candidate that is not a number.
    """
    numeric = FIELDS[field].kind is FieldKind.NUMERIC
    out: list[Any] = []
    for c in candidates:
        if numeric:
            try:
                c = float(c)
            except (TypeError, ValueError):
                raise ConfigError("candidates", list(candidates), f"{c!r} is not a number for {field}") from None
        if c not in out:
            out.append(c)
    if stated is not None and stated not in out:
        out.append(float(stated) if numeric else stated)
    if len(out) < 2:
        raise ConfigError("candidates", list(candidates), f"need at least two distinct values of {field} to rank",
                          hint="give candidates=[...] or a split whose records hold several values")
    return tuple(out)


@torch.no_grad()
def candidate_losses(module: Any, image: np.ndarray | torch.Tensor, meta: Metadata, field: str,
                     candidates: Sequence[Any], *, key: str, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
                     n_noise: int = 2, seed: int = 0) -> np.ndarray:
    """float64 (K,): the loss ``L_k`` of each candidate (module doc), paired over (t, eps).

    Args:
        module: The prior (``context``, ``eps_from_context``, ``noise_scheduler``; a
            :class:`~metamri.training.module.MetaDiffusionModule`). Call it inside
            :func:`~metamri.analysis.information.measuring` (eval mode, EMA weights).
        image: float32 (2, H, W) in normalised units.
        meta: The slice's record; ``field`` is replaced by each candidate in turn.
        field: A field of the schema.
        candidates: K values of ``field``.
        key: Names the slice in the noise seeds (``"fname|slice|frame"``).
        timesteps: Integer timesteps in [0, T).
        n_noise: Noise draws per timestep.
        seed: Seed of the noise.
    """
    from metamri.analysis.information import item_noise

    if int(n_noise) < 1:
        raise ConfigError("n_noise", n_noise, "must be a positive integer")
    device = next(module.parameters()).device
    x0 = torch.as_tensor(np.asarray(image, dtype=np.float32)).to(device)
    if x0.ndim != 3 or x0.shape[0] != 2:
        raise ValueError(f"{key}: the image must be float32 (2, H, W), got {tuple(x0.shape)}")
    k, r = len(candidates), int(n_noise)
    ctx = module.context([meta.replace(**{field: c}) for c in candidates])  # (K, L, D)
    ctx = ctx.repeat_interleave(r, dim=0)                                   # (K R, L, D)
    keys = [f"{key}|{j}" for j in range(r)]
    total = torch.zeros(k, dtype=torch.float64)
    for t in timesteps:
        eps = item_noise(keys, tuple(x0.shape), seed, int(t)).to(device=device, dtype=x0.dtype)  # (R, 2, H, W)
        tt = torch.full((r,), int(t), dtype=torch.long, device=device)
        x_t = module.noise_scheduler.add_noise(x0.expand(r, *x0.shape), eps, tt)
        pred = module.eps_from_context(x_t.repeat(k, 1, 1, 1), tt.repeat(k), ctx)
        per = (pred.float() - eps.repeat(k, 1, 1, 1).float()).pow(2).mean(dim=(1, 2, 3))
        total += per.view(k, r).mean(dim=1).double().cpu()
    return (total / len(timesteps)).numpy()


def verdict(key: str, field: str, stated: Any, candidates: Sequence[Any], losses: np.ndarray,
            flag_rank: int = 1) -> Verdict:
    """The stated value's rank among ``candidates`` by ``losses`` and whether it is flagged."""
    losses = np.asarray(losses, dtype=np.float64)
    i = list(candidates).index(stated)
    rank = 1 + int(np.sum(losses < losses[i]))
    best = candidates[int(np.argmin(losses))]
    return Verdict(key, field, stated, tuple(candidates), losses, rank, best, rank > int(flag_rank))


def split_losses(module: Any, samples: Sequence[Any], field: str, candidates: Sequence[Any], *,
                 images: Sequence[np.ndarray] | None = None, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
                 n_noise: int = 2, seed: int = 0) -> pd.DataFrame:
    """Every candidate's loss on every slice: one row per (slice, candidate).

    Args:
        samples: :class:`~metamri.data.sample.ImageSample` items (their ``image`` is used
            unless ``images`` is given; their ``metadata`` holds the true value).
        images: float32 (2, H, W) per sample to score instead (e.g. zero-filled images).

    Returns:
        Columns ``fname, slice, frame, true, candidate, loss``.
    """
    from metamri.analysis.information import measuring

    rows = []
    with measuring(module):
        for i, s in enumerate(samples):
            key = f"{s.fname}|{int(s.slice_index)}|{int(s.frame)}"
            true = getattr(s.metadata, field)
            cands = candidates_with(true, candidates, field)
            img = s.image if images is None else images[i]
            losses = candidate_losses(module, img, s.metadata, field, cands, key=key, timesteps=timesteps,
                                      n_noise=n_noise, seed=seed)
            rows += [{"fname": str(s.fname), "slice": int(s.slice_index), "frame": int(s.frame), "true": true,
                      "candidate": c, "loss": float(v)} for c, v in zip(cands, losses, strict=True)]
            if (i + 1) % 10 == 0 or i + 1 == len(samples):
                log.info("ranked %d / %d slices", i + 1, len(samples))
    return pd.DataFrame(rows, columns=["fname", "slice", "frame", "true", "candidate", "loss"])


@dataclass(frozen=True)
class Rates:
    """False-alarm and detection rates of one flag rule on a split (module doc), with intervals.

    ``false_alarm`` / ``detection``: :class:`~metamri.report.bootstrap.Interval` of the share
    (0..1); ``n_slices``, ``n_wrong`` (slice x wrong value pairs), ``n_units`` (patients);
    ``confusion``: true value -> candidate -> share of that value's slices where the
    candidate has the lowest loss.
    """

    flag_rank: int
    false_alarm: Any
    detection: Any
    n_slices: int
    n_wrong: int
    n_units: int
    confusion: dict[str, dict[str, float]]


def rates(frame: pd.DataFrame, flag_rank: int = 1, units: np.ndarray | None = None, *,
          n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Rates:
    """False alarms on the true headers and detections of each wrong value, from :func:`split_losses`.

    Args:
        frame: Rows of :func:`split_losses`.
        flag_rank: Flag a stated value whose rank exceeds this.
        units: The resampling unit of each *slice* in the frame's slice order (e.g. the
            patient); ``None``: the fname.
    """
    from metamri.report.bootstrap import volume_bootstrap

    false_alarm, detected, slice_units, wrong_units = [], [], [], []
    confusion: dict[str, dict[str, float]] = {}
    groups = list(frame.groupby(["fname", "slice", "frame"], sort=False))
    if units is not None and len(units) != len(groups):
        raise ValueError(f"units: one per slice ({len(groups)}), got {len(units)}")
    for n, ((fname, _, _), g) in enumerate(groups):
        unit = fname if units is None else units[n]
        cands, losses, true = list(g["candidate"]), g["loss"].to_numpy(), g["true"].iloc[0]
        rank = {c: 1 + int(np.sum(losses < losses[i])) for i, c in enumerate(cands)}
        false_alarm.append(float(rank[true] > flag_rank))
        slice_units.append(unit)
        for c in cands:
            if c != true:
                detected.append(float(rank[c] > flag_rank))
                wrong_units.append(unit)
        best = cands[int(np.argmin(losses))]
        row = confusion.setdefault(str(true), {})
        row[str(best)] = row.get(str(best), 0.0) + 1.0
    for row in confusion.values():
        total = sum(row.values())
        for c in row:
            row[c] /= total
    fa = volume_bootstrap(np.asarray(false_alarm), np.asarray(slice_units, dtype=object),
                          n_boot=n_boot, seed=seed, level=level)
    det = volume_bootstrap(np.asarray(detected), np.asarray(wrong_units, dtype=object),
                           n_boot=n_boot, seed=seed, level=level)
    return Rates(int(flag_rank), fa, det, len(groups), len(detected), len(set(slice_units)), confusion)
