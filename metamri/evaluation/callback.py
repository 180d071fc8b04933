"""Reconstruct a few fixed validation slices during training, and the test split at test end.

``ReconstructionCallback`` runs the :class:`~metamri.evaluation.reconstructor.Reconstructor`
with the module being trained (EMA weights), sharded over the DDP processes and gathered
(:mod:`~metamri.evaluation.sharding`), so its numbers do not depend on the number of devices:

* after validation, every ``every_n_val`` validation epochs (sanity checks skipped), on the
  first ``val_slices`` items of the val split (the same slices every time);
* after the test epoch, on the whole test split (or its first ``max_test_slices``).

Every rank logs ``<stage>/psnr``, ``<stage>/ssim``, ``<stage>/nmse`` of the primary method
(``diffusion`` when run, else the last listed) and ``<stage>/<metric>_<method>`` of every
method through ``pl_module.log`` (the same value on every rank, since the rows are gathered).
Rank 0 writes ``<run_dir>/reconstruction/<stage>_metrics.csv`` and ``<stage>_summary.md``
(validation files get the step: ``val_step000200_metrics.csv``), and, when a
:class:`~lightning.pytorch.loggers.WandbLogger` is attached, logs image panels
(ground truth | zero-filled | reconstruction | error | std, see :mod:`.panels`) and the
per-slice table.

The reconstruction setup is the shared ``reconstruction`` config group (as
``metamri.evaluate``): ``conf/callbacks/reconstruction.yaml`` composes
``conf/reconstruction/default.yaml`` under its ``reconstruction`` key, and the callback
builds the :class:`Reconstructor` from it with the module being trained
(:func:`~metamri.evaluation.builder.build_reconstructor`: the mask instantiated, the
sampler finished with the module's noise schedule and the group's ``guidance_scale``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from metamri.evaluation.builder import build_reconstructor
from metamri.evaluation.panels import make_panel, panel_caption, to_uint8
from metamri.evaluation.reconstructor import METHODS, Reconstructor
from metamri.evaluation.run import evaluate_split, method_means, setup_lines, write_outputs

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> dict[str, Any]:
    """A Hydra node (resolved) or mapping as a plain dict; ``None`` as ``{}``."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return dict(OmegaConf.to_container(cfg, resolve=True))
    return dict(cfg or {})


class ReconstructionCallback(Callback):
    """Posterior-sampling reconstructions and their metrics during ``fit`` and ``test``.

    Args:
        reconstruction: The ``reconstruction`` group (``conf/reconstruction/default.yaml``;
            a Hydra node or a mapping): ``mask``, ``sampler``, ``methods``,
            ``guidance_scale``, ``ensemble``, ``drop_fields`` / ``keep_fields``,
            ``base_seed``, ``cs``, ``coil_maps``, ``espirit``; ``mask`` and ``sampler`` may
            be configs or objects (a sampler object is used as it is). Without a
            ``sampler`` the diffusion method is skipped.
        domain: Domain of the eval split (``"brain"``).
        every_n_val: Reconstruct after every n-th validation epoch; 0 never.
        val_slices: Number of fixed validation slices (the first items of the val split).
        max_test_slices: Cap on test slices, ``None`` for the whole split.
        n_panels: Panels logged to W&B per stage (from rank 0's slices).
        output_subdir: Folder under the run directory for the CSV/markdown files.
    """

    def __init__(
        self,
        reconstruction: Mapping[str, Any] | None = None,
        domain: str = "brain",
        every_n_val: int = 1,
        val_slices: int = 2,
        max_test_slices: int | None = None,
        n_panels: int = 2,
        output_subdir: str = "reconstruction",
    ) -> None:
        super().__init__()
        self.setup_cfg = _plain(reconstruction)
        methods = tuple(self.setup_cfg.get("methods") or ("zero_filled", "diffusion"))
        if "diffusion" in methods and self.setup_cfg.get("sampler") is None:
            methods = tuple(m for m in methods if m != "diffusion")
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            from metamri.errors import ConfigError

            raise ConfigError("callbacks.reconstruction.reconstruction.methods",
                              list(self.setup_cfg.get("methods") or []),
                              f"choose a non-empty subset of {list(METHODS)}")
        self.methods = methods
        self.setup_cfg["methods"] = list(methods)
        self.domain = domain
        self.every_n_val, self.val_slices = int(every_n_val), int(val_slices)
        self.max_test_slices = None if max_test_slices is None else int(max_test_slices)
        self.n_panels, self.output_subdir = int(n_panels), output_subdir
        self._val_epochs = 0
        self.last_table = None  # the merged MetricTable of the latest run (for tests and users)

    # -- pieces --------------------------------------------------------------------------
    def reconstructor(self, pl_module: L.LightningModule) -> Reconstructor:
        """The group's :class:`Reconstructor`, with ``pl_module`` as the prior."""
        return build_reconstructor(self.setup_cfg, pl_module if "diffusion" in self.methods else None)

    def primary_method(self) -> str:
        return "diffusion" if "diffusion" in self.methods else self.methods[-1]

    def _dataset(self, trainer: L.Trainer, split: str):
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "eval_dataset"):
            log.warning("ReconstructionCallback: the datamodule has no eval_dataset(); skipped")
            return None
        return dm.eval_dataset(split, self.domain, load_maps=True)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, split: str,
            max_slices: int | None) -> None:
        dataset = self._dataset(trainer, split)
        if dataset is None or len(dataset) == 0:
            return
        reconstructor = self.reconstructor(pl_module)
        out = evaluate_split(reconstructor, dataset, max_slices, keep_results=self.n_panels)
        self.last_table = out.table
        primary = self.primary_method()
        for metric in ("psnr", "ssim", "nmse"):
            means = method_means(out.table, metric)
            pl_module.log(f"{stage}/{metric}", means[primary], sync_dist=False, rank_zero_only=False)
            for method, value in means.items():
                pl_module.log(f"{stage}/{metric}_{method}", value, sync_dist=False)
        if trainer.is_global_zero:
            tag = stage if stage == "test" else f"{stage}_step{trainer.global_step:06d}"
            run_dir = Path(trainer.default_root_dir)  # the run directory (conf: ${paths.output_dir})
            csv_path, _ = write_outputs(out.table, run_dir / self.output_subdir, tag,
                                        setup_lines(reconstructor, out))
            log.info("%s reconstruction metrics (%d slices) -> %s\n%s", stage, out.n_slices,
                     csv_path, out.table.format_summary())
            self._log_wandb(trainer, stage, out)

    def _log_wandb(self, trainer: L.Trainer, stage: str, out) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        method = self.primary_method()
        panels = [to_uint8(make_panel(r, method)) for r in out.results]
        captions = [panel_caption(r, method) for r in out.results]
        for lg in loggers:
            if panels:
                lg.log_image(key=f"{stage}/reconstructions", images=panels,
                             caption=captions, step=trainer.global_step)
            lg.log_table(key=f"{stage}/per_slice_metrics", dataframe=out.table.to_frame(),
                         step=trainer.global_step)

    # -- hooks ---------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_val <= 0 or self.val_slices <= 0:
            return
        self._val_epochs += 1
        if self._val_epochs % self.every_n_val == 0:
            self.run(trainer, pl_module, "val", "val", self.val_slices)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run(trainer, pl_module, "test", "test", self.max_test_slices)
