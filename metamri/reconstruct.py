r"""Reconstruct measured k-space files: ``python -m metamri.reconstruct inputs=... method=...``.

``inputs`` is a file, a directory (searched recursively for fastMRI ``*.h5`` and CMRxRecon
``cine_*.mat``; hidden files and ``out_dir`` left out) or a list of them. Per file
(``conf/reconstruct.yaml``; the reconstruction setup is the shared group
``conf/reconstruction/default.yaml``), per slice (cine: per slice and frame), with the
k-space ``y`` (coils, readout, phase):

1. mask ``M``: the file's own ``mask`` if it has one (fastMRI test files, CMRxRecon
   ``AccFactor`` files), else the group's mask function seeded by the file name (every
   slice shares it); the k-space is multiplied by ``M`` (a no-op on already undersampled
   data). A k-space without coils or with fewer phase-encode lines than a calibration
   region needs is refused first (:func:`metamri.preprocess.measured.check_kspace_shape`);
2. the measured k-space is prepared as preprocessing prepared the training data, as far
   as measured data allow (:func:`metamri.preprocess.measured.prepare_slice`): readout
   oversampling removed, ESPIRiT maps from the calibration region (ACS) with the
   ``espirit`` parameters, refused with a :class:`~metamri.errors.DataFileError` naming the
   file, slice and ACS width when the ACS is too narrow or the maps fail their check,
   and the k-space divided by ``s`` = p99 of the zero-filled image (the estimate of
   training's p99 of the fully sampled MVUE);
3. reconstruct (``zero_filled``, ``cs``, or ``diffusion`` with the prior, metadata read
   from the file's header), multiply by ``s``, centre-crop to the file's recon size, take
   the magnitude;
4. write ``<out_dir>/<relative path>`` atomically (a temporary file beside it, renamed when
   complete: a killed run leaves no half-written output). The relative path is the input's
   path below the deepest folder holding every input (a directory input: below that
   directory; a single file: its name), so ``P001/cine_lax.mat`` and ``P002/cine_lax.mat``
   get two outputs. The file (HDF5, whatever its suffix) holds ``reconstruction`` float32
   (items, H, W) in the file's units (the fastMRI submission layout; cine files also
   ``slice_index`` and ``frame`` per item) and attrs stating how it was made: ``method``,
   ``mask`` (type and parameters, or ``file``), ``acceleration`` (effective: W / sampled
   columns, mean over slices), ``acs_lines`` (the narrowest slice's), ``coil_maps``
   (``calibration``), ``espirit`` (JSON), ``scaling``, ``cs`` / ``prior`` /
   ``guidance_scale`` where they apply, and ``settings`` (JSON: all of it plus the source
   file's size and modification time).

A batch goes on past a bad file: each failure is one line on stderr naming the file and the
reason, the run ends with a summary (done, skipped, failed and the failed files) and, from
the command line, exit status 1 when any file failed (2: a bad setting, before any file).
An output whose ``settings`` match the run's is up to date and skipped (``overwrite=true``
recomputes it), so rerunning an interrupted batch does only the rest.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metamri.errors import ConfigError, MetamriError
from metamri.preprocess.measured import acs_width, crop_readout
from metamri.utils.cli import debug_enabled, hydra_task, one_line, print_error
from metamri.utils.hydra import register_resolvers
from metamri.utils.io import file_fingerprint

log = logging.getLogger(__name__)
register_resolvers()

METHODS = ("zero_filled", "cs", "diffusion")
#: What a directory input is searched for (recursively).
RAW_PATTERNS = ("*.h5", "cine_*.mat")
__all__ = ["METHODS", "ReconstructSummary", "acs_width", "crop_readout", "input_files", "plan_outputs",
           "reconstruct", "reconstruct_all", "reconstruct_file"]


def _items(inputs: Any) -> list[Any]:
    if OmegaConf.is_config(inputs):
        inputs = OmegaConf.to_container(inputs, resolve=True)
    return [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs or [])


def _roots_and_files(inputs: Any, exclude: str | os.PathLike[str] | None = None) -> list[tuple[Path, list[Path]]]:
    """Per input item: (the folder its outputs are named relative to, its files)."""
    excluded = None if exclude is None else Path(exclude).expanduser().absolute()
    out: list[tuple[Path, list[Path]]] = []
    for item in _items(inputs):
        p = Path(str(item)).expanduser().absolute()
        if p.is_dir():
            found = set()
            for pattern in RAW_PATTERNS:
                for f in p.rglob(pattern):
                    rel = f.relative_to(p).parts
                    if any(part.startswith(".") for part in rel) or not f.is_file():
                        continue
                    if excluded is not None and f.is_relative_to(excluded):
                        continue
                    found.add(f)
            out.append((p, sorted(found)))
        elif p.is_file():
            out.append((p.parent, [p]))
        else:
            raise ConfigError("inputs", str(item), "no such file or directory")
    return out


def input_files(inputs: Any, exclude: str | os.PathLike[str] | None = None) -> list[Path]:
    """``inputs`` (a path, a directory, or a list of them) as a sorted list of k-space files.

    A directory is searched recursively for :data:`RAW_PATTERNS`, leaving out hidden files
    and folders and anything under ``exclude`` (the output directory).

    Raises:
        ConfigError: An input that does not exist, or no file at all.
    """
    files = sorted({f for _, found in _roots_and_files(inputs, exclude) for f in found})
    if not files:
        raise ConfigError("inputs", _items(inputs) if len(_items(inputs)) != 1 else str(_items(inputs)[0]),
                          f"holds no k-space files ({', '.join(RAW_PATTERNS)})")
    return files


def plan_outputs(inputs: Any, exclude: str | os.PathLike[str] | None = None) -> list[tuple[Path, PurePosixPath]]:
    """``(input file, output path relative to out_dir)`` of every input, in sorted order.

    The relative path is the file's path below the deepest folder holding every input item
    (a directory item counts as itself, a file as its folder): one directory gives paths
    below it, one file its name, ``[P001/cine_lax.mat, P002/cine_lax.mat]`` keeps ``P001/``
    and ``P002/``. Two inputs never share an output.
    """
    groups = _roots_and_files(inputs, exclude)
    files = sorted({f for _, found in groups for f in found})
    if not files:
        input_files(inputs, exclude)  # raises the ConfigError naming the inputs
    base = Path(os.path.commonpath([str(root) for root, _ in groups]))
    return [(f, PurePosixPath(f.relative_to(base).as_posix())) for f in files]


def run_settings(path: Path, reconstructor, espirit, method: str, attrs: dict | None = None) -> str:
    """The JSON an output records as ``settings``: what made it, and the source file's size and time."""
    return json.dumps({"method": method, "setup": reconstructor.describe(), "espirit": espirit.to_dict(),
                       "attrs": attrs or {}, "source": file_fingerprint(path)}, sort_keys=True, default=str)


