"""The LightningModule: loss, logging of drop rates and timesteps, EMA, checkpoint round trips."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from metamri.data.batch import collate_images
from metamri.data.sample import ImageSample
from metamri.errors import ConfigError
from metamri.metadata import Metadata
from metamri.models import EMA, build_unet
from metamri.training import MetaDiffusionModule

UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
FINEGRAINED = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
LORA = {"_target_": "metamri.training.finetune.LoraFinetune", "rank": 4, "alpha": 4}
OOD_HIGH = {"_target_": "metamri.training.timesteps.TimestepRangeSampler",
            "ranges": {"brain": [0.0, 1.0], "cardiac": [0.75, 1.0]}}
DROPOUT = {"_target_": "metamri.training.dropout.FieldDropout", "p": 0.1, "prompt_p": 0.1}

FLAIR = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", slice=3,
                 tr=9000, te=86, ti=2500, flip_angle=150)
CINE = Metadata(anatomy="heart", contrast="CINE", sequence="TrueFISP", slice=4, tr=40, te=1.4,
                flip_angle=50)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth 2-channel images (low-frequency random fields), values of order 1."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 2, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _samples(n: int = 12, size: int = 16) -> list[ImageSample]:
    imgs = _images(n, size, 0).numpy()
    out = []
    for i in range(n):
        cardiac = i % 3 == 2
        meta = CINE.replace(slice=float(i)) if cardiac else FLAIR.replace(
            te=80.0 + 5 * i, contrast="AXPD" if i == 0 else "AXFLAIR")  # AXPD: not a seed category
        out.append(ImageSample(image=imgs[i], metadata=meta, domain="cardiac" if cardiac else "brain",
                               fname=f"file{i}.h5", slice_index=i, frame=-1, scale=1.0))
    return out


class TinyData(L.LightningDataModule):
    def __init__(self, samples: list[ImageSample], batch_size: int = 4) -> None:
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def train_metadata(self) -> list[Metadata]:
        return [s.metadata for s in self.samples]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.samples, batch_size=self.batch_size, collate_fn=collate_images)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.samples[:4], batch_size=4, collate_fn=collate_images)


def _trainer(tmp_path, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=tmp_path)
    args.update(kw)
    return L.Trainer(**args)


def _bert(tmp_path) -> str:
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ":", "brain", "heart", "slice",
             "tr", "te", "ti", "flip", "angle", "sequence", "axflair", "cine", "turbospinecho",
             "truefisp", *[str(i) for i in range(10)], *[f"##{i}" for i in range(10)]]
    path = tmp_path / "bert"
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """ContextMRI's checkpoint layout at toy size (unet/, text_encoder/ CLIP 32 wide, tokenizer/, scheduler/)."""
    from metamri.models.tiny_contextmri import write_tiny_contextmri

    return write_tiny_contextmri(tmp_path_factory.mktemp("tiny_contextmri"))


