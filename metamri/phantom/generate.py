"""Write the phantom as a dataset in the real formats (fastMRI brain HDF5, CMRxRecon cine v7.3).

Layout under ``out_dir`` (:func:`generate_dataset`)::

    brain/multicoil_train/file_brain_<ACQ>_<patient:03d>_<n:07d>.h5
    cardiac/MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax.mat, cine_lax.mat
    cardiac/MultiCoil/Cine/TrainingSet/cine_info.csv
    phantom_manifest.json

:func:`generate_domain` writes one domain into a directory of its own (what the
data module calls when a raw directory is empty), with its manifest beside it.

Brain k-space is (slices, coils, 2N, N) complex64: readout (axis -2) oversampled
2x, so the object fills the central half of a (2N, N) field of view;
``reconstruction_rss = center_crop(rss(ifft2c(kspace)), (N, N))``, fastMRI's
convention.  Cine k-space is (frames, slices, coils, ky, kx) in h5py order, no
readout oversampling, ky = round(N * phase_fraction).

Presets (:mod:`metamri.phantom.presets`): ``preset`` (``default`` | ``study``) in a
domain's config picks the population's counts, protocol ranges and anatomy ranges;
explicit keys override the preset's counts.  The default preset's files and manifest
are byte for byte those of the phantom before presets existed (a non-default preset
adds ``preset`` to the manifest's config).

Randomness: every patient, volume and view has its own generator seeded from
``(seed, domain, patient[, stream, volume])``, so the same seed gives identical
arrays, and changing e.g. ``volumes_per_patient`` leaves the other draws as they were.
:func:`iter_brain_volumes` and :func:`iter_cine_volumes` yield everything a file
is made of (including the noiseless complex ground truth), without writing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metamri.data.cmrxrecon_file import SIDECAR_NAME, write_cine_sidecar, write_cmrxrecon_cine
from metamri.data.fastmri_file import write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header
from metamri.errors import ConfigError
from metamri.phantom.brain import BrainPhantom, BrainVolume, make_brain_phantom, render_brain_volume
from metamri.phantom.cardiac import (
    LAX_VIEWS,
    CardiacPhantom,
    CineVolume,
    make_cardiac_phantom,
    render_cine,
)
from metamri.phantom.coils import (
    birdcage_coil_maps,
    noise_sigma,
    rss_reconstruction,
    simulate_kspace,
)
from metamri.phantom.presets import get_preset
from metamri.phantom.protocols import (
    BRAIN_CONTRASTS,
    VENDOR,
    Protocol,
    sample_brain_protocol,
    sample_cine_protocol,
    sample_field_strength,
)
from metamri.utils.io import atomic_output

log = logging.getLogger(__name__)

MANIFEST_NAME = "phantom_manifest.json"
BRAIN_SUBDIR = "multicoil_train"
CINE_SUBDIR = Path("MultiCoil/Cine/TrainingSet")
_DOMAIN_ID = {"brain": 0, "cardiac": 1}
_ANATOMY, _VOLUME = 0, 1
_UNSET = object()


@dataclass(frozen=True)
class BrainConfig:
    """Brain part of the phantom dataset.

    Attributes:
        patients: Number of patients.
        volumes_per_patient: Volumes per patient, each a different contrast while
            there are contrasts left (same anatomy, scanner and slice positions).
        slices: Axial slices per volume.
        coils: Receive coils.
        image_size: N: images N x N, k-space 2N (readout) x N (phase).
        max_lesions: Up to this many white-matter lesions per patient.
        snr: RSS image SNR inside the object (``coils.noise_sigma``); ``None`` is noiseless.
        preset: Name of the population (:mod:`metamri.phantom.presets`): its protocol
            and anatomy ranges; :func:`brain_config` also takes its counts from it.
    """

    patients: int = 8
    volumes_per_patient: int = 2
    slices: int = 8
    coils: int = 8
    image_size: int = 64
    max_lesions: int = 3
    snr: float | None = 30.0
    preset: str = "default"


@dataclass(frozen=True)
class CardiacConfig:
    """Cardiac part of the phantom dataset.

    Attributes:
        patients: Number of patients (P001, P002, ...).
        frames: Cine frames over one cardiac cycle.
        sax_slices: Short-axis slices, base to apex (0 skips cine_sax.mat).
        lax_slices: Long-axis views, 4CH, 2CH, 3CH in that order (0 to 3; 0 skips cine_lax.mat).
        coils: Receive coils (CMRxRecon: 10).
        image_size: N: readout kx samples.
        phase_fraction: ky = round(N * phase_fraction) phase-encode lines (rectangular FOV).
        snr: RSS image SNR inside the object; ``None`` is noiseless.
        preset: Name of the population (:mod:`metamri.phantom.presets`): its cine
            protocol ranges; :func:`cardiac_config` also takes its counts from it.
    """

    patients: int = 4
    frames: int = 12
    sax_slices: int = 6
    lax_slices: int = 3
    coils: int = 10
    image_size: int = 64
    phase_fraction: float = 0.75
    snr: float | None = 25.0
    preset: str = "default"

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) = (ky, kx) of one image."""
        return max(8, round(self.image_size * self.phase_fraction)), self.image_size


