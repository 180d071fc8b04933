r"""Reconstruct one preprocessed slice with every configured method.

For an :class:`~metamri.data.sample.ImageSample` (image float32 (2, H, W) in
normalised units, i.e. the MVUE divided by the slice's p99 magnitude, and maps
complex64 (C, H, W)) the :class:`Reconstructor` simulates the measurement and
reconstructs it::

    x_gt = to_complex(image)                      complex (H, W), normalised units
    M    = mask_func((H, W), seed=fname)          bool (W,), the same for every slice of a volume
    y    = A x_gt = M F (S x_gt)                  complex (C, H, W), noiseless

and then, per method (names are the ``method`` column of the metric table):

* ``"zero_filled"``: ``A^H y`` (:func:`metamri.recon.baselines.zero_filled`);
* ``"cs"``: L1-wavelet compressed sensing (:func:`metamri.recon.baselines.compressed_sensing`
  with the ``cs`` keyword arguments; ``lamda`` is in normalised units);
* ``"diffusion"``: the posterior sampler (e.g. :class:`~metamri.sampling.dds.DecomposedDiffusionSampler`;
  its ``guidance_scale`` is the CFG scale) with the module's EMA weights, K = ``ensemble``
  samples averaged in the complex domain (:func:`metamri.sampling.ensemble.ensemble_sample`).

Metadata ablations (paper Sec. 4.5) act on the record before it reaches the encoder:
``drop_fields`` sets those fields to missing (``Metadata.without``), ``keep_fields``
keeps only those (``Metadata.only``). Missing, dropped and ablated all mean the same
thing to an encoder: the field's learned "empty" token. The unconditional context of
classifier-free guidance drops every field (``encoder.drop_all``).

A metadata corruption (``corruption``, :class:`~metamri.metadata.corruption.MetadataCorruption`:
missing fields, scaled numbers, wrong categories, another volume's header; drawn per volume
from the slice's ``fname``) comes *before* the ablation (:meth:`Reconstructor.ablate`): the
file's header is bad, then the experiment chooses which fields the encoder reads, so a
dropped field stays dropped whatever the corruption (a shuffle after the ablation would
put a dropped field back).

Coil maps (``coil_maps``): ``"fully_sampled"`` (default) uses the sample's maps, ESPIRiT
from the fully sampled k-space as the paper's preprocessing computed them (they also
simulate the measurement); ``"calibration"`` estimates maps from the simulated
measurement's calibration region instead (:func:`metamri.preprocess.measured.calibration_maps`,
with the ``espirit`` parameters, refusing untrustworthy maps), what a user with truly
undersampled data has, and reconstructs every method with them. The ground truth
stays the cached image either way.

Scaling (``scaling``): training divided every image by the p99 magnitude of its fully
sampled MVUE. ``"reference"`` (default) feeds ``y`` in the cache's normalised units, that
true divisor (the paper's retrospective protocol: the network sees what it was trained on).
``"measured"`` scales the measurement as ``metamri.reconstruct`` must, by the estimate the
measured data allow (:func:`metamri.preprocess.measured.measured_scale`: the p99 of the
zero-filled image), reconstructs ``y / s`` and multiplies the result by ``s``; with
``coil_maps="calibration"`` evaluation then follows reconstruct's protocol on simulated
data. The estimate is within about 1% of the true divisor at 320 px, and about 23% low at
the phantom's 64 px (``docs/cs_baseline.md``, "Scaling").

Seeds: the K samples of slice ``(fname, slice, frame)`` use
``ensemble_seeds(f"{fname}:{slice}:{frame}", K, base_seed)``, so a slice's
reconstruction does not depend on which process reconstructs it or in what order.

Batches (:meth:`Reconstructor.reconstruct_batch`): B slices run through the sampler as
one batch of B*K (each with its own mask, maps, context, seeds and CG solve), the
baselines slice by slice. A slice's reconstruction is then the same as alone up to
floating-point rounding (the network's batched kernels sum in another order); with
B = 1 it is bitwise the same whatever the sharding.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from metamri.data.sample import ImageSample
from metamri.errors import ConfigError
from metamri.metadata import Metadata, MetadataCorruption
from metamri.metrics.table import MetricRow, MetricTable
from metamri.models.performance import Performance
from metamri.physics.masks import describe_mask, effective_acceleration
from metamri.physics.sense import SenseOperator
from metamri.preprocess.espirit import EspiritParams
from metamri.recon.baselines import compressed_sensing, zero_filled
from metamri.sampling.complex_image import to_complex
from metamri.sampling.ensemble import ensemble_sample, ensemble_seeds

#: Methods a :class:`Reconstructor` knows, in the order they are run and reported.
METHODS = ("zero_filled", "cs", "diffusion")
#: Where the coil maps come from (see the module docstring).
COIL_MAPS = ("fully_sampled", "calibration")
#: How the measurement is scaled before reconstruction (see the module docstring).
SCALINGS = ("reference", "measured")


class SliceKey(NamedTuple):
    """Identifies one slice: file name, slice index, cine frame (``None`` for static data)."""

    fname: str
    slice: int
    frame: int | None

    @property
    def slice_id(self) -> str:
        """``"fname:slice:frame"``: the name the ensemble seeds are derived from."""
        return f"{self.fname}:{self.slice}:{-1 if self.frame is None else self.frame}"


def slice_key(sample: ImageSample) -> SliceKey:
    """The :class:`SliceKey` of a sample (frame -1 -> ``None``)."""
    frame = int(sample.frame)
    return SliceKey(str(sample.fname), int(sample.slice_index), None if frame < 0 else frame)


@dataclass
class SliceResult:
    """Reconstructions of one slice.

    Attributes:
        key: The slice.
        images: complex64 (H, W) NumPy images in normalised units, keyed by
            ``"ground_truth"``, ``"zero_filled"`` and each method run.
        std: float32 (H, W) magnitude std over the diffusion ensemble (zeros for K = 1),
            ``None`` without the diffusion method.
        mask: bool (W,) the sampling mask used.
        timings: seconds: ``"<method>"`` wall time per method, and ``"diffusion/<part>"``
            from the sampler (``unet``, ``data_consistency``, ...).
        scale: the slice's p99 divisor (``image * scale`` is in the file's units).
        map_check: With ``coil_maps="calibration"``, the calibration maps'
            :class:`~metamri.preprocess.measured.MapCheck`; else ``None``.
    """

    key: SliceKey
    images: dict[str, np.ndarray]
    std: np.ndarray | None
    mask: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    map_check: Any = None

    @property
    def methods(self) -> list[str]:
        """The reconstruction methods in ``images`` (everything but the ground truth)."""
        return [m for m in self.images if m != "ground_truth"]

    @property
    def effective_acceleration(self) -> float:
        """``W / sampled columns`` of the slice's mask."""
        return effective_acceleration(self.mask)


