"""The LightningModule that trains a metadata-conditioned diffusion prior (paper Eq. 1).

One training step, for a batch of images x0 (B, 2, H, W) with metadata::

    t    ~ U{range of each sample's domain}          (TimestepRangeSampler, Sec. 3.6)
    eps  ~ N(0, I)
    x_t  = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (DDPM forward process)
    drop ~ FieldDropout                              (CFG, Sec. 3.4)
    ctx  = encoder(metadata, drop)                   (B, L, D)
    loss = || eps - unet(x_t, t, ctx) ||^2           (Eq. 1, mean over pixels and batch)

Checkpoints rebuild themselves: the constructor takes plain (Hydra-style, with
``_target_``) dict configs of its parts and stores them, plus the resolved
diffusers configs of the UNet and noise schedule (``arch``), as hyperparameters;
``MetaDiffusionModule.load_from_checkpoint(path)`` then builds the UNet from
``arch`` (no pretrained directory needed), re-adds LoRA adapters, rebuilds the
encoder (its fitted ranges and vocabularies live in its state dict) and loads the
weights and the EMA.  Only a frozen text model is read again from its local path.
The checkpoint is read as data first (``torch.load(weights_only=True)``) and its stored
configs may name only metamri's own components (:mod:`metamri.trust`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import IO, Any

import lightning as L
import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn
from torchmetrics import MeanMetric

from metamri.data.batch import ImageBatch
from metamri.encoders.base import MetadataEncoder
from metamri.encoders.text import ProjectionWidthError, TextEncoder, describe_text_model
from metamri.errors import ConfigError, MetamriError
from metamri.metadata import Metadata
from metamri.models.ema import EMA
from metamri.models.scheduler import build_scheduler
from metamri.models.unet import unet_context_dim
from metamri.training.dropout import FieldDropout
from metamri.training.finetune import FullFinetune, parameter_counts, trainable_parameters
from metamri.training.timesteps import TimestepRangeSampler

log = logging.getLogger(__name__)

Config = Mapping[str, Any]


def _plain(cfg: Any) -> Any:
    """A DictConfig / mapping as plain Python containers (``None`` stays ``None``)."""
    if cfg is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {str(k): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def _instantiate(cfg: Config, **kwargs: Any) -> Any:
    """Hydra's ``instantiate``, with metamri's own errors raised as themselves (Hydra wraps
    them in an ``InstantiationException``) so that they reach the user as written."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if "_target_" not in cfg:
        raise ConfigError("_target_", dict(cfg), "component config has no _target_")
    try:
        return instantiate(dict(cfg), **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, MetamriError):
            raise exc.__cause__ from None
        raise


def _unet_description(unet_cfg: Config | None) -> str:
    """How error messages name the UNet: its pretrained directory or its preset."""
    if isinstance(unet_cfg, Mapping):
        if unet_cfg.get("pretrained"):
            return f"the pretrained UNet at {unet_cfg['pretrained']}"
        return f"the UNet (preset {unet_cfg.get('preset', 'tiny')!r})"
    return "the UNet"


def _pretrained_root(unet_cfg: Config | None) -> Path | None:
    """The diffusers directory a UNet config loads from (``None`` when it loads none)."""
    if not isinstance(unet_cfg, Mapping) or not unet_cfg.get("pretrained"):
        return None
    root = Path(str(unet_cfg["pretrained"]))
    return root.parent if not (root / "unet").is_dir() and (root / "config.json").is_file() else root


def check_text_pairing(unet_cfg: Config | None, encoder: nn.Module) -> None:
    """A UNet from a diffusers directory with a ``text_encoder/`` reads that text model's states:
    pairing it with a text model of another kind (``model_type``) or width through an identity
    projection is a :class:`ConfigError` naming both; ``projection="trainable"`` opts in (with a
    warning that names both)."""
    root = _pretrained_root(unet_cfg)
    if root is None or not (root / "text_encoder" / "config.json").is_file():
        return
    cfg = json.loads((root / "text_encoder" / "config.json").read_text())
    kind, width = str(cfg.get("model_type", "")), cfg.get("hidden_size")
    for text in encoder.modules():
        if not isinstance(text, TextEncoder) or (text.model_type == kind and text.hidden_dim == width):
            continue
        trained_on = describe_text_model(root / "text_encoder", kind, int(width or 0))
        if text.projection == "trainable":
            log.warning("%s was trained on the states of %s; it now reads those of %s through a "
                        "trainable Linear (projection=trainable)", _unet_description(unet_cfg),
                        trained_on, text.describe())
            continue
        raise ConfigError(
            "model.text_encoder", text.path,
            f"{_unet_description(unet_cfg)} was trained on the states of its own text model "
            f"{trained_on}, but the encoder's text model is {text.describe()}",
            hint=(f"set model.text_encoder={root} to use the checkpoint's text model, or "
                  f"model.text_projection=trainable ({text.config_key}.projection=trainable) "
                  "to learn a projection from the other one"),
        )