def _build(cls, values: Mapping[str, Any] | None, key: str):
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", values[unknown[0]], "unknown key", hint=f"known: {sorted(names)}")
    preset = get_preset(values.pop("preset", None), f"{key}.preset")
    counts = preset.brain if cls is BrainConfig else preset.cardiac
    cfg = cls(**{**counts, **values, "preset": preset.name})
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "preset":
            continue
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if f.name == "snr":
            if value is not None and not (is_number and value > 0):
                raise ConfigError(f"{key}.snr", value, "must be > 0 or null (noiseless)")
        elif f.name == "phase_fraction":
            if not (is_number and 0.25 <= value <= 1.0):
                raise ConfigError(f"{key}.{f.name}", value, "must be in [0.25, 1]")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{key}.{f.name}", value, "must be a non-negative integer")
    for name in ("patients", "coils", "image_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{key}.{name}", getattr(cfg, name), "must be >= 1")
    if cfg.image_size < 16 or cfg.image_size % 2:
        raise ConfigError(f"{key}.image_size", cfg.image_size, "must be even and >= 16")
    if isinstance(cfg, BrainConfig) and (cfg.slices < 1 or cfg.volumes_per_patient < 1):
        raise ConfigError(key, values, "slices and volumes_per_patient must be >= 1")
    if isinstance(cfg, CardiacConfig):
        if cfg.frames < 1 or cfg.sax_slices + cfg.lax_slices < 1:
            raise ConfigError(key, values, "need frames >= 1 and at least one sax or lax slice")
        if cfg.lax_slices > len(LAX_VIEWS):
            raise ConfigError(f"{key}.lax_slices", cfg.lax_slices, f"at most {len(LAX_VIEWS)} (4CH, 2CH, 3CH)")
    return cfg


def brain_config(values: Mapping[str, Any] | None = None) -> BrainConfig:
    """Validated :class:`BrainConfig` from a mapping (unknown keys and bad values raise ConfigError).

    ``values["preset"]`` (default ``"default"``) supplies the counts the mapping leaves out.
    """
    return _build(BrainConfig, values, "brain")


def cardiac_config(values: Mapping[str, Any] | None = None) -> CardiacConfig:
    """Validated :class:`CardiacConfig` from a mapping (``preset`` as in :func:`brain_config`)."""
    return _build(CardiacConfig, values, "cardiac")


def _config_dict(cfg: BrainConfig | CardiacConfig) -> dict[str, Any]:
    """The manifest's record of a config: the default preset is left implicit (unchanged manifest)."""
    out = dataclasses.asdict(cfg)
    if out.get("preset") == "default":
        del out["preset"]
    return out


def _rng(seed: int, domain: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _DOMAIN_ID[domain], *(int(k) for k in keys)])


