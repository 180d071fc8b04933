"""The ``metamri`` export layout (module.safetensors + module.json): any prior, fine-grained
or LoRA, round-trips to its EMA predictions; float16 storage halves the file and moves the
predictions by float16 rounding only; broken directories are refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from metamri.errors import ConfigError
from metamri.export import STATE_FILE, export_checkpoint, export_module_state, main
from metamri.metadata import Metadata
from metamri.priors import is_metamri_dir, load_prior
from metamri.training.module import MetaDiffusionModule

UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
ENCODER = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
LORA = {"_target_": "metamri.training.finetune.LoraFinetune", "rank": 4, "alpha": 4}
RECORDS = [Metadata(anatomy="brain", contrast=c, sequence="TurboSpinEcho", slice=float(i), tr=500.0 + 900 * i,
                    te=10.0 + 20 * i, ti=None, flip_angle=90.0, field_strength=1.5 + 1.5 * (i % 2))
           for i, c in enumerate(["AXT1", "AXT2", "AXFLAIR", "AXT1POST"])]


def _module(finetune=None) -> MetaDiffusionModule:
    """A fitted fine-grained module whose EMA differs from its raw weights."""
    torch.manual_seed(0)
    module = MetaDiffusionModule(unet=UNET, encoder=ENCODER, finetune=finetune, ema_decay=0.999)
    module.encoder.fit(RECORDS)
    with torch.no_grad():
        for p in module.parameters():  # the zero-initialised parts of the encoder become visible
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    ema = module.ema
    with torch.no_grad():
        for shadow in ema.shadow.values():
            shadow.add_(0.05 * torch.randn_like(shadow))
    return module.eval()


def _eps(module, ema: bool = False) -> torch.Tensor:
    x = torch.randn(4, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if ema:
            with module.ema_weights():
                return module.eps(x, 300, RECORDS)
        return module.eps(x, 300, RECORDS)


@pytest.mark.parametrize("finetune", [None, LORA], ids=["full", "lora"])
def test_round_trip_predicts_the_ema_weights(tmp_path, finetune):
    module = _module(finetune)
    raw, averaged = _eps(module), _eps(module, ema=True)
    assert (raw - averaged).abs().max() > 1e-3
    out = export_module_state(module, tmp_path / "prior", source="test", extra={"global_step": 5})
    assert is_metamri_dir(out)
    info = json.loads((out / "export.json").read_text())
    assert info["layout"] == "metamri" and info["weights"] == "ema" and info["global_step"] == 5
    reloaded = load_prior(out)
    assert reloaded.ema_decay is None  # the stored weights are the average
    assert reloaded.encoder.vocabulary.to_dict() == module.encoder.vocabulary.to_dict()
    if finetune is not None:
        assert any("lora_" in n for n, _ in reloaded.unet.named_parameters())
    assert (_eps(reloaded) - averaged).abs().max().item() < 1e-6
    assert (_eps(module) - raw).abs().max().item() == 0.0  # the module keeps its raw weights


def test_float16_storage_halves_the_file_and_rounds_only(tmp_path):
    module = _module()
    averaged = _eps(module, ema=True)
    full = export_module_state(module, tmp_path / "f32")
    half = export_module_state(module, tmp_path / "f16", dtype="float16")
    ratio = (half / STATE_FILE).stat().st_size / (full / STATE_FILE).stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    reloaded = load_prior(half)
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())
    err = (_eps(reloaded) - averaged).abs().max().item()
    assert 1e-7 < err < 1e-2 * averaged.abs().max().item(), err
    with pytest.raises(ConfigError, match="dtype"):
        export_module_state(module, tmp_path / "bf", dtype="bfloat16")
    assert not (tmp_path / "bf").exists()


def test_broken_directories_are_refused_by_name(tmp_path):
    out = export_module_state(_module(), tmp_path / "prior")
    data = (out / STATE_FILE).read_bytes()
    (out / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="module.safetensors cannot be read"):
        load_prior(out)
    other = export_module_state(_module(), tmp_path / "other")
    (other / "module.json").write_text("{not json")
    with pytest.raises(ConfigError, match="module.json"):
        load_prior(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a prior"):
        load_prior(tmp_path / "empty")
    with pytest.raises(ConfigError, match="exists already"):
        export_module_state(_module(), tmp_path / "prior")


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    import lightning as L

    module = _module()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("wandb_group: study_arm\n")
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": L.__version__, "global_step": 12, "epoch": 0}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, ckpt)
    assert main([str(ckpt), str(tmp_path / "out"), "--layout", "metamri", "--dtype", "float16"]) == 0
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["global_step"] == 12 and info["train_run"] == str(run)
    # evaluations of the export are grouped with the training run, also once it is gone
    from metamri.evaluation.wandb_log import resolve_group

    shutil.rmtree(run / ".hydra")
    assert resolve_group(None, tmp_path / "out") == "study_arm"
    assert (_eps(load_prior(tmp_path / "out")) - _eps(module, ema=True)).abs().max() < 1e-2
    assert main([str(ckpt), str(tmp_path / "x"), "--layout", "nope"]) == 1
    assert "layout" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only a text-conditioned prior"):
        export_checkpoint(ckpt, tmp_path / "y")  # the default layout is ContextMRI's
