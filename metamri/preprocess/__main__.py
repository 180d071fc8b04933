"""``python -m metamri.preprocess``: bring the preprocessed cache up to date.

Examples::

    python -m metamri.preprocess input_dir=/data/fastmri/multicoil_train cache_dir=/data/cache
    python -m metamri.preprocess 'input_dir=[data/phantom/brain,data/phantom/cardiac]' \\
        espirit.backend=sigpy image_size=64 workers=2

Keys (``conf/preprocess.yaml``): ``input_dir`` (a directory, a file or a list),
``cache_dir``, ``espirit.{backend, calib_size, kernel_size, threshold, crop}`` (the
``espirit`` group, ``conf/espirit/default.yaml``: an
:class:`~metamri.preprocess.espirit.EspiritParams`),
``image_size``, ``allow_crop``, ``cardiac_frames``, ``cine_maps``, ``workers``, ``overwrite``,
``progress``.
Prints a summary (processed / skipped / failed, with each failed file's error; each
failure also as one line ``error: <file>: <reason>`` on stderr) and exits with status 1 if
any volume failed; a bad setting is one line on stderr and exit
status 2 before any file is read (:mod:`metamri.utils.cli`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from metamri.preprocess.espirit import EspiritParams
from metamri.preprocess.pipeline import preprocess_directory
from metamri.utils.cli import exit_status, hydra_task, print_error
from metamri.validation import validate_preprocess


def run(cfg: DictConfig) -> int:
    """Run the preprocessing described by ``cfg``; returns the exit status (0 = all done, 1 = some
    volume failed, 2 = a bad setting: one line on stderr, nothing done)."""
    return exit_status(lambda: _run(cfg))


def _run(cfg: DictConfig) -> int:
    validate_preprocess(cfg)
    inputs = OmegaConf.to_object(cfg.input_dir) if OmegaConf.is_list(cfg.input_dir) else cfg.input_dir
    frames = cfg.cardiac_frames
    frames = OmegaConf.to_object(frames) if OmegaConf.is_list(frames) else frames
    size = cfg.image_size
    size = OmegaConf.to_object(size) if OmegaConf.is_list(size) else size
    summary = preprocess_directory(
        inputs,
        cfg.cache_dir,
        espirit=EspiritParams.from_config(cfg.espirit),
        image_size=size,
        cardiac_frames=frames,
        cine_maps=cfg.get("cine_maps", "time_average"),
        allow_crop=cfg.allow_crop,
        workers=cfg.workers,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
        raise_on_failure=False,
    )
    for src, why in summary.failed:  # one line each on stderr as well, naming the file
        print_error(why.split(": ", 1)[-1] if src in why else f"{src}: {why}")
    print(summary.format())
    return 0 if summary.ok else 1


@hydra.main(config_path="../../conf", config_name="preprocess", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> None:
    status = _run(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