# -- checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["lora_finegrained", "full_concat", "lora_concat_contextmri"])
def test_checkpoint_alone_rebuilds_the_module(tmp_path, variant, tiny_dir):
    torch.manual_seed(0)
    unet = UNET
    if variant == "lora_finegrained":
        # LoRA on a "pretrained" UNet read from a diffusers directory that is deleted before
        # loading: the checkpoint must not need it.
        build_unet("tiny").save_pretrained(tmp_path / "pretrained" / "unet")
        unet = {**UNET, "pretrained": str(tmp_path / "pretrained")}
        encoder, finetune = FINEGRAINED, LORA
    elif variant == "full_concat":
        encoder = {"_target_": "metamri.encoders.fusion.FusionEncoder", "mode": "concat",
                   "text": {"path": _bert(tmp_path), "projection": "trainable"}}
        finetune = None
    else:  # the released layout: LoRA (auto targets) + gated concatenation over its own CLIP
        unet = {"_target_": "metamri.models.unet.build_unet", "pretrained": str(tiny_dir)}
        encoder = {"_target_": "metamri.encoders.fusion.FusionEncoder", "mode": "concat",
                   "text": {"path": str(tiny_dir)}}
        finetune = {**LORA, "target_modules": "auto"}
    module = MetaDiffusionModule(unet=unet, encoder=encoder, finetune=finetune, timestep_sampler=OOD_HIGH,
                                 dropout=DROPOUT, ema_decay=0.9, seed=1)
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1, val_check_interval=3)
    trainer.fit(module, datamodule=TinyData(_samples()))
    fg = module.encoder if variant == "lora_finegrained" else module.encoder.finegrained
    assert not fg.needs_fit and fg.tables["contrast"].num_embeddings == 8  # fitted in setup, AXPD added
    assert module.ema is not None and module.ema.num_updates == 3
    if "concat" in variant:
        with torch.no_grad():  # an open gate, so that the round trip covers the gated attention
            module.encoder.gate.fill_(0.05)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    shutil.rmtree(tmp_path / "pretrained", ignore_errors=True)

    loaded = MetaDiffusionModule.load_from_checkpoint(path)
    module.eval(), loaded.eval()
    x_t, t = _images(3, 16, 7), torch.tensor([10, 500, 990])
    meta = [FLAIR.replace(contrast="AXPD"), CINE, FLAIR.without(["te"])]
    drop = torch.zeros(3, len(module.encoder.fields), dtype=torch.bool)
    drop[2, 1] = True
    with torch.no_grad():
        a, b = module.eps(x_t, t, meta, drop), loaded.eps(x_t, t, meta, drop)
        with module.ema_weights(), loaded.ema_weights():
            ea, eb = module.eps(x_t, t, meta, drop), loaded.eps(x_t, t, meta, drop)
    print(f"\n{variant}: max|eps diff| raw {(a - b).abs().max().item()}, EMA {(ea - eb).abs().max().item()}; "
          f"EMA vs raw {(a - ea).abs().max().item():.3e}")
    assert torch.equal(a, b) and torch.equal(ea, eb)
    assert not torch.equal(a, ea)  # the EMA weights differ from the raw ones after 3 steps
    assert loaded.ema.num_updates == 3
    yaml.safe_dump(dict(loaded.hparams))  # plain, YAML-able hyperparameters
    if variant == "lora_finegrained":
        assert any("lora_B" in n for n, _ in loaded.unet.named_parameters())
    if "concat" in variant:  # the gate is in the checkpoint and the processors were re-installed
        assert float(loaded.encoder.gate_value().detach()) == pytest.approx(0.5)
        assert loaded.encoder.gated_modules == module.encoder.gated_modules
        assert sum(loaded.encoder.gated_modules.values()) > 0
        with torch.no_grad():
            loaded.encoder.gate.zero_()
            shut = loaded.eps(x_t, t, meta, drop)
        assert not torch.equal(shut, b)  # the gate is live in the rebuilt UNet