def is_up_to_date(out: Path, settings: str) -> bool:
    """Whether ``out`` is a complete output made with exactly ``settings``."""
    if not out.is_file():
        return False
    try:
        with h5py.File(out, "r") as f:
            stored = f.attrs.get("settings")
            stored = stored.decode() if isinstance(stored, bytes) else stored
            return "reconstruction" in f and stored == settings
    except OSError:  # not HDF5 or truncated: made by something else, or before atomic writes
        return False


def reconstruct_file(path: Path, out_dir: Path, reconstructor, espirit, method: str,
                     attrs: dict | None = None, *, out: Path | None = None) -> Path:
    """Reconstruct every item of one file and write ``out`` (default ``<out_dir>/<fname>``).

    See the module docstring for what is done and written.

    Args:
        path: A fastMRI-format brain file or a CMRxRecon cine file.
        out_dir: Output directory (used when ``out`` is not given).
        reconstructor: A :class:`~metamri.evaluation.reconstructor.Reconstructor` running ``method``.
        espirit: :class:`~metamri.preprocess.espirit.EspiritParams` of the calibration maps.
        method: ``"zero_filled"``, ``"cs"`` or ``"diffusion"``.
        attrs: Extra attributes written to the output file.
        out: The output path.

    Raises:
        DataFileError: The file cannot be read or reconstructed (named, with the reason);
            nothing is written then.
    """
    from metamri.data.readers import open_volume
    from metamri.evaluation.reconstructor import SliceKey
    from metamri.physics.masks import describe_mask
    from metamri.preprocess.measured import check_kspace_shape, prepare_slice
    from metamri.preprocess.mvue import crop_or_pad
    from metamri.utils.io import atomic_output

    out = out if out is not None else out_dir / path.name
    settings = run_settings(path, reconstructor, espirit, method, attrs)
    volume = open_volume(path)
    slices, accels, acs, index, frames, from_file = [], [], [], [], [], False
    for item in volume:
        where = f"slice {item.slice_index}" + ("" if item.frame is None else f", frame {item.frame}")
        kspace = np.asarray(item.kspace, dtype=np.complex64)
        check_kspace_shape(kspace, path, where)
        if item.mask is not None:
            mask, from_file = np.asarray(item.mask) != 0, True
        else:
            mask = np.asarray(reconstructor.mask(kspace.shape[-2:], seed=path.name), dtype=bool)
        m = prepare_slice(kspace, mask, item.recon_size, espirit, path=path, where=where)
        key = SliceKey(path.name, int(item.slice_index), None if item.frame is None else int(item.frame))
        images, _, _ = reconstructor.reconstruct_kspace(
            key, item.metadata, torch.from_numpy(m.y), torch.from_numpy(m.maps), m.mask)
        image = crop_or_pad(images[method] * m.scale, m.recon_size)
        slices.append(np.abs(image).astype(np.float32))
        accels.append(m.effective_acceleration)
        acs.append(m.check.acs)
        index.append(int(item.slice_index))
        frames.append(-1 if item.frame is None else int(item.frame))
    if not slices:
        from metamri.errors import DataFileError

        raise DataFileError(path, "the file holds no slices to reconstruct")
    info = reconstructor.describe()
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=np.stack(slices))
        if any(t >= 0 for t in frames):
            f.create_dataset("slice_index", data=np.asarray(index, np.int32))
            f.create_dataset("frame", data=np.asarray(frames, np.int32))
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
        f.attrs["settings"] = settings
    return out