# -- brain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedBrainVolume:
    """Everything one brain file is made of.

    Attributes:
        name: File name (``file_brain_AXT2_003_0000006.h5``).
        patient_id: ``attrs["patient_id"]``.
        phantom: The patient's anatomy.
        volume: Noiseless ground truth (complex image (S, N, N), maps, protocol).
        coil_maps: complex64 (C, N, N) sensitivities (RSS 1).
        kspace: complex64 (S, C, 2N, N), noisy.
        sigma: Complex noise std per k-space sample.
    """

    name: str
    patient_id: str
    phantom: BrainPhantom
    volume: BrainVolume
    coil_maps: np.ndarray
    kspace: np.ndarray
    sigma: float

    @property
    def reconstruction_rss(self) -> np.ndarray:
        """float32 (S, N, N): ``center_crop(rss(ifft2c(kspace)), (N, N))``."""
        n = self.volume.image.shape[-1]
        return rss_reconstruction(self.kspace, (n, n))

    def header_xml(self) -> str:
        """The file's ISMRMRD header."""
        p, ph = self.volume.protocol, self.phantom
        s, n = self.volume.image.shape[0], self.volume.image.shape[-1]
        fov = round(ph.fov_mm, 2)
        info = HeaderInfo(
            tr=p.tr,
            te=p.te,
            ti=p.header_ti,
            flip_angle=p.flip,
            sequence_type=p.sequence,
            echo_spacing=p.echo_spacing,
            field_strength=p.field_strength,
            vendor=VENDOR,
            model=p.model,
            receiver_channels=int(self.coil_maps.shape[0]),
            protocol_name=p.protocol_name,
            encoded_matrix=(2 * n, n, 1),
            encoded_fov_mm=(2 * fov, fov, ph.slice_thickness_mm),  # readout oversampled 2x
            recon_matrix=(n, n, 1),
            recon_fov_mm=(fov, fov, ph.slice_thickness_mm),
            ky_center=n // 2,
            ky_maximum=n - 1,
            num_slices=s,
        )
        return build_header(info)


def brain_patient_id(patient: int) -> str:
    """``attrs["patient_id"]`` of brain patient ``patient`` (0-based)."""
    return f"phantom-brain-{patient + 1:03d}"


def brain_contrasts(rng: np.random.Generator, volumes: int) -> list[str]:
    """``volumes`` contrasts for one patient: all different while the five last."""
    order = [BRAIN_CONTRASTS[i] for i in rng.permutation(len(BRAIN_CONTRASTS))]
    extra = [BRAIN_CONTRASTS[i] for i in rng.integers(len(BRAIN_CONTRASTS), size=max(volumes - 5, 0))]
    return (order + extra)[:volumes]


def iter_brain_volumes(cfg: BrainConfig, seed: int = 0) -> Iterator[SimulatedBrainVolume]:
    """Simulate every brain volume of the dataset, in file order (nothing is written)."""
    preset = get_preset(cfg.preset, "brain.preset")
    for patient in range(cfg.patients):
        rng = _rng(seed, "brain", patient, _ANATOMY)
        phantom = make_brain_phantom(
            rng, slices=cfg.slices, image_size=cfg.image_size, max_lesions=cfg.max_lesions,
            variation=preset.anatomy,
        )
        b0, model = sample_field_strength(rng, "brain")
        contrasts = brain_contrasts(rng, cfg.volumes_per_patient)
        maps = birdcage_coil_maps(cfg.coils, (cfg.image_size, cfg.image_size), rng)
        for v, contrast in enumerate(contrasts):
            vrng = _rng(seed, "brain", patient, _VOLUME, v)
            protocol = sample_brain_protocol(
                contrast, vrng, field_strength=b0, model=model, ranges=preset.brain_ranges
            )
            volume = render_brain_volume(phantom, protocol, vrng)
            sigma = 0.0 if cfg.snr is None else noise_sigma(volume.image, cfg.snr)
            kspace = simulate_kspace(volume.image, maps, sigma=sigma, rng=vrng, readout_oversampling=2)
            number = patient * cfg.volumes_per_patient + v
            name = f"file_brain_{contrast}_{patient + 1:03d}_{number:07d}.h5"
            yield SimulatedBrainVolume(name, brain_patient_id(patient), phantom, volume, maps, kspace, sigma)


def _write_brain(root: Path, cfg: BrainConfig, seed: int) -> list[dict[str, Any]]:
    records = []
    for sim in iter_brain_volumes(cfg, seed):
        path = root / BRAIN_SUBDIR / sim.name
        write_fastmri_brain(
            path,
            sim.kspace,
            sim.reconstruction_rss,
            acquisition=sim.volume.protocol.contrast,
            patient_id=sim.patient_id,
            header_xml=sim.header_xml(),
        )
        log.info("wrote %s", path)
        records.append(
            {
                "domain": "brain",
                "path": str(path.relative_to(root)),
                "patient_id": sim.patient_id,
                "acquisition": sim.volume.protocol.contrast,
                "kspace_shape": list(sim.kspace.shape),
                "protocol": sim.volume.protocol.to_dict(),
                "signals": sim.volume.signals,
                "noise_sigma": sim.sigma,
                "anatomy": sim.phantom.describe(),
            }
        )
    return records


