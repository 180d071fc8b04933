"""``python -m metamri.phantom``: write the phantom dataset (config: ``conf/phantom.yaml``).

    python -m metamri.phantom out_dir=/data/phantom seed=1 brain.image_size=320 brain.coils=16
    python -m metamri.phantom preset=study          # -> ${paths.data_dir}/phantom_study
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from metamri.utils.cli import hydra_task

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate the dataset a composed ``phantom`` config describes; returns the manifest.

    ``preset`` (``default`` | ``study``) supplies every domain key left ``null``; a
    domain's ``snr: null`` means "use ``noise.snr``"; ``noise.snr: null`` is noiseless.
    ``out_dir: null`` writes to ``paths.data_dir/<the preset's dir_name>``.
    """
    from metamri.phantom.generate import MANIFEST_NAME, generate_dataset
    from metamri.phantom.presets import get_preset
    from metamri.validation import validate_phantom

    validate_phantom(cfg)  # every domain's values, before any file is written

    def section(key: str) -> dict[str, Any]:  # resolve only what is used (not paths.output_dir)
        node = cfg.get(key)
        return {} if node is None else dict(OmegaConf.to_container(node, resolve=True))

    preset = get_preset(cfg.get("preset"))
    domains = {d: {k: v for k, v in section(d).items() if v is not None} for d in ("brain", "cardiac")}
    out_dir = cfg.get("out_dir")
    out_dir = str(Path(str(cfg.paths.data_dir)) / preset.dir_name) if out_dir is None else str(out_dir)
    manifest = generate_dataset(
        out_dir, seed=int(cfg.seed), brain=domains["brain"], cardiac=domains["cardiac"], noise=section("noise"),
        preset=preset.name,
    )
    log.info("wrote %d files and %s under %s", len(manifest["files"]), MANIFEST_NAME, out_dir)
    return manifest


@hydra.main(config_path="../../conf", config_name="phantom", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