@dataclass
class ReconstructSummary:
    """What a :func:`reconstruct_all` run did.

    Attributes:
        done: ``(input, output)`` of every file reconstructed.
        skipped: ``(input, output)`` of every up-to-date output left as it was.
        failed: ``(input, one-line reason)`` of every file that failed.
        errors: The exceptions of ``failed``, in the same order.
        seconds: Wall-clock time of the run.
    """

    done: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[tuple[Path, Path]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No file failed."""
        return not self.failed

    @property
    def outputs(self) -> list[Path]:
        """The output of every input that has one (done or up to date), in input order."""
        return [out for _, out in sorted(self.done + self.skipped)]

    def format(self) -> str:
        """``reconstruct: N done, N skipped (up to date), N failed in T s``, then each failed file."""
        lines = [f"reconstruct: {len(self.done)} done, {len(self.skipped)} skipped (up to date), "
                 f"{len(self.failed)} failed in {self.seconds:.1f} s"]
        lines += [f"  FAILED {why}" for _, why in self.failed]  # the reason names the file
        return "\n".join(lines)


def _reason(src: Path, err: BaseException) -> str:
    """One line naming ``src`` and what went wrong."""
    text = one_line(err) or type(err).__name__
    if not isinstance(err, MetamriError):
        text = f"{type(err).__name__}: {text}"
    return text if str(src) in text or src.name in text else f"{src}: {text}"


def reconstruct_all(cfg: DictConfig) -> ReconstructSummary:
    """Reconstruct every input file, going on past a bad one; see the module docstring.

    Raises:
        ConfigError: A bad setting (checked before any file: :func:`metamri.validation.validate_reconstruct`),
            or outputs that would replace their inputs.
        MetamriError: The prior cannot be loaded.
    """
    from metamri.evaluate import load_prior_of
    from metamri.evaluation.builder import build_reconstructor
    from metamri.preprocess.espirit import EspiritParams
    from metamri.validation import validate_reconstruct

    validate_reconstruct(cfg)
    start = time.perf_counter()
    method = str(cfg.method)
    out_dir = Path(str(cfg.out_dir)).expanduser()
    plan = [(src, rel, out_dir / rel) for src, rel in plan_outputs(cfg.inputs, exclude=out_dir)]
    clash = next((src for src, _, out in plan if out.absolute() == src.absolute()), None)
    if clash is not None:
        raise ConfigError("out_dir", str(cfg.out_dir), f"the output of {clash} would replace the file itself",
                          hint="choose an out_dir outside the inputs")
    module = None
    extra = {}
    if method == "diffusion":
        module = load_prior_of(cfg).to(cfg.get("device", "cpu"))
        extra["prior"] = str(cfg.get("prior") or cfg.get("ckpt_path"))
    reconstructor = build_reconstructor(cfg, module, methods=(method,))
    espirit = EspiritParams.from_config(cfg.get("espirit"))
    overwrite = bool(cfg.get("overwrite", False))
    summary = ReconstructSummary()
    for path, rel, out in plan:
        if not overwrite and is_up_to_date(out, run_settings(path, reconstructor, espirit, method, extra)):
            print(f"{rel}: up to date -> {out} (skipped)", flush=True)
            summary.skipped.append((path, out))
            continue
        try:
            reconstruct_file(path, out_dir, reconstructor, espirit, method, extra, out=out)
        except Exception as err:  # noqa: BLE001 - every failure is reported per file, the batch goes on
            log.debug("reconstructing %s failed", path, exc_info=True)
            if debug_enabled():
                traceback.print_exc()
            why = _reason(path, err)
            print_error(why)
            summary.failed.append((path, why))
            summary.errors.append(err)
            continue
        with h5py.File(out, "r") as f:
            mask, accel, acs = f.attrs["mask"], float(f.attrs["acceleration"]), int(f.attrs["acs_lines"])
        log.info("%s -> %s", path, out)
        print(f"{rel}: {method} -> {out} (mask {mask}, effective acceleration {accel:.3f}x, "
              f"coil maps from {acs} calibration lines)", flush=True)
        summary.done.append((path, out))
    summary.seconds = time.perf_counter() - start
    return summary


def reconstruct(cfg: DictConfig) -> list[Path]:
    """Reconstruct every input file; return the outputs (written or up to date).

    Every file is tried; if any failed, the first failure's error is raised afterwards
    (the command line prints the summary instead: :func:`main`).
    """
    summary = reconstruct_all(cfg)
    if summary.errors:
        raise summary.errors[0]
    return summary.outputs


@hydra.main(config_path="../conf", config_name="reconstruct", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> None:
    summary = reconstruct_all(cfg)
    print(summary.format(), flush=True)
    if not summary.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