# -- cardiac --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedCine:
    """Everything one cine file is made of.

    Attributes:
        patient_id: ``P001`` ...
        view: ``"sax"`` | ``"lax"``.
        phantom: The patient's thorax and heart.
        volume: Noiseless ground truth (complex (T, S, ky, kx) image, maps, protocol).
        coil_maps: complex64 (C, ky, kx).
        kspace: complex64 (T, S, C, ky, kx), noisy (h5py order of ``kspace_full``).
        sigma: Complex noise std per k-space sample.
    """

    patient_id: str
    view: str
    phantom: CardiacPhantom
    volume: CineVolume
    coil_maps: np.ndarray
    kspace: np.ndarray
    sigma: float

    @property
    def relative_path(self) -> Path:
        """Path below the dataset root: ``MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax.mat``."""
        return CINE_SUBDIR / "FullSample" / self.patient_id / f"cine_{self.view}.mat"

    def sidecar_row(self) -> dict[str, Any]:
        """The row of ``cine_info.csv`` (TI empty: bSSFP has none)."""
        p = self.volume.protocol
        return {
            "patient_id": self.patient_id,
            "view": self.view,
            "sequence": p.sequence,
            "field_strength_T": p.field_strength,
            "TR_ms": p.tr,
            "TE_ms": p.te,
            "TI_ms": None,
            "flip_angle_deg": p.flip,
            "age": self.phantom.age,
            "sex": self.phantom.sex,
            "pathology": self.phantom.pathology,
        }


def iter_cine_volumes(cfg: CardiacConfig, seed: int = 0) -> Iterator[SimulatedCine]:
    """Simulate every cine file of the dataset, patient by patient, SAX then LAX."""
    preset = get_preset(cfg.preset, "cardiac.preset")
    for patient in range(cfg.patients):
        rng = _rng(seed, "cardiac", patient, _ANATOMY)
        phantom = make_cardiac_phantom(rng)
        b0, model = sample_field_strength(rng, "cardiac")
        maps = birdcage_coil_maps(cfg.coils, cfg.shape, rng)
        for v, (view, slices) in enumerate((("sax", cfg.sax_slices), ("lax", cfg.lax_slices))):
            if slices == 0:
                continue
            vrng = _rng(seed, "cardiac", patient, _VOLUME, v)
            protocol: Protocol = sample_cine_protocol(
                vrng, field_strength=b0, model=model, ranges=preset.cine_ranges
            )
            volume = render_cine(
                phantom, view, protocol, vrng, frames=cfg.frames, slices=slices, shape=cfg.shape
            )
            sigma = 0.0 if cfg.snr is None else noise_sigma(volume.image, cfg.snr)
            kspace = simulate_kspace(volume.image, maps, sigma=sigma, rng=vrng)
            yield SimulatedCine(f"P{patient + 1:03d}", view, phantom, volume, maps, kspace, sigma)


def _write_cardiac(root: Path, cfg: CardiacConfig, seed: int) -> list[dict[str, Any]]:
    records, rows = [], []
    for sim in iter_cine_volumes(cfg, seed):
        path = write_cmrxrecon_cine(root / sim.relative_path, sim.kspace)
        log.info("wrote %s", path)
        rows.append(sim.sidecar_row())
        records.append(
            {
                "domain": "cardiac",
                "path": str(sim.relative_path),
                "patient_id": sim.patient_id,
                "view": sim.view,
                "kspace_shape": list(sim.kspace.shape),
                "protocol": sim.volume.protocol.to_dict(),
                "signals": sim.volume.signals,
                "noise_sigma": sim.sigma,
                "anatomy": sim.phantom.describe(),
            }
        )
    sidecar = root / CINE_SUBDIR / SIDECAR_NAME
    write_cine_sidecar(sidecar, rows)
    records.append({"domain": "cardiac", "path": str(sidecar.relative_to(root)), "sidecar": True})
    return records


# -- entry points ------------------------------------------------------------------------------


