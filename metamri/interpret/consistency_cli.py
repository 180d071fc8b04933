"""``python -m metamri.interpret consistency``: rank a field's candidate values per slice.

Thin on purpose (keys in ``conf/interpret_consistency.yaml``; what is measured in
:mod:`metamri.interpret.consistency`). Two sources:

* ``inputs=FILE.h5`` (file mode): each slice of the file is undersampled with the ``mask``
  (seeded by the file name; a file's own mask is used when it has one), prepared as
  :mod:`metamri.reconstruct` prepares measured data (ESPIRiT maps from the calibration
  region, k-space divided by the p99 of the zero-filled image), and its zero-filled image
  ``A^H y`` (``image=zero_filled``) or its compressed-sensing reconstruction (``image=cs``,
  the ``cs`` block) is scored; one verdict line per slice.
* ``inputs=null`` (split mode): the ``split`` / ``domain`` dataset of ``data``, the central
  ``items_per_volume`` slices of each volume as the study's evaluation takes them, scored on
  the fully sampled image (``image=reference``), or the zero-filled image (``image=zero_filled``)
  or CS reconstruction (``image=cs``) of its k-space undersampled by ``mask``, re-normalised
  to p99 = 1; then the false-alarm and detection rates with patient-bootstrap intervals.

Writes ``<out_dir>/consistency.csv`` and ``consistency.json`` atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from metamri.errors import ConfigError
from metamri.utils.cli import hydra_task
from metamri.utils.hydra import CONF_DIR, plain, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()

IMAGES = ("reference", "zero_filled", "cs")
#: the images a file's undersampled slices can give (a file holds no fully sampled reference
#: the prior could be shown without its mask)
FILE_IMAGES = ("zero_filled", "cs")


def _validate(cfg: DictConfig) -> None:
    """Every setting, before the prior or any data is read."""
    from metamri.interpret.consistency import check_field
    from metamri.utils import checks

    check_field(str(cfg.field))
    allowed = IMAGES if cfg.get("inputs") is None else FILE_IMAGES
    if cfg.get("image") not in allowed:
        raise ConfigError("image", cfg.get("image"), f"choose one of {list(allowed)}"
                          + ("" if cfg.get("inputs") is None else " with inputs= (file mode)"))
    if cfg.get("image") == "cs":
        from metamri.evaluation.builder import cs_kwargs

        cs_kwargs(cfg.get("cs"))
    checks.integer(cfg.n_noise, "n_noise", minimum=1)
    checks.integer(cfg.flag_rank, "flag_rank", minimum=1)
    checks.integer(cfg.n_boot, "n_boot", minimum=1)
    ts = plain(cfg.timestep_grid)
    if not isinstance(ts, list) or not ts:
        raise ConfigError("timestep_grid", ts, "must be a non-empty list of integer timesteps")
    cands = plain(cfg.get("candidates"))
    if cands is not None and not isinstance(cands, list):
        raise ConfigError("candidates", cands, "must be a list of values or null")
    if cfg.get("max_slices") is not None:
        checks.integer(cfg.max_slices, "max_slices", minimum=1)


def _undersampled_image(y, maps, mask, cfg: DictConfig) -> np.ndarray:
    """The ``image`` of undersampled k-space: ``A^H y`` or its CS reconstruction, complex64 (H, W).

    ``y``, ``maps``: complex (C, H, W); ``mask``: bool (W,) or (H, W).
    """
    from metamri.evaluation.builder import cs_kwargs
    from metamri.recon.baselines import compressed_sensing, zero_filled

    y, maps = np.asarray(y, dtype=np.complex64), np.asarray(maps, dtype=np.complex64)
    if cfg.image == "cs":
        return compressed_sensing(y, maps, np.asarray(mask), **cs_kwargs(cfg.get("cs"))).astype(np.complex64)
    return np.asarray(zero_filled(y, maps, np.asarray(mask)), dtype=np.complex64)


def _file_images(path: Path, cfg: DictConfig) -> list[tuple[str, Any, np.ndarray]]:
    """``(key, metadata, image float32 (2, H, W))`` of every slice of a file (``image``: zero-filled or CS)."""
    from metamri.data.readers import open_volume
    from metamri.evaluation.builder import build_mask
    from metamri.preprocess.espirit import EspiritParams
    from metamri.preprocess.measured import check_kspace_shape, prepare_slice
    from metamri.preprocess.mvue import to_two_channel

    espirit = EspiritParams.from_config(cfg.get("espirit"))
    mask_fn = build_mask(cfg.mask)
    out = []
    for item in open_volume(path):
        where = f"slice {item.slice_index}" + ("" if item.frame is None else f", frame {item.frame}")
        kspace = np.asarray(item.kspace, dtype=np.complex64)
        check_kspace_shape(kspace, path, where)
        mask = (np.asarray(item.mask) != 0 if item.mask is not None
                else np.asarray(mask_fn(kspace.shape[-2:], seed=path.name), dtype=bool))
        m = prepare_slice(kspace, mask, item.recon_size, espirit, path=path, where=where)
        image = _undersampled_image(m.y, m.maps, m.mask, cfg)
        frame = -1 if item.frame is None else int(item.frame)
        out.append((f"{path.name}|{int(item.slice_index)}|{frame}", item.metadata,
                    to_two_channel(np.asarray(image))))
    return out


def _default_candidates(module: Any, field: str) -> list[Any]:
    """The prior's vocabulary for a categorical field (file mode without ``candidates``)."""
    from metamri.metadata.schema import FIELDS, FieldKind

    vocab = getattr(getattr(getattr(module, "encoder", None), "finegrained", None), "vocabulary", None)
    if vocab is None:
        vocab = getattr(getattr(module, "encoder", None), "vocabulary", None)
    if FIELDS[field].kind is FieldKind.CATEGORICAL and vocab is not None:
        values = [v for v in vocab.to_dict().get(field, []) if v]
        if len(values) >= 2:
            return values
    raise ConfigError("candidates", None, f"the prior holds no vocabulary of {field} to rank",
                      hint=f"give candidates=[...] (values of {field})")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Rank, write and return the JSON summary."""
    from metamri.analysis.information import measuring
    from metamri.interpret import consistency as cons
    from metamri.priors import load_prior
    from metamri.validation import check_device

    _validate(cfg)
    field = str(cfg.field)
    device = check_device(cfg.get("device", "cpu"))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    module = load_prior(cfg.prior).to(device)
    timesteps = cons.check_timesteps(plain(cfg.timestep_grid), module.num_train_timesteps)
    kw = {"timesteps": timesteps, "n_noise": int(cfg.n_noise), "seed": int(cfg.seed)}
    out_dir = Path(str(cfg.out_dir))
    settings = {"prior": str(cfg.prior), "field": field, "timesteps": timesteps, "n_noise": int(cfg.n_noise),
                "seed": int(cfg.seed), "flag_rank": int(cfg.flag_rank)}
    inputs = plain(cfg.get("inputs"))
    if inputs is not None:
        files = [Path(str(p)) for p in (inputs if isinstance(inputs, list) else [inputs])]
        cands = plain(cfg.get("candidates")) or _default_candidates(module, field)
        verdicts, rows = [], []
        with measuring(module):
            for path in files:
                for key, meta, image in _file_images(path, cfg):
                    stated = getattr(meta, field)
                    if stated is None:
                        raise ConfigError("field", field, f"{path}: the header states no {field}",
                                          hint="rank a field the file's header holds")
                    ranked = cons.candidates_with(stated, cands, field)
                    losses = cons.candidate_losses(module, image, meta, field, ranked, key=key, **kw)
                    v = cons.verdict(key, field, stated, ranked, losses, int(cfg.flag_rank))
                    print(v.line())
                    verdicts.append({"key": key, "stated": stated, "rank": v.rank, "of": len(ranked),
                                     "best": v.best, "flagged": v.flagged})
                    rows += [{"key": key, "candidate": c, "loss": float(x)} for c, x in zip(ranked, losses, strict=True)]
        summary = {**settings, "mode": "file", "image": str(cfg.image), "inputs": [str(f) for f in files],
                   "verdicts": verdicts, "flagged": sum(v["flagged"] for v in verdicts)}
        _write(out_dir, pd.DataFrame(rows, columns=["key", "candidate", "loss"]), summary)
        return summary

    samples, images = _split_images(cfg)
    cands = plain(cfg.get("candidates")) or sorted({getattr(s.metadata, field) for s in samples} - {None})
    frame = cons.split_losses(module, samples, field, cands, images=images, **kw)
    units = _units(cfg, [str(s.fname) for s in samples])
    r = cons.rates(frame, int(cfg.flag_rank), units, n_boot=int(cfg.n_boot), seed=int(cfg.seed))

    def interval(iv) -> dict[str, float]:
        return {"rate": iv.estimate, "lo": iv.lo, "hi": iv.hi}

    summary = {**settings, "mode": "split", "image": str(cfg.image), "split": str(cfg.split),
               "domain": str(cfg.domain), "candidates": list(cands), "n_slices": r.n_slices,
               "n_wrong_headers": r.n_wrong, "n_patients": r.n_units,
               "false_alarm": interval(r.false_alarm), "detection": interval(r.detection),
               "confusion_lowest_loss": r.confusion}
    csv = _write(out_dir, frame, summary)
    print(f"consistency of {field} on {r.n_slices} {cfg.domain} slices of {cfg.split} ({r.n_units} patients, "
          f"image {cfg.image}): false alarms {r.false_alarm.estimate:.1%} [{r.false_alarm.lo:.1%}, "
          f"{r.false_alarm.hi:.1%}] of true headers; detection {r.detection.estimate:.1%} "
          f"[{r.detection.lo:.1%}, {r.detection.hi:.1%}] of {r.n_wrong} wrong headers -> {csv}")
    return summary


def _write(out_dir: Path, frame: pd.DataFrame, summary: dict[str, Any]) -> Path:
    """``consistency.csv`` (the frame) and ``consistency.json`` (the summary), atomically."""
    from metamri.utils.io import atomic_output, write_json_atomic

    csv = out_dir / "consistency.csv"
    with atomic_output(csv) as tmp:
        frame.to_csv(tmp, index=False)
    write_json_atomic(out_dir / "consistency.json", summary)
    return csv


def _split_images(cfg: DictConfig) -> tuple[list[Any], list[np.ndarray] | None]:
    """The split's chosen samples and, unless ``image=reference``, their undersampled images."""
    from hydra.utils import instantiate

    from metamri.evaluation.builder import build_mask
    from metamri.evaluation.run import select_items
    from metamri.physics.sense import SenseOperator
    from metamri.preprocess.mvue import from_two_channel, p99_normalize, to_two_channel

    datamodule = instantiate(cfg.data)
    if cfg.get("prepare_data", True):
        datamodule.prepare_data()
    undersampled = cfg.image != "reference"
    dataset = datamodule.eval_dataset(str(cfg.split), str(cfg.domain), load_maps=undersampled)
    chosen = select_items(dataset, plain(cfg.get("items_per_volume")))
    if cfg.get("max_slices") is not None:
        chosen = chosen[: int(cfg.max_slices)]
    if not chosen:
        raise ConfigError("split", cfg.split, f"holds no {cfg.domain} slices", hint="check the data and domain")
    samples = [dataset[i] for i in chosen]
    if not undersampled:
        return samples, None
    mask_fn = build_mask(cfg.mask)
    images = []
    for s in samples:
        x = torch.from_numpy(from_two_channel(s.image))
        maps = torch.as_tensor(np.asarray(s.maps, dtype=np.complex64))
        mask = torch.from_numpy(np.asarray(mask_fn(tuple(x.shape), seed=str(s.fname)), dtype=bool))
        y = SenseOperator(maps, mask).A(x)[0]  # (C, H, W) complex64, the simulated measurement
        image = _undersampled_image(y.numpy(), maps.numpy(), mask.numpy(), cfg)
        images.append(to_two_channel(p99_normalize(image)[0]))
    return samples, images


def _units(cfg: DictConfig, fnames: list[str]) -> np.ndarray:
    from metamri.report.tables import BootstrapSpec

    return BootstrapSpec(units=tuple(plain(cfg.get("units")) or ())).unit_of(fnames)


@hydra.main(config_path=CONF_DIR, config_name="interpret_consistency", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> None:
    run(cfg)