def test_group_files_compose_into_a_module(tmp_path):
    """The contract with train.yaml: the module instantiated non-recursively from the group files."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    group = {g: OmegaConf.load(conf / g / f"{name}.yaml") for g, name in
             [("model", "tiny"), ("encoder", "finegrained"), ("finetune", "lora"),
              ("timesteps", "ood_high_noise"), ("dropout", "independent")]}
    cfg = OmegaConf.create({
        "_target_": "metamri.training.module.MetaDiffusionModule", "_recursive_": False,
        "unet": group["model"].unet, "scheduler": group["model"].scheduler,
        "encoder": group["encoder"], "finetune": group["finetune"], "timestep_sampler": group["timesteps"],
        "dropout": group["dropout"],
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-5},
        "ema_decay": 0.999, "seed": 0,
    })
    module = instantiate(cfg)
    assert module.encoder.context_dim == 64 and module.timestep_sampler.bounds["cardiac"] == (750, 1000)
    assert module.hparams["encoder"]["_target_"].endswith("FineGrainedEncoder")
    assert isinstance(module.hparams["encoder"], dict)  # plain containers, not DictConfig
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 5e-5
    module.log = lambda *a, **k: None
    loss = module.training_step(collate_images(_samples(4)), 0)
    assert torch.isfinite(loss)


# -- the conditioning path --------------------------------------------------------------------
def test_changing_te_changes_the_prediction():
    torch.manual_seed(0)
    m = MetaDiffusionModule(unet=UNET, encoder=FINEGRAINED, ema_decay=None)
    m.encoder.fit([FLAIR, FLAIR.replace(te=120.0), CINE])
    m.eval()
    x_t, t = _images(1, 16, 3), torch.tensor([600])
    with torch.no_grad():
        tok_a, tok_b = m.context([FLAIR]), m.context([FLAIR.replace(te=120.0)])
        a, b = m.eps(x_t, t, [FLAIR]), m.eps(x_t, t, [FLAIR.replace(te=120.0)])
        j = m.encoder.fields.index("te")
        drop = torch.zeros(1, len(m.encoder.fields), dtype=torch.bool)
        drop[0, j] = True
        dropped, missing = m.eps(x_t, t, [FLAIR], drop), m.eps(x_t, t, [FLAIR.without(["te"])])
        scalar_t = m.eps(x_t, 600, [FLAIR])
    tok_diff, eps_diff = (tok_a - tok_b).abs().max().item(), (a - b).abs().max().item()
    print(f"\nTE 86 -> 120 ms: max|token diff| {tok_diff:.4f}, max|eps diff| {eps_diff:.3e}")
    assert tok_diff > 1e-3 and eps_diff > 1e-6
    assert torch.equal(dropped, missing)
    assert torch.equal(scalar_t, a)


# -- training ---------------------------------------------------------------------------------
def test_thirty_steps_reduce_the_loss_and_log_ood_timesteps(tmp_path):
    torch.manual_seed(0)
    module = MetaDiffusionModule(
        unet=UNET, encoder=FINEGRAINED, timestep_sampler=OOD_HIGH, dropout=DROPOUT, ema_decay=None,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 2e-3},
    )
    data = TinyData(_samples(4))  # one fixed batch (3 brain, 1 cardiac), seen 30 times
    val = next(iter(data.val_dataloader()))
    with torch.no_grad():
        module.encoder.fit(data.train_metadata())
        before = module._loss_at_fixed_t(val.image, module.validation_noise(val), module.context(val.metadata))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(tmp_path, max_steps=30, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(module, datamodule=data)
    with torch.no_grad():
        after = module._loss_at_fixed_t(val.image, module.validation_noise(val), module.context(val.metadata))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"\ntrain loss mean of first 5 steps {first:.4f} -> last 5 {last:.4f}; "
          f"fixed-t loss {before.mean():.4f} -> {after.mean():.4f}")
    assert len(losses) == 30
    assert last < 0.7 * first and after.mean() < 0.7 * before.mean()
    m = trainer.callback_metrics  # the last epoch's aggregates
    assert 750 <= m["train/t_min_cardiac"] <= m["train/t_max_cardiac"] <= 999
    assert 0.0 <= m["train/drop_te"] <= 1.0 and "train/loss_brain" in m


def test_validation_is_deterministic_and_logs_uncond(tmp_path):
    torch.manual_seed(0)
    module = MetaDiffusionModule(unet=UNET, encoder=FINEGRAINED, timestep_sampler=OOD_HIGH,
                                 ema_decay=0.99, val_timesteps=(50, 950))
    data = TinyData(_samples(8))
    trainer = _trainer(tmp_path)
    r1 = trainer.validate(module, datamodule=data, verbose=False)[0]
    r2 = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert r1 == r2 and {"val/loss", "val/loss_uncond", "val/loss_brain", "val/loss_cardiac"} <= set(r1)
    # val/loss is the sample-weighted mean of the domain losses (3 brain, 1 cardiac sample)
    mixed = (3 * r1["val/loss_brain"] + 1 * r1["val/loss_cardiac"]) / 4
    assert abs(mixed - r1["val/loss"]) < 1e-5 * r1["val/loss"]
    # the noise of a sample depends on its file/slice, not on its place in the batch
    batch = collate_images(_samples(4))
    rev = collate_images(_samples(4)[::-1])
    assert torch.equal(module.validation_noise(batch), module.validation_noise(rev).flip(0))


# -- EMA ------------------------------------------------------------------------------------
def test_ema_closed_form_and_swap():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA([("w", p)], decay=0.5)
    values = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0]), torch.tensor([5.0, 4.0])]
    for v in values:
        with torch.no_grad():
            p.copy_(v)
        ema.update()
    # first update copies; then e <- d_n e + (1 - d_n) w, d_n = min(0.5, (1 + n) / (10 + n))
    d1, d2 = 2 / 11, 3 / 12
    want = d2 * (d1 * values[0] + (1 - d1) * values[1]) + (1 - d2) * values[2]
    torch.testing.assert_close(ema.shadow["w"], want, rtol=1e-6, atol=1e-6)
    # the warm-up ends at the cap: (1 + n) / (10 + n) >= 0.5 from n = 8
    assert [EMA([("w", p)], decay=0.5).current_decay()] == [0.0]
    ema.num_updates = 8
    assert ema.current_decay() == 0.5
    ema.num_updates = 3
    with ema.average_parameters():
        assert torch.equal(p.detach(), ema.shadow["w"])
    assert torch.equal(p.detach(), values[2])
    state = ema.state_dict()
    other = EMA([("w", torch.nn.Parameter(torch.zeros(2)))], decay=0.9)
    other.load_state_dict(state)
    assert other.decay == 0.5 and other.num_updates == 3 and torch.equal(other.shadow["w"], ema.shadow["w"])
    with pytest.raises(KeyError):
        EMA([("v", p)]).load_state_dict(state)


# -- the text model and the UNet: no silent projections ------------------------------------------
TEXT = "metamri.encoders.text.TextEncoder"


def test_identity_projection_width_mismatch_names_both_models_and_widths(tmp_path, tiny_dir):
    pretrained = {"_target_": "metamri.models.unet.build_unet", "pretrained": str(tiny_dir)}
    with pytest.raises(ConfigError) as err:  # bundled MiniLM (384) into ContextMRI's UNet (32)
        MetaDiffusionModule(unet=pretrained, encoder={"_target_": TEXT}, ema_decay=None)
    msg = str(err.value)
    print(f"\n{msg}")
    for word in ("encoder.projection", "all-MiniLM-L6-v2", "bert", "width 384", "width 32",
                 f"pretrained UNet at {tiny_dir}", "model.text_projection=trainable"):
        assert word in msg, (word, msg)
    with pytest.raises(ConfigError) as err:  # a 32-wide text model into the 64-wide tiny preset
        MetaDiffusionModule(unet=UNET, encoder={"_target_": TEXT, "path": _bert(tmp_path)}, ema_decay=None)
    for word in ("preset 'tiny'", "width 32", "width 64", "bert"):
        assert word in str(err.value), (word, str(err.value))


def test_pretrained_unet_rejects_another_kind_of_text_model(tmp_path, tiny_dir, caplog):
    pretrained = {"_target_": "metamri.models.unet.build_unet", "pretrained": str(tiny_dir)}
    bert = _bert(tmp_path)  # 32 wide like the checkpoint's CLIP, but another model
    with pytest.raises(ConfigError) as err:
        MetaDiffusionModule(unet=pretrained, encoder={"_target_": TEXT, "path": bert}, ema_decay=None)
    msg = str(err.value)
    print(f"\n{msg}")
    for word in ("model.text_encoder", bert, "bert", str(tiny_dir / "text_encoder"), "clip_text_model",
                 f"model.text_encoder={tiny_dir}", "trainable"):
        assert word in msg, (word, msg)
    # the fusions' text half is checked the same way
    with pytest.raises(ConfigError, match="clip_text_model"):
        MetaDiffusionModule(unet=pretrained, ema_decay=None, encoder={
            "_target_": "metamri.encoders.fusion.FusionEncoder", "text": {"path": bert}})
    # the checkpoint's own text model pairs with it through the identity
    own = MetaDiffusionModule(unet=pretrained, encoder={"_target_": TEXT, "path": str(tiny_dir)}, ema_decay=None)
    assert isinstance(own.encoder.proj, torch.nn.Identity) and own.encoder.model_type == "clip_text_model"


def test_trainable_projection_is_the_opt_in(tmp_path, tiny_dir, caplog):
    pretrained = {"_target_": "metamri.models.unet.build_unet", "pretrained": str(tiny_dir)}
    with caplog.at_level("WARNING", logger="metamri.training.module"):
        module = MetaDiffusionModule(unet=pretrained, ema_decay=None,
                                     encoder={"_target_": TEXT, "projection": "trainable"})  # MiniLM 384
    proj = module.encoder.proj
    assert isinstance(proj, torch.nn.Linear) and (proj.in_features, proj.out_features) == (384, 32)
    assert proj.weight.requires_grad
    opt = module.configure_optimizers()
    assert {id(proj.weight), id(proj.bias)} <= {id(p) for g in opt.param_groups for p in g["params"]}
    assert "trainable Linear" in caplog.text and "clip_text_model" in caplog.text  # said, not silent


def test_the_config_knobs_reach_the_checks(tiny_dir):
    """``model.text_encoder`` / ``model.text_projection`` drive every text encoder of the configs."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from metamri.utils.hydra import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[1] / "conf"

    # model=contextmri with the released weights (here the tiny stand-in), as the README says
    released = ["model=contextmri", f"model.unet.pretrained={tiny_dir}", "model.unet.cross_attention_dim=null"]

    def module(experiment: str, *overrides: str):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"+experiment={experiment}", *released, *overrides])
        return instantiate(cfg.module)

    with pytest.raises(Exception, match="width 384") as err:  # the default text model: MiniLM
        module("contextmri")
    assert "pretrained UNet" in str(err.value) and "all-MiniLM-L6-v2" in str(err.value)
    ok = module("contextmri", f"model.text_encoder={tiny_dir}")  # its own CLIP: the identity
    assert ok.encoder.path == str(tiny_dir) and ok.encoder.projection == "identity"
    assert ok.hparams["dropout"]["groups"]["acquisition"]["p"] == 0.5
    for name in ("additive", "concat"):
        fused = module(name, f"model.text_encoder={tiny_dir}")
        assert fused.encoder.text.path == str(tiny_dir) and fused.encoder.text.projection == "identity"
    trained = module("contextmri", "model.text_projection=trainable")  # the opt-in, from the command line
    assert isinstance(trained.encoder.proj, torch.nn.Linear)
