r"""Reconstruct fastMRI-format brain files: ``python -m metamri.reconstruct inputs=... method=...``.

Per file (``conf/reconstruct.yaml``; the reconstruction setup is the shared group
``conf/reconstruction/default.yaml``), per slice, with the k-space ``y`` (coils, readout, phase):

1. mask ``M``: the file's own ``mask`` if it has one (fastMRI test files), else the
   group's mask function seeded by the file name (every slice shares it); the k-space
   is multiplied by ``M`` (a no-op on already undersampled data);
2. the measured k-space is prepared as preprocessing prepared the training data, as far
   as measured data allow (:func:`metamri.preprocess.measured.prepare_slice`): readout
   oversampling removed, ESPIRiT maps from the calibration region (ACS) with the
   ``espirit`` parameters, refused with a :class:`~metamri.errors.DataFileError` naming the
   file, slice and ACS width when the ACS is too narrow or the maps fail their check,
   and the k-space divided by ``s`` = p99 of the zero-filled image (the estimate of
   training's p99 of the fully sampled MVUE);
3. reconstruct (``zero_filled``, ``cs``, or ``diffusion`` with the prior, metadata read
   from the file's ISMRMRD header), multiply by ``s``, centre-crop to the file's recon
   size, take the magnitude;
4. write ``<out_dir>/<fname>`` atomically with ``reconstruction`` float32 (slices, H, W)
   in the file's units (the fastMRI submission layout) and attrs stating how it was made:
   ``method``, ``mask`` (type and parameters, or ``file``), ``acceleration`` (effective:
   W / sampled columns, mean over slices), ``acs_lines`` (the narrowest slice's),
   ``coil_maps`` (``calibration``), ``espirit`` (JSON), ``scaling``, and ``cs`` / ``prior``
   / ``guidance_scale`` where they apply.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metamri.errors import ConfigError
from metamri.preprocess.measured import acs_width, crop_readout
from metamri.utils.hydra import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()

METHODS = ("zero_filled", "cs", "diffusion")
__all__ = ["METHODS", "acs_width", "crop_readout", "input_files", "reconstruct", "reconstruct_file"]


def input_files(inputs) -> list[Path]:
    """``inputs`` (a path, a directory, or a list of them) as a sorted list of ``.h5`` files."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    files: list[Path] = []
    for item in items:
        p = Path(str(item)).expanduser()
        if p.is_dir():
            files.extend(sorted(p.glob("*.h5")))
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError("inputs", str(item), "no such file or directory")
    if not files:
        raise ConfigError("inputs", OmegaConf.to_container(inputs) if OmegaConf.is_config(inputs)
                          else inputs, "holds no .h5 files")
    return files


def reconstruct_file(path: Path, out_dir: Path, reconstructor, espirit, method: str,
                     attrs: dict | None = None) -> Path:
    """Reconstruct every slice of one file and write ``<out_dir>/<fname>``; see the module docstring.

    Args:
        path: A fastMRI-format brain file.
        out_dir: Output directory.
        reconstructor: A :class:`~metamri.evaluation.reconstructor.Reconstructor` running ``method``.
        espirit: :class:`~metamri.preprocess.espirit.EspiritParams` of the calibration maps.
        method: ``"zero_filled"``, ``"cs"`` or ``"diffusion"``.
        attrs: Extra attributes written to the output file.
    """
    from metamri.data.readers import open_volume
    from metamri.evaluation.reconstructor import SliceKey
    from metamri.physics.masks import describe_mask
    from metamri.preprocess.measured import prepare_slice
    from metamri.preprocess.mvue import crop_or_pad
    from metamri.utils.io import atomic_output

    volume = open_volume(path)
    slices, accels, acs, from_file = [], [], [], False
    for item in volume:
        kspace = np.asarray(item.kspace, dtype=np.complex64)
        if item.mask is not None:
            mask, from_file = np.asarray(item.mask) != 0, True
        else:
            mask = np.asarray(reconstructor.mask(kspace.shape[-2:], seed=path.name), dtype=bool)
        m = prepare_slice(kspace, mask, item.recon_size, espirit, path=path, where=f"slice {item.slice_index}")
        key = SliceKey(path.name, int(item.slice_index), None)
        images, _, _ = reconstructor.reconstruct_kspace(
            key, item.metadata, torch.from_numpy(m.y), torch.from_numpy(m.maps), m.mask)
        image = crop_or_pad(images[method] * m.scale, m.recon_size)
        slices.append(np.abs(image).astype(np.float32))
        accels.append(m.effective_acceleration)
        acs.append(m.check.acs)
    out = out_dir / path.name
    info = reconstructor.describe()
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=np.stack(slices))
        f.attrs["method"] = method
        f.attrs["mask"] = "file" if from_file else describe_mask(reconstructor.mask)
        f.attrs["acceleration"] = float(np.mean(accels))
        f.attrs["acs_lines"] = int(min(acs))
        f.attrs["coil_maps"] = "calibration"
        f.attrs["espirit"] = json.dumps(espirit.to_dict())
        f.attrs["scaling"] = "p99 of the zero-filled image (metamri.preprocess.measured.measured_scale)"
        if method == "cs":
            f.attrs["cs"] = json.dumps(info.get("cs", {}))
        if method == "diffusion":
            f.attrs["guidance_scale"] = float(info["guidance_scale"])
            f.attrs["ensemble"] = int(info["ensemble"])
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return out


def reconstruct(cfg: DictConfig) -> list[Path]:
    """Reconstruct every input file; return the written paths."""
    from metamri.evaluate import load_prior_of
    from metamri.evaluation.builder import build_reconstructor
    from metamri.preprocess.espirit import EspiritParams

    method = str(cfg.method)
    if method not in METHODS:
        raise ConfigError("method", method, f"must be one of {list(METHODS)}")
    if cfg.get("coil_maps", "calibration") != "calibration":
        raise ConfigError("coil_maps", cfg.coil_maps, "a measured file has only its calibration region",
                          hint="metamri.reconstruct always uses coil_maps=calibration")
    if cfg.get("scaling", "measured") != "measured":
        raise ConfigError("scaling", cfg.scaling, "a measured file has no fully sampled image to take the p99 of",
                          hint="metamri.reconstruct always uses scaling=measured")
    files = input_files(cfg.inputs)
    module = None
    extra = {}
    if method == "diffusion":
        module = load_prior_of(cfg).to(cfg.get("device", "cpu"))
        extra["prior"] = str(cfg.get("prior") or cfg.get("ckpt_path"))
    reconstructor = build_reconstructor(cfg, module, methods=(method,))
    espirit = EspiritParams.from_config(cfg.get("espirit"))
    out_dir = Path(str(cfg.out_dir)).expanduser()
    written = []
    for path in files:
        out = reconstruct_file(path, out_dir, reconstructor, espirit, method, extra)
        with h5py.File(out, "r") as f:
            mask, accel, acs = f.attrs["mask"], float(f.attrs["acceleration"]), int(f.attrs["acs_lines"])
        log.info("%s -> %s", path, out)
        print(f"{path.name}: {method} -> {out} (mask {mask}, effective acceleration {accel:.3f}x, "
              f"coil maps from {acs} calibration lines)")
        written.append(out)
    return written


@hydra.main(config_path="../conf", config_name="reconstruct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    reconstruct(cfg)


if __name__ == "__main__":
    main()