class Reconstructor:
    """Simulate the undersampled measurement of a slice and reconstruct it.

    Args:
        mask: A mask function (:mod:`metamri.physics.masks`), called as
            ``mask((H, W), seed=fname)``.
        methods: Any of :data:`METHODS`; ``"zero_filled"`` is always computed (it is
            the reference panel) but only scored when listed.
        sampler: The posterior sampler (needed for ``"diffusion"``).
        module: A :class:`~metamri.training.module.MetaDiffusionModule` (needed for
            ``"diffusion"``): ``context``, ``eps_from_context``, ``encoder``, ``ema_weights``.
        ensemble: K samples per slice, averaged (complex mean).
        drop_fields: Fields set to missing before encoding (drop-one-field ablation).
        keep_fields: If given, only these fields are kept (keep-one-field ablation).
        corruption: A :class:`~metamri.metadata.corruption.MetadataCorruption` applied to each
            record before the ablation (``None``: none). With ``shuffle`` it needs the split's
            volumes (:func:`metamri.evaluation.run.evaluate_split` gives them).
        base_seed: Mixed into every ensemble seed.
        cs: Keyword arguments of :func:`~metamri.recon.baselines.compressed_sensing`
            (``lamda``, ``n_iter``, ``backend``, ``wavelet``).
        use_ema: Sample with the module's EMA weights (default True).
        performance: How the UNet runs (:class:`~metamri.models.performance.Performance`:
            autocast precision, channels-last); ``None``: float32 as is.
        coil_maps: ``"fully_sampled"`` or ``"calibration"`` (see the module docstring).
        espirit: ESPIRiT parameters for ``coil_maps="calibration"``.
        scaling: ``"reference"`` or ``"measured"`` (see the module docstring).

    Build one from the ``reconstruction`` config group with :meth:`from_config`.
    """

    def __init__(
        self,
        mask,
        methods: Sequence[str] = METHODS,
        sampler=None,
        module=None,
        ensemble: int = 1,
        drop_fields: Sequence[str] = (),
        keep_fields: Sequence[str] | None = None,
        base_seed: int = 0,
        cs: Mapping[str, Any] | None = None,
        use_ema: bool = True,
        coil_maps: str = "fully_sampled",
        espirit: EspiritParams | None = None,
        scaling: str = "reference",
        corruption: MetadataCorruption | None = None,
        performance: Performance | None = None,
    ) -> None:
        if coil_maps not in COIL_MAPS:
            raise ConfigError("coil_maps", coil_maps, f"choose one of {list(COIL_MAPS)}")
        if scaling not in SCALINGS:
            raise ConfigError("scaling", scaling, f"choose one of {list(SCALINGS)}")
        self.coil_maps, self.scaling = coil_maps, scaling
        self.espirit = espirit or EspiritParams()
        self.mask = mask
        self.methods = tuple(str(m) for m in methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError("methods", list(self.methods), f"choose a non-empty subset of {list(METHODS)}")
        if "diffusion" in self.methods and (sampler is None or module is None):
            raise ConfigError("methods", list(self.methods),
                              "the diffusion method needs a sampler and a module (ckpt_path)")
        if int(ensemble) < 1:
            raise ConfigError("ensemble", ensemble, "must be an integer >= 1")
        self.sampler, self.module = sampler, module
        self.ensemble = int(ensemble)
        self.drop_fields = [str(f) for f in (drop_fields or ())]
        self.keep_fields = None if keep_fields is None else [str(f) for f in keep_fields]
        # validate the names now (Metadata.without/only raise on unknown fields)
        Metadata().only(self.keep_fields or ()).without(self.drop_fields)
        self.corruption = corruption if corruption is not None else MetadataCorruption()
        self.performance = performance if performance is not None else Performance()
        self.base_seed = int(base_seed)
        self.cs = dict(cs or {})
        self.use_ema = bool(use_ema)

    @classmethod
    def from_config(cls, cfg: Any, module: Any = None, *, methods: Sequence[str] | None = None) -> Reconstructor:
        """The reconstructor of a ``reconstruction`` config group (see
        :func:`metamri.evaluation.builder.build_reconstructor`)."""
        from metamri.evaluation.builder import build_reconstructor

        return build_reconstructor(cfg, module, methods=methods)

    def describe(self) -> dict[str, Any]:
        """What results record of this setup: mask, coil maps, methods and their settings."""
        out: dict[str, Any] = {"mask": describe_mask(self.mask), "coil_maps": self.coil_maps,
                               "scaling": self.scaling, "methods": list(self.methods)}
        if self.coil_maps == "calibration":
            out["espirit"] = self.espirit.to_dict()
        if "cs" in self.methods:
            out["cs"] = dict(self.cs)
        if "diffusion" in self.methods:
            out.update(sampler=type(self.sampler).__name__,
                       guidance_scale=getattr(self.sampler, "guidance_scale", None),
                       num_steps=getattr(self.sampler, "num_steps", None), ensemble=self.ensemble)
            if self.drop_fields:
                out["drop_fields"] = list(self.drop_fields)
            if self.keep_fields is not None:
                out["keep_fields"] = list(self.keep_fields)
            if self.corruption.active:
                out["corrupt"] = self.corruption.to_dict()
            if self.performance.precision != "fp32":  # fp32 adds nothing (older results match)
                out["precision"] = self.performance.precision
        return out

    # -- pieces ------------------------------------------------------------------------------
    def ablate(self, meta: Metadata, fname: str | None = None) -> Metadata:
        """The record the encoder sees: the corruption of volume ``fname`` (when one is on),
        then ``keep_fields`` kept and ``drop_fields`` dropped.

        Raises:
            ValueError: A corruption is on and no ``fname`` is given (its draws are per volume).
        """
        if self.corruption.active:
            if fname is None:
                raise ValueError("the metadata corruption is drawn per volume: pass the slice's fname")
            meta = self.corruption(meta, fname)
        if self.keep_fields is not None:
            meta = meta.only(self.keep_fields)
        return meta.without(self.drop_fields) if self.drop_fields else meta

    def measure(self, sample: ImageSample) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
        """``(x_gt (H, W), maps (C, H, W), mask (W,), y (C, H, W))`` of a sample, complex64 tensors."""
        if sample.maps is None:
            raise ValueError(f"{sample.fname} slice {sample.slice_index}: no coil maps "
                             "(load the dataset with load_maps=True)")
        image = torch.as_tensor(np.asarray(sample.image, dtype=np.float32))
        x_gt = to_complex(image[None])[0]
        maps = torch.as_tensor(np.asarray(sample.maps, dtype=np.complex64))
        h, w = x_gt.shape
        mask = np.asarray(self.mask((h, w), seed=str(sample.fname)), dtype=bool)
        y = SenseOperator(maps, torch.from_numpy(mask)).A(x_gt)[0]
        return x_gt, maps, mask, y

    @torch.no_grad()
    def diffusion(self, keys: Sequence[SliceKey], metas: Sequence[Metadata], y: torch.Tensor,
                  maps: torch.Tensor, mask: np.ndarray):
        """Ensemble posterior samples of B slices -> :class:`~metamri.sampling.ensemble.EnsembleResult`.

        Args:
            keys, metas: B slices and their metadata (as read: corrupted and ablated here).
            y: complex64 (B, C, H, W) undersampled k-space; maps: complex64 (B, C, H, W).
            mask: bool (B, W), one line mask per slice.
        """
        module = self.module
        device = module.device
        was_training = module.training
        module.eval()
        try:
            ema = module.ema_weights() if self.use_ema else contextlib.nullcontext()
            with ema:
                cond = module.context([self.ablate(m, k.fname) for k, m in zip(keys, metas, strict=True)])
                uncond = module.context(list(metas), module.encoder.drop_all(len(metas)))
                seeds = [s for k in keys for s in ensemble_seeds(k.slice_id, self.ensemble, self.base_seed)]
                line_masks = torch.from_numpy(np.asarray(mask, dtype=bool)).reshape(len(keys), 1, -1)
                return ensemble_sample(
                    self.sampler, self.performance.wrap(module.eps_from_context), y.to(device), maps.to(device),
                    line_masks.to(device), cond, uncond, self.ensemble, seeds,
                )
        finally:
            module.train(was_training)

    # -- slices ------------------------------------------------------------------------------
    def reconstruct_kspace(
        self, key: SliceKey, meta: Metadata, y: torch.Tensor, maps: torch.Tensor, mask: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, float]]:
        """Reconstruct the measured k-space of one slice with every method.

        Args:
            key: The slice (its name seeds the ensemble).
            meta: The slice's metadata (corrupted and ablated here for the conditional context).
            y: complex64 (C, H, W) undersampled k-space, normalised units.
            maps: complex64 (C, H, W) sensitivity maps.
            mask: bool (W,) sampling mask.

        Returns:
            ``(images, std, timings)``: complex64 (H, W) NumPy images keyed by
            ``"zero_filled"`` and each method; the ensemble's magnitude std (H, W)
            or ``None``; wall times in seconds.
        """
        return self.reconstruct_kspace_batch([key], [meta], y[None], maps[None], np.asarray(mask)[None])[0]

    def reconstruct_kspace_batch(
        self, keys: Sequence[SliceKey], metas: Sequence[Metadata], y: torch.Tensor, maps: torch.Tensor,
        mask: np.ndarray,
    ) -> list[tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, float]]]:
        """:meth:`reconstruct_kspace` of B slices, the diffusion method as one sampler batch.

        ``y``, ``maps``: complex64 (B, C, H, W); ``mask``: bool (B, W). Returns one
        ``(images, std, timings)`` per slice; a slice's ``"diffusion"`` time is the batch's
        divided by B (``"diffusion/batch"`` says B).
        """
        b = len(keys)
        out: list[tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, float]]] = []
        for i in range(b):
            images: dict[str, np.ndarray] = {}
            timings: dict[str, float] = {}
            start = time.perf_counter()
            images["zero_filled"] = zero_filled(y[i], maps[i], mask[i]).numpy().astype(np.complex64)
            timings["zero_filled"] = time.perf_counter() - start
            if "cs" in self.methods:
                start = time.perf_counter()
                images["cs"] = compressed_sensing(y[i].numpy(), maps[i].numpy(), mask[i],
                                                  **self.cs).astype(np.complex64)
                timings["cs"] = time.perf_counter() - start
            out.append((images, None, timings))
        if "diffusion" in self.methods:
            start = time.perf_counter()
            result = self.diffusion(keys, metas, y, maps, mask)
            per_slice = (time.perf_counter() - start) / b
            mean = result.mean.detach().cpu().numpy().astype(np.complex64)
            std = result.std.detach().cpu().numpy().astype(np.float32)
            for i, (images, _, timings) in enumerate(out):
                images["diffusion"] = mean[i]
                timings["diffusion"] = per_slice
                timings["diffusion/batch"] = float(b)
                timings.update({f"diffusion/{k}": float(v) / b for k, v in result.timings.items()})
                out[i] = (images, std[i], timings)
        return out

    def __call__(self, sample: ImageSample) -> SliceResult:
        """Simulate the measurement of one slice and reconstruct it (see the module docstring).

        Raises:
            DataFileError: ``coil_maps="calibration"`` and the calibration maps of this
                slice cannot be trusted (the message names the file, slice and ACS width).
        """
        return self.reconstruct_batch([sample])[0]

    def reconstruct_batch(self, samples: Sequence[ImageSample]) -> list[SliceResult]:
        """:meth:`__call__` of B slices, the diffusion method run as one batch (module docstring)."""
        keys, measured, scales = [], [], []
        for sample in samples:
            key = slice_key(sample)
            x_gt, maps, mask, y = self.measure(sample)
            check = None
            if self.coil_maps == "calibration":
                from metamri.preprocess.measured import calibration_maps

                where = f"slice {key.slice}" + ("" if key.frame is None else f", frame {key.frame}")
                cal, check = calibration_maps(y.numpy(), mask, self.espirit, path=key.fname, where=where)
                maps = torch.from_numpy(cal)
            s = 1.0
            if self.scaling == "measured":
                from metamri.preprocess.measured import measured_scale

                s = measured_scale(y.numpy(), maps.numpy(), mask, tuple(x_gt.shape))
            keys.append(key)
            measured.append((x_gt, maps, mask, y / s, check))
            scales.append(s)
        if not keys:
            return []
        shapes = {tuple(m[3].shape) for m in measured}
        if len(shapes) > 1:
            raise ValueError(f"a batch of slices must share one k-space shape (C, H, W); got {sorted(shapes)} "
                             f"for {[k.slice_id for k in keys]}: use batch_size=1 for mixed sizes")
        recons = self.reconstruct_kspace_batch(
            keys, [sample.metadata for sample in samples], torch.stack([m[3] for m in measured]),
            torch.stack([m[1] for m in measured]), np.stack([m[2] for m in measured]))
        results = []
        for sample, key, (x_gt, _, mask, _, check), s, (images, std, timings) in zip(
                samples, keys, measured, scales, recons, strict=True):
            if s != 1.0:
                images = {k: (v * s).astype(np.complex64) for k, v in images.items()}
                std = None if std is None else (std * s).astype(np.float32)
            results.append(SliceResult(key, {"ground_truth": x_gt.numpy(), **images}, std, mask, timings,
                                       float(sample.scale), check))
        return results

    def score(self, result: SliceResult, table: MetricTable, lpips_metric=None) -> list[MetricRow]:
        """Add one row per scored method of ``result`` to ``table`` (magnitudes, normalised units)."""
        gt = result.images["ground_truth"]
        return [
            table.add_images(gt, result.images[m], fname=result.key.fname, slice=result.key.slice,
                             frame=result.key.frame, method=m, lpips_metric=lpips_metric)
            for m in self.methods
        ]