def _seed_from(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class MetaDiffusionModule(L.LightningModule):
    """UNet + metadata encoder trained with the epsilon loss, CFG dropout and domain noise ranges.

    Every component is either a Hydra-style dict config (``_target_`` + values; stored
    in the checkpoint) or a ready object (not stored: pass it again to
    ``load_from_checkpoint``; the UNet and schedule are the exception, ``arch`` keeps them).

    Args:
        unet: Config of :func:`~metamri.models.unet.build_unet` (or a ``UNet2DConditionModel``).
        encoder: Config of a :class:`~metamri.encoders.MetadataEncoder`; its
            ``context_dim`` is set to the UNet's context width.  A text model is checked
            against a pretrained UNet's own ``text_encoder/`` (:func:`check_text_pairing`),
            and ``encoder.attach(unet)`` runs once both exist (the gated concatenation
            installs its attention processors there, also on a checkpoint rebuild).
        scheduler: Config of :func:`~metamri.models.scheduler.build_scheduler` (or a
            ``DDPMScheduler``); ``None`` = linear DDPM, T = 1000.
        finetune: Config of :class:`FullFinetune` / :class:`LoraFinetune`; ``None`` = full.
        timestep_sampler: Config of :class:`TimestepRangeSampler`; ``None`` = every domain on [0, 1].
        dropout: Config of :class:`FieldDropout`; ``None`` = no dropout.
        optimizer: Partial optimizer config (``_partial_: true``), called with the
            trainable parameters; ``None`` = AdamW, lr 5e-5 (the paper's).
        ema_decay: EMA decay of the trainable parameters, ``None`` for no EMA. The
            EMA weights are used for validation and by :meth:`ema_weights`.
        seed: Seed of the training noise / timesteps / drop masks (mixed with the
            rank and the step at which training starts) and of the validation noise.
            Checkpoints carry the training generator of every rank, so a run resumed with
            the same number of processes continues its random stream exactly.
        val_timesteps: Fixed timesteps at which ``val/loss`` (and ``val/loss_<domain>`` for
            the domains named in the noise ranges) is measured.
        val_uncond: Also log ``val/loss_uncond`` (every field dropped): the gap to
            ``val/loss`` is what the metadata buys.
        arch: Resolved diffusers configs ``{"unet": ..., "scheduler": ...}``; filled in
            automatically and stored so that a checkpoint rebuilds without the pretrained
            directory. When given, ``unet`` and ``scheduler`` are not read.
    """

    def __init__(
        self,
        unet: Config | nn.Module | None = None,
        encoder: Config | MetadataEncoder | None = None,
        scheduler: Config | DDPMScheduler | None = None,
        finetune: Config | Any | None = None,
        timestep_sampler: Config | TimestepRangeSampler | None = None,
        dropout: Config | FieldDropout | None = None,
        optimizer: Config | Callable[..., torch.optim.Optimizer] | None = None,
        ema_decay: float | None = 0.999,
        seed: int = 0,
        val_timesteps: Sequence[int] = (100, 300, 500, 700, 900),
        val_uncond: bool = True,
        arch: Config | None = None,
    ) -> None:
        super().__init__()
        is_cfg = {name: v is None or isinstance(v, Mapping) or _is_omegaconf(v)
                  for name, v in (("unet", unet), ("encoder", encoder), ("scheduler", scheduler),
                                  ("finetune", finetune), ("timestep_sampler", timestep_sampler),
                                  ("dropout", dropout), ("optimizer", optimizer))}
        unet_cfg, encoder_cfg, sched_cfg = _plain_if(unet), _plain_if(encoder), _plain_if(scheduler)
        finetune_cfg, timesteps_cfg = _plain_if(finetune), _plain_if(timestep_sampler)
        dropout_cfg, optim_cfg, arch = _plain_if(dropout), _plain_if(optimizer), _plain(arch)

        # -- UNet and noise schedule -------------------------------------------------
        if arch is not None:
            self.unet = UNet2DConditionModel.from_config(arch["unet"])
            self.noise_scheduler = DDPMScheduler.from_config(arch["scheduler"])
        else:
            if unet is None:
                raise ConfigError("model.unet", None, "give a UNet config (or arch)")
            self.unet = _instantiate(unet_cfg) if is_cfg["unet"] else unet
            self.noise_scheduler = (
                build_scheduler() if scheduler is None
                else _instantiate(sched_cfg) if is_cfg["scheduler"] else scheduler
            )
            arch = {"unet": json.loads(self.unet.to_json_string()),
                    "scheduler": json.loads(self.noise_scheduler.to_json_string())}
        self.unet.train()  # diffusers' from_pretrained returns eval mode; Lightning keeps modes
        if self.noise_scheduler.config.prediction_type != "epsilon":
            raise ConfigError("model.scheduler.prediction_type",
                              self.noise_scheduler.config.prediction_type, "epsilon expected")
        self.num_train_timesteps = int(self.noise_scheduler.config.num_train_timesteps)

        # -- which parameters train ---------------------------------------------------
        self.finetune = (FullFinetune() if finetune is None
                         else _instantiate(finetune_cfg) if is_cfg["finetune"] else finetune)
        self.finetune.apply(self.unet)

        # -- metadata encoder ---------------------------------------------------------
        ctx_dim = unet_context_dim(self.unet)
        if encoder is None:
            raise ConfigError("encoder", None, "give an encoder config")
        if is_cfg["encoder"]:
            given = encoder_cfg.get("context_dim")
            if given is not None and int(given) != ctx_dim:
                raise ConfigError("encoder.context_dim", given,
                                  f"the UNet expects context tokens of width {ctx_dim}")
            try:
                self.encoder = _instantiate(encoder_cfg, context_dim=ctx_dim)
            except ProjectionWidthError as exc:
                raise exc.naming(_unet_description(unet_cfg)) from None
        else:
            self.encoder = encoder
        if self.encoder.context_dim != ctx_dim:
            raise ConfigError("encoder.context_dim", self.encoder.context_dim,
                              f"the UNet expects context tokens of width {ctx_dim}")
        check_text_pairing(unet_cfg if is_cfg["unet"] else None, self.encoder)
        # Where encoder and UNet meet: the concatenated fusion installs its gated attention
        # here, also when a checkpoint rebuilds the module.
        self.encoder.attach(self.unet)

        # -- randomness of training ---------------------------------------------------
        self.timestep_sampler = (
            TimestepRangeSampler({}, self.num_train_timesteps, default=(0.0, 1.0))
            if timestep_sampler is None
            else _instantiate(timesteps_cfg) if is_cfg["timestep_sampler"] else timestep_sampler
        )
        if self.timestep_sampler.num_train_timesteps != self.num_train_timesteps:
            raise ConfigError("timesteps.num_train_timesteps", self.timestep_sampler.num_train_timesteps,
                              f"the noise schedule has T = {self.num_train_timesteps}")
        # Per-domain validation losses as metrics: synced correctly across DDP ranks even
        # when a rank's validation batches hold no sample of some domain.
        self.val_domain_loss = nn.ModuleDict(
            {d: MeanMetric() for d in sorted(self.timestep_sampler.bounds)}
        )
        self.dropout = (FieldDropout(p=0.0) if dropout is None
                        else _instantiate(dropout_cfg) if is_cfg["dropout"] else dropout)
        if optimizer is None:
            self._optimizer_factory = functools.partial(torch.optim.AdamW, lr=5e-5)
        elif is_cfg["optimizer"]:
            self._optimizer_factory = _instantiate({**optim_cfg, "_partial_": True})
        else:
            self._optimizer_factory = optimizer

        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.seed = int(seed)
        self.val_timesteps = [int(t) for t in val_timesteps]
        for t in self.val_timesteps:
            if not 0 <= t < self.num_train_timesteps:
                raise ConfigError("module.val_timesteps", t, f"must lie in [0, {self.num_train_timesteps})")
        self.val_uncond = bool(val_uncond) and bool(self.encoder.fields)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._pending_gen: list[torch.Tensor] | None = None  # generator states of a checkpoint
        self._ema: EMA | None = None
        self._pending_ema: dict[str, Any] | None = None
        self._ema_stack: contextlib.ExitStack | None = None
        self._ema_step = -1

        self.save_hyperparameters({
            "unet": unet_cfg if is_cfg["unet"] else None,
            "encoder": encoder_cfg if is_cfg["encoder"] else None,
            "scheduler": sched_cfg if is_cfg["scheduler"] else None,
            "finetune": finetune_cfg if is_cfg["finetune"] else None,
            "timestep_sampler": timesteps_cfg if is_cfg["timestep_sampler"] else None,
            "dropout": dropout_cfg if is_cfg["dropout"] else None,
            "optimizer": optim_cfg if is_cfg["optimizer"] else None,
            "ema_decay": self.ema_decay,
            "seed": self.seed,
            "val_timesteps": self.val_timesteps,
            "val_uncond": bool(val_uncond),
            "arch": arch,
        })

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | PathLike[str] | IO[bytes],
        map_location: Any = None,
        hparams_file: str | PathLike[str] | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> MetaDiffusionModule:
        """Lightning's ``load_from_checkpoint``, reading the file as data only.

        The checkpoint is read first with ``torch.load(weights_only=True)`` and its
        stored configs are checked (:func:`metamri.trust.read_checkpoint`): pickled code,
        or a ``_target_`` that is not one of metamri's components, is a
        :class:`~metamri.errors.CheckpointError` before anything is built.  Then
        Lightning loads it, again with ``weights_only=True``.  ``hparams_file`` (YAML) is
        checked the same way; ``kwargs`` are the caller's own code.

        Args:
            checkpoint_path: A ``.ckpt`` of ``metamri.train`` (or an open binary file).
            map_location, hparams_file, strict, kwargs: As Lightning's.
            weights_only: Must stay ``True``: metamri never unpickles code from a checkpoint.
        """
        from metamri.trust import check_hparams_file, read_checkpoint

        if weights_only is not True:
            raise ConfigError("weights_only", weights_only, "metamri loads a checkpoint as data only",
                              hint="leave weights_only=True; see docs/security.md")
        if isinstance(checkpoint_path, (str, PathLike)):
            read_checkpoint(checkpoint_path)
        else:  # a stream is read once, checked, and handed on as a copy
            data = checkpoint_path.read()
            read_checkpoint(io.BytesIO(data))
            checkpoint_path = io.BytesIO(data)
        if hparams_file is not None:
            check_hparams_file(hparams_file)
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location,
                                            hparams_file=hparams_file, strict=strict,
                                            weights_only=True, **kwargs)

    # ------------------------------------------------------------------ denoiser API
    def context(self, metadata: Sequence[Metadata], drop: torch.Tensor | None = None) -> torch.Tensor:
        """Context tokens (B, L, D) for B records; ``drop`` bool (B, F) over ``encoder.fields``."""
        return self.encoder(metadata, drop)

    def eps_from_context(self, x_t: torch.Tensor, t: torch.Tensor | int, ctx: torch.Tensor) -> torch.Tensor:
        """Predicted noise (B, 2, H, W) for x_t (B, 2, H, W), timesteps (B,) or scalar, ctx (B, L, D)."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(x_t, t, encoder_hidden_states=ctx).sample

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, metadata: Sequence[Metadata],
            drop: torch.Tensor | None = None) -> torch.Tensor:
        """``eps_theta(x_t, t, c)``: the denoiser the posterior sampler calls.

        The sampler forms classifier-free-guidance batches itself (conditional and
        all-dropped halves, ``encoder.drop_all(B)``).
        """
        return self.eps_from_context(x_t, t, self.context(metadata, drop))

    forward = eps

    # ------------------------------------------------------------------ EMA
    @property
    def ema(self) -> EMA | None:
        """The EMA of the trainable parameters (created on first use), or ``None``."""
        if self.ema_decay is None:
            return None
        if self._ema is None:
            self._ema = EMA(((n, p) for n, p in self.named_parameters() if p.requires_grad),
                            decay=self.ema_decay)
            if self._pending_ema is not None:
                self._ema.load_state_dict(self._pending_ema)
                self._pending_ema = None
        return self._ema

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Run the block with the EMA weights in place (a no-op without EMA or before training)."""
        if self.ema_decay is None or (self._ema is None and self._pending_ema is None):
            yield
            return
        with self.ema.average_parameters():  # type: ignore[union-attr]
            yield

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._ema is not None:
            checkpoint["ema"] = self._ema.state_dict()
        elif self._pending_ema is not None:
            checkpoint["ema"] = self._pending_ema
        checkpoint["train_generator"] = self._generator_states()

    def _generator_states(self) -> list[torch.Tensor]:
        """The training generator's state on every rank (index = rank). Every rank calls
        ``on_save_checkpoint`` (``Trainer.save_checkpoint`` is collective), so under DDP the
        states are gathered here."""
        state = self._gen.get_state()
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return [state]
        gathered = self.all_gather(state.to(self.device))  # (world_size, n)
        return [row.cpu().clone() for row in gathered]  # each its own storage, not a view

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the weights load: keep the EMA until the parameters exist with their shapes.
        self._ema = None
        self._pending_ema = checkpoint.get("ema")
        self._pending_gen = checkpoint.get("train_generator")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        # Fitting may re-size embedding tables, so it runs here, before the optimizer is
        # built and the model is wrapped for DDP (``on_fit_start`` comes after both).
        if stage != "fit" or not self.encoder.needs_fit:
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "train_metadata"):
            records = list(dm.train_metadata())
            self.encoder.fit(records)
            log.info("fitted %s on %d training records", type(self.encoder).__name__, len(records))
        else:
            log.warning("encoder not fitted (the datamodule has no train_metadata()); "
                        "numeric fields use the schema's default ranges")

    def on_train_start(self) -> None:
        from metamri.training.checkpointing import repair_epoch_end_restart

        # a resume from an end-of-epoch checkpoint continues with the uninterrupted run's epochs
        repair_epoch_end_restart(self.trainer)
        states, self._pending_gen = self._pending_gen, None
        if states is not None and len(states) == self.trainer.world_size:
            # resumed: the stream goes on (a contiguous copy: set_state reads the raw bytes)
            self._gen.set_state(states[self.global_rank].detach().cpu().clone().contiguous())
        else:
            if states is not None:
                log.info("the checkpoint's training generators are from %d processes, this run has %d: "
                         "reseeding from the step", len(states), self.trainer.world_size)
            self._gen.manual_seed(_seed_from(self.seed, self.global_rank, self.global_step))
        counts = self.parameter_counts()
        log.info("parameters: %s", counts)
        if self.logger is not None:
            self.logger.log_metrics({f"params/{k}": float(v) for k, v in counts.items()},
                                    step=self.global_step)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable / frozen / total element counts (UNet + encoder; a frozen text model excluded)."""
        out = parameter_counts(self)
        out["encoder"] = sum(p.numel() for p in self.encoder.parameters())
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self._optimizer_factory(trainable_parameters(self))

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: ImageBatch, batch_idx: int) -> torch.Tensor:
        x0 = batch.image
        b = x0.shape[0]
        t = self.timestep_sampler.sample(batch.domain, self._gen).to(self.device)
        eps = torch.randn(x0.shape, generator=self._gen, dtype=x0.dtype).to(self.device)
        x_t = self.noise_scheduler.add_noise(x0, eps, t)
        drop = self.dropout.sample(b, self.encoder.fields, self._gen)
        pred = self.eps_from_context(x_t, t, self.context(batch.metadata, drop.to(self.device)))
        per_sample = (pred.float() - eps.float()).pow(2).mean(dim=(1, 2, 3))
        loss = per_sample.mean()

        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for j, name in enumerate(self.encoder.fields):
            self.log(f"train/drop_{name}", drop[:, j].float().mean(), on_step=False, on_epoch=True,
                     batch_size=b)
        t_cpu = t.detach().cpu()
        for domain in sorted(set(batch.domain)):
            sel = torch.tensor([d == domain for d in batch.domain])
            n = int(sel.sum())
            self.log(f"train/loss_{domain}", per_sample.detach()[sel.to(per_sample.device)].mean(),
                     on_step=False, on_epoch=True, batch_size=n)
            td = t_cpu[sel].float()
            self.log(f"train/t_mean_{domain}", td.mean(), on_step=False, on_epoch=True, batch_size=n)
            self.log(f"train/t_min_{domain}", td.min(), on_step=False, on_epoch=True,
                     reduce_fx="min", batch_size=n)
            self.log(f"train/t_max_{domain}", td.max(), on_step=False, on_epoch=True,
                     reduce_fx="max", batch_size=n)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Once per optimizer step (also under accumulation), right after it: before the
        # callbacks' on_train_batch_end, so that a checkpoint saved there (every N steps, on a
        # preemption) holds the EMA of the weights it holds, and a resume misses no update.
        if self.ema_decay is not None and self.global_step != self._ema_step:
            self.ema.update()  # type: ignore[union-attr]
            self._ema_step = self.global_step

    def on_validation_epoch_start(self) -> None:
        self._ema_stack = contextlib.ExitStack()
        self._ema_stack.enter_context(self.ema_weights())

    def _end_eval_epoch(self, stage: str) -> None:
        """Log ``<stage>/loss_<domain>`` (synced over ranks) and leave the EMA weights."""
        for domain, metric in self.val_domain_loss.items():
            # compute() on every rank (it syncs); NaN when no rank saw the domain.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                value = metric.compute()
            if torch.isfinite(value):
                self.log(f"{stage}/loss_{domain}", value)
            metric.reset()
        if self._ema_stack is not None:
            self._ema_stack.close()
            self._ema_stack = None

    def validation_noise(self, batch: ImageBatch) -> torch.Tensor:
        """Fixed noise (B, 2, H, W): each sample's from a generator seeded by its file, slice
        and frame (and ``seed``), so it does not depend on batching or the number of devices."""
        rows = []
        for fname, s, f in zip(batch.fname, batch.slice_index.tolist(), batch.frame.tolist(), strict=True):
            g = torch.Generator().manual_seed(
                _seed_from(self.seed, zlib.crc32(f"{fname}|{s}|{f}".encode()))
            )
            rows.append(torch.randn(tuple(batch.image.shape[1:]), generator=g))
        return torch.stack(rows).to(device=batch.image.device, dtype=batch.image.dtype)

    def _loss_at_fixed_t(self, x0: torch.Tensor, eps: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,) averaged over ``val_timesteps``."""
        losses = []
        for t in self.val_timesteps:
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            x_t = self.noise_scheduler.add_noise(x0, eps, tt)
            pred = self.eps_from_context(x_t, tt, ctx)
            losses.append((pred.float() - eps.float()).pow(2).mean(dim=(1, 2, 3)))
        return torch.stack(losses).mean(0)

    def _denoising_loss(self, batch: ImageBatch, stage: str) -> torch.Tensor:
        """Loss at the fixed ``val_timesteps`` with fixed per-slice noise, logged as ``<stage>/loss``."""
        x0, b = batch.image, len(batch)
        eps = self.validation_noise(batch)
        per_sample = self._loss_at_fixed_t(x0, eps, self.context(batch.metadata))
        loss = per_sample.mean()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=b)
        for domain in sorted(set(batch.domain) & set(self.val_domain_loss)):
            sel = torch.tensor([d == domain for d in batch.domain], device=per_sample.device)
            self.val_domain_loss[domain].update(per_sample[sel])
        if self.val_uncond:
            uncond = self._loss_at_fixed_t(
                x0, eps, self.context(batch.metadata, self.encoder.drop_all(b))
            )
            self.log(f"{stage}/loss_uncond", uncond.mean(), sync_dist=True, batch_size=b)
        return loss

    def validation_step(self, batch: ImageBatch, batch_idx: int) -> torch.Tensor:
        return self._denoising_loss(batch, "val")

    # Testing: the same fixed-noise loss on the test split (EMA weights); the reconstruction
    # metrics of the test split come from ReconstructionCallback.on_test_epoch_end.
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: ImageBatch, batch_idx: int) -> torch.Tensor:
        return self._denoising_loss(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval_epoch("test")

    def on_validation_epoch_end(self) -> None:
        self._end_eval_epoch("val")

def _is_omegaconf(v: Any) -> bool:
    try:
        from omegaconf import DictConfig
    except ImportError:  # pragma: no cover
        return False
    return isinstance(v, DictConfig)


def _plain_if(v: Any) -> Any:
    return _plain(v) if (v is None or isinstance(v, Mapping) or _is_omegaconf(v)) else None
