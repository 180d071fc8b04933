"""``python -m metamri.report manifest=... out_dir=...``: thin Hydra entry point.

See ``conf/report.yaml`` and :func:`metamri.report.make_report`. Exit status: 0 when every
run was read, 1 when some were not (everything else is still written; tables.md names
them), 2 on a bad manifest or setting (one line on stderr naming the key).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from metamri.utils.cli import exit_status, hydra_task


def run(cfg: DictConfig) -> int:
    """Write the report ``cfg`` describes; return the exit status."""
    return exit_status(lambda: _run(cfg))


def _run(cfg: DictConfig) -> int:
    from metamri.report import make_report

    report = make_report(cfg.manifest, cfg.out_dir, source=cfg.source,
                         wandb_entity=cfg.wandb.entity, wandb_project=cfg.wandb.project)
    print(f"{len(report.tables)} tables -> {report.files[0]}")
    for path in report.files[1:]:
        print(f"  {path}")
    if not report.ok:
        print(f"{len(report.not_read)} input(s) not read (see 'Runs not read' in "
              f"{report.files[0]}):", file=sys.stderr)
        for line in report.not_read:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


@hydra.main(config_path="../../conf", config_name="report", version_base="1.3")
@hydra_task()
def main(cfg: DictConfig) -> None:
    status = _run(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
