"""``python -m metamri.phantom``: write the phantom dataset (config: ``conf/phantom.yaml``).

    python -m metamri.phantom out_dir=/data/phantom seed=1 brain.image_size=320 brain.coils=16
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate the dataset a composed ``phantom`` config describes; returns the manifest.

    A domain's ``snr: null`` means "use ``noise.snr``"; ``noise.snr: null`` is noiseless.
    """
    from metamri.phantom.generate import MANIFEST_NAME, generate_dataset

    def section(key: str) -> dict[str, Any]:  # resolve only what is used (not paths.output_dir)
        node = cfg.get(key)
        return {} if node is None else dict(OmegaConf.to_container(node, resolve=True))

    domains = {
        d: {k: v for k, v in section(d).items() if not (k == "snr" and v is None)}
        for d in ("brain", "cardiac")
    }
    out_dir = str(cfg.out_dir)
    manifest = generate_dataset(
        out_dir, seed=int(cfg.seed), brain=domains["brain"], cardiac=domains["cardiac"], noise=section("noise")
    )
    log.info("wrote %d files and %s under %s", len(manifest["files"]), MANIFEST_NAME, out_dir)
    return manifest


@hydra.main(config_path="../../conf", config_name="phantom", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