def _write_manifest(path: Path, config: dict[str, Any], records: list[dict[str, Any]]) -> None:
    manifest = {"generator": "metamri.phantom", "config": config, "files": records}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def generate_domain(
    domain: str,
    root: str | Path,
    *,
    seed: int = 0,
    image_size: int | None = None,
    snr: float | None | object = _UNSET,
    preset: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Write one domain's phantom files into ``root`` (and ``root/phantom_manifest.json``).

    Brain files go to ``root/multicoil_train/``, cine files to ``root/MultiCoil/Cine/TrainingSet/``.
    This is what ``SliceDataModule`` calls with its ``phantom:`` mapping as keywords, so a
    data config's ``phantom: {seed: 0, image_size: 64, preset: study}`` writes the study
    population.

    Args:
        domain: ``"brain"`` | ``"cardiac"``.
        root: Directory (created if needed).
        seed: Master seed.
        image_size: Overrides the domain's ``image_size``.
        snr: Overrides the domain's ``snr`` (``None``: noiseless).
        preset: Population (:mod:`metamri.phantom.presets`); ``None``: ``default``.
            Its counts apply where ``overrides`` sets none.
        **overrides: Other keys of :class:`BrainConfig` / :class:`CardiacConfig`.

    Returns:
        The manifest written.
    """
    if domain not in _DOMAIN_ID:
        raise ConfigError("domain", domain, f"must be one of {sorted(_DOMAIN_ID)}")
    values = dict(overrides)
    if image_size is not None:
        values["image_size"] = image_size
    if snr is not _UNSET:
        values["snr"] = snr
    if preset is not None:
        values["preset"] = preset
    root = Path(root)
    if domain == "brain":
        cfg = brain_config(values)
        records = _write_brain(root, cfg, seed)
    else:
        cfg = cardiac_config(values)
        records = _write_cardiac(root, cfg, seed)
    config = {"seed": seed, domain: _config_dict(cfg)}
    _write_manifest(root / MANIFEST_NAME, config, records)
    return {"config": config, "files": records}


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    brain: Mapping[str, Any] | None = None,
    cardiac: Mapping[str, Any] | None = None,
    noise: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Write the whole phantom dataset (brain and cardiac) under ``out_dir``.

    Args:
        out_dir: Destination; ``brain/`` and ``cardiac/`` are created inside.
        seed: Master seed (same seed: identical arrays).
        brain: Keys of :class:`BrainConfig`, or ``{"patients": 0}`` to skip the brain.
        cardiac: Keys of :class:`CardiacConfig`, or ``{"patients": 0}`` to skip it.
        noise: ``{"snr": value}`` sets both domains' SNR unless they set their own.
        preset: Population of both domains unless a domain's mapping names its own
            ``preset`` (:mod:`metamri.phantom.presets`); ``None``: ``default``.

    Returns:
        The manifest (also written to ``out_dir/phantom_manifest.json``).
    """
    out_dir = Path(out_dir)
    configs = phantom_configs(brain=brain, cardiac=cardiac, noise=noise, preset=preset)  # all checked first
    config: dict[str, Any] = {"seed": seed}
    records: list[dict[str, Any]] = []
    writers = {"brain": _write_brain, "cardiac": _write_cardiac}
    for domain, cfg in configs.items():
        config[domain] = _config_dict(cfg)
        for rec in writers[domain](out_dir / domain, cfg, seed):
            records.append({**rec, "path": f"{domain}/{rec['path']}"})
    _write_manifest(out_dir / MANIFEST_NAME, config, records)
    return {"config": config, "files": records}


def phantom_configs(
    *,
    brain: Mapping[str, Any] | None = None,
    cardiac: Mapping[str, Any] | None = None,
    noise: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> dict[str, BrainConfig | CardiacConfig]:
    """The validated config of every domain :func:`generate_dataset` writes (arguments as there).

    A domain with ``patients: 0`` is left out. Every value is checked before anything is
    written, so a bad cardiac value never leaves a brain-only dataset behind.

    Raises:
        ConfigError: An unknown key or a bad value (named ``brain.<key>``, ``noise.<key>`` ...).
    """
    noise = dict(noise or {})
    unknown = sorted(set(noise) - {"snr"})
    if unknown:
        raise ConfigError(f"noise.{unknown[0]}", noise[unknown[0]], "unknown key", hint="known: ['snr']")
    snr = noise.get("snr")
    if snr is not None and (isinstance(snr, bool) or not isinstance(snr, int | float) or not snr > 0):
        raise ConfigError("noise.snr", snr, "must be > 0 or null (noiseless)")
    out: dict[str, BrainConfig | CardiacConfig] = {}
    for domain, values, build in (("brain", brain, brain_config), ("cardiac", cardiac, cardiac_config)):
        values = dict(values or {})
        if preset is not None and "preset" not in values:
            values["preset"] = preset
        if values.get("patients", 1) == 0:
            continue
        if "snr" in noise and "snr" not in values:
            values["snr"] = noise["snr"]
        out[domain] = build(values)
    return out
