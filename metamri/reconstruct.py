r"""Reconstruct fastMRI-format brain files: ``python -m metamri.reconstruct inputs=... method=...``.

Per file (``conf/reconstruct.yaml``), per slice, with the k-space ``y`` (coils, readout, phase):

1. mask ``M``: the file's own ``mask`` if it has one (fastMRI test files), else the
   configured mask function seeded by the file name (every slice shares it); the
   k-space is multiplied by ``M`` (a no-op on already undersampled data);
2. the 2x readout oversampling is removed exactly: coil images ``F^-1 y`` are
   centre-cropped along the readout to the file's recon height and transformed back
   (the mask acts on phase-encode columns only, so the cropped data keep it; the mask
   is applied again to remove rounding residue);
3. ESPIRiT maps (:mod:`metamri.preprocess.espirit`) from the undersampled data's fully
   sampled centre: the calibration size is capped at the width of the contiguous
   sampled block around DC (the ACS), and the kernel at half of it (so the calibration
   matrix keeps enough rows on narrow ACS blocks);
4. normalisation, MVUE-style: ``s`` = 99th percentile of ``|A^H y|`` (the zero-filled
   SENSE image, centre-cropped to the recon size). Training images were divided by
   the p99 of the fully sampled MVUE, which is not available here; the zero-filled
   image keeps the low frequencies that dominate the magnitude histogram, so ``s``
   is the closest estimate the measured data allow (typically a few % lower). The
   reconstruction runs on ``y / s`` and is multiplied back by ``s``;
5. reconstruct (``zero_filled``, ``cs``, or ``diffusion`` with the checkpoint's
   module, metadata read from the file's ISMRMRD header), centre-crop to the
   recon size, take the magnitude;
6. write ``<out_dir>/<fname>`` atomically with ``reconstruction`` float32
   (slices, H, W) in the file's units, the fastMRI submission layout (attrs
   ``method``, ``acceleration``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metamri.errors import ConfigError, DataFileError
from metamri.utils.hydra import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()

METHODS = ("zero_filled", "cs", "diffusion")


def acs_width(mask: np.ndarray) -> int:
    """Width of the contiguous block of sampled columns around DC (index ``W // 2``)."""
    mask = np.asarray(mask, dtype=bool)
    c = mask.size // 2
    if not mask[c]:
        return 0
    lo = c
    while lo > 0 and mask[lo - 1]:
        lo -= 1
    hi = c
    while hi < mask.size - 1 and mask[hi + 1]:
        hi += 1
    return hi - lo + 1


def crop_readout(kspace: np.ndarray, height: int) -> np.ndarray:
    """k-space (C, H0, W) -> (C, height, W): coil images centre-cropped along the readout.

    Exact for phase-encode masks up to rounding: unsampled columns come back as ~1e-16
    (the caller multiplies by the mask again).
    """
    from metamri.physics.fft import center_crop, fft2c_np, ifft2c_np

    if kspace.shape[-2] == height:
        return kspace
    images = ifft2c_np(kspace)
    return fft2c_np(np.ascontiguousarray(center_crop(images, (height, kspace.shape[-1])))).astype(
        np.complex64)


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


def reconstruct_file(path: Path, out_dir: Path, reconstructor, mask_func, espirit: dict,
                     method: str) -> Path:
    """Reconstruct every slice of one file and write ``<out_dir>/<fname>``; see the module docstring."""
    from metamri.data.readers import open_volume
    from metamri.evaluation.reconstructor import SliceKey
    from metamri.preprocess.espirit import make_estimator
    from metamri.preprocess.mvue import crop_or_pad
    from metamri.recon.baselines import zero_filled
    from metamri.utils.io import atomic_output

    volume = open_volume(path)
    slices, accel = [], None
    for item in volume:
        kspace = np.asarray(item.kspace, dtype=np.complex64)
        h, w = item.recon_size
        mask = (np.asarray(item.mask) != 0 if item.mask is not None
                else np.asarray(mask_func(kspace.shape[-2:], seed=path.name), dtype=bool))
        if mask.shape != (kspace.shape[-1],):
            raise DataFileError(path, f"mask has shape {mask.shape}, k-space width is {kspace.shape[-1]}",
                                field="mask")
        accel = mask.size / max(int(mask.sum()), 1)
        y = crop_readout(kspace * mask[None, None, :], min(h, kspace.shape[-2])) * mask[None, None, :]
        calib = min(int(espirit.get("calib_size", 24)), acs_width(mask))
        kernel = min(int(espirit.get("kernel_size", 6)), max(2, calib // 2))
        if calib < 2:
            raise DataFileError(path, f"slice {item.slice_index}: the mask samples no centre block "
                                f"(ACS width {acs_width(mask)}); ESPIRiT needs one", field="mask")
        estimator = make_estimator(espirit.get("backend", "auto"), calib_size=calib, kernel_size=kernel,
                                   threshold=float(espirit.get("threshold", 0.02)),
                                   crop=float(espirit.get("crop", 0.95)))
        maps = estimator(y)
        x_zf = zero_filled(y, maps, mask)
        scale = float(np.percentile(np.abs(crop_or_pad(x_zf, (h, w))), 99)) or 1.0
        key = SliceKey(path.name, int(item.slice_index), None)
        images, _, _ = reconstructor.reconstruct_kspace(
            key, item.metadata, torch.from_numpy(y / scale), torch.from_numpy(maps), mask)
        image = crop_or_pad(images[method] * scale, (h, w))
        slices.append(np.abs(image).astype(np.float32))
    out = out_dir / path.name
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=np.stack(slices))
        f.attrs["method"] = method
        f.attrs["acceleration"] = float(accel)
    return out


def reconstruct(cfg: DictConfig) -> list[Path]:
    """Reconstruct every input file; return the written paths."""
    from metamri.evaluate import load_module
    from metamri.evaluation.reconstructor import Reconstructor

    method = str(cfg.method)
    if method not in METHODS:
        raise ConfigError("method", method, f"must be one of {list(METHODS)}")
    files = input_files(cfg.inputs)
    module = sampler = None
    if method == "diffusion":
        module = load_module(cfg.get("ckpt_path")).to(cfg.get("device", "cpu"))
        extra = {} if cfg.get("guidance_scale") is None else {"guidance_scale": cfg.guidance_scale}
        sampler = instantiate(cfg.sampler, alphas_cumprod=module.noise_scheduler.alphas_cumprod, **extra)
    mask_func = instantiate(cfg.mask)
    reconstructor = Reconstructor(
        mask_func, (method,) if method != "zero_filled" else ("zero_filled",), sampler=sampler,
        module=module, ensemble=cfg.ensemble, drop_fields=list(cfg.get("drop_fields") or []),
        keep_fields=None if cfg.get("keep_fields") is None else list(cfg.keep_fields),
        base_seed=cfg.base_seed, cs=OmegaConf.to_container(cfg.cs, resolve=True),
        use_ema=cfg.get("use_ema", True),
    )
    out_dir = Path(str(cfg.out_dir)).expanduser()
    espirit = OmegaConf.to_container(cfg.espirit, resolve=True)
    written = []
    for path in files:
        out = reconstruct_file(path, out_dir, reconstructor, mask_func, espirit, method)
        log.info("%s -> %s", path, out)
        print(f"{path.name}: {method} -> {out}")
        written.append(out)
    return written


@hydra.main(config_path="../conf", config_name="reconstruct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    reconstruct(cfg)


if __name__ == "__main__":
    main()
