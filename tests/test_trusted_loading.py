"""Loading is data, never code: crafted priors are refused before anything in them runs.

Every payload below is live: its control test shows that, loaded the way metamri loaded
priors before :mod:`metamri.trust` (``torch.load(weights_only=False)``, the module built
from the stored configs unchecked, transformers asked about a folder's own code), it
creates its marker file.  Loaded through metamri, each is refused with an error that
names the file, the key and the value, and its marker never appears.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shlex
from pathlib import Path

import lightning as L
import pytest
import torch

from metamri.errors import CheckpointError, ConfigError
from metamri.export import HPARAMS_FILE, export_module_state
from metamri.export import main as export_main
from metamri.metadata import Metadata
from metamri.priors import load_prior
from metamri.training.module import MetaDiffusionModule
from metamri.trust import HYDRA_KEYS, TRUSTED_TARGETS, check_stored_config, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
UNET = {"_target_": "metamri.models.unet.build_unet", "preset": "tiny"}
ENCODER = {"_target_": "metamri.encoders.finegrained.FineGrainedEncoder", "fields": "paper"}
RECORD = Metadata(anatomy="brain", contrast="AXFLAIR", sequence="TurboSpinEcho", tr=9000, te=86,
                  ti=2500, flip_angle=150, field_strength=1.5)


# -- crafted payloads ------------------------------------------------------------------------------
def _touch(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


#: Stored configs (plain values only: they pass torch.load(weights_only=True) and JSON) that
#: name a callable outside the allow-list. Each entry: marker, source file -> (hyper-parameter
#: replaced, its crafted config, the key path the error names, the value it names).
CONFIG_PAYLOADS = {
    "builtins.open": lambda m, src: (
        "finetune", {"_target_": "builtins.open", "file": str(m), "mode": "w"},
        "finetune._target_", "builtins.open"),
    "shutil.copy": lambda m, src: (
        "timestep_sampler", {"_target_": "shutil.copy", "src": str(src), "dst": str(m)},
        "timestep_sampler._target_", "shutil.copy"),
    "os.system": lambda m, src: (
        "dropout", {"_target_": "os.system", "command": _touch(m)}, "dropout._target_", "os.system"),
    "pathlib.Path.touch via _args_": lambda m, src: (
        "finetune", {"_target_": "pathlib.Path.touch", "_args_": [str(m)]},
        "finetune._target_", "pathlib.Path.touch"),
    "builtins.exec nested in a trusted target's _args_": lambda m, src: (
        "optimizer", {"_target_": "torch.optim.AdamW", "_partial_": True,
                      "_args_": [{"_target_": "builtins.exec", "_args_": [f"open({str(m)!r}, 'w').close()"]}]},
        "optimizer._args_[0]._target_", "builtins.exec"),
    "os.system nested in the encoder's sub-config": lambda m, src: (
        "encoder", {"_target_": "metamri.encoders.fusion.FusionEncoder", "fields": "paper", "mode": "additive",
                    "text": {"_target_": "os.system", "command": _touch(m)}},
        "encoder.text._target_", "os.system"),
    "urllib.request.urlretrieve nested in a list": lambda m, src: (
        "timestep_sampler", {"_target_": "metamri.training.timesteps.TimestepRangeSampler",
                             "num_train_timesteps": 1000,
                             "ranges": {"brain": [{"_target_": "urllib.request.urlretrieve",
                                                   "url": src.as_uri(), "filename": str(m)}, 1.0]}},
        "timestep_sampler.ranges.brain[0]._target_", "urllib.request.urlretrieve"),
    "oc.create interpolation (a _target_ made after any check)": lambda m, src: (
        "finetune", {"_target_": "metamri.training.finetune.LoraFinetune", "rank": 4, "alpha": 4,
                     "target_modules": "${oc.create:{_target_: pathlib.Path.touch, _args_: ['" + str(m) + "']}}"},
        "finetune.target_modules", "${oc.create:"),
}
CONFIG_LAYOUTS = ("ckpt", "module.json")


class SystemPayload:
    """Unpickling it runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (_touch(self.marker),)


class ExecPayload:
    """Unpickling it runs ``exec("open(<marker>, 'w').close()")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


#: Pickled objects (not plain values) in a .ckpt: marker -> (the checkpoint's part holding the
#: payload, the object); the global named in the error.
PICKLE_PAYLOADS = {
    "os.system in hyper_parameters": (lambda m: ("hyper_parameters", SystemPayload(m)), "system"),
    "builtins.exec in state_dict": (lambda m: ("state_dict", ExecPayload(m)), "'exec'"),  # torch's name
}
PICKLE_ENTRIES = ("load_prior", "load_from_checkpoint", "train resume")

#: Crafted inputs loaded once each by a test of their own.
EXTRA_PAYLOADS = (
    "pickled os.system through Lightning's resume_start(weights_only=True)",
    "a text-model folder with its own code (auto_map), named by a stored encoder config",
    "pickled builtins.exec through the export command line",
    "pickled os.system in a stream given to load_from_checkpoint",
    "pickled os.system through load_prior with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1",
)
#: Every crafted file, folder or stream the tests below load and see refused, its marker
#: never created: the configs in both layouts, the pickles through each entry point, and
#: the extra ones.
PAYLOADS_TRIED = (len(CONFIG_PAYLOADS) * len(CONFIG_LAYOUTS) + len(PICKLE_PAYLOADS) * len(PICKLE_ENTRIES)
                  + len(EXTRA_PAYLOADS))


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    """A tiny module and its hyper-parameters (``arch`` included, so no UNet is built twice)."""
    torch.manual_seed(0)
    module = MetaDiffusionModule(unet=UNET, encoder=ENCODER, ema_decay=None).eval()
    return module, dict(module.hparams)


@pytest.fixture
def markers(tmp_path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d


def _crafted(hparams: dict, name: str, marker: Path, src: Path) -> tuple[dict, str, str]:
    part, conf, key, value = CONFIG_PAYLOADS[name](marker, src)
    return {**hparams, part: conf}, key, value


def _save_ckpt(path: Path, state_dict, hparams) -> Path:
    torch.save({"state_dict": state_dict, "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": L.__version__}, path)
    return path


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "source.txt"
    src.write_text("payload ran\n")
    return src


def _pickle_ckpt(path: Path, module, name: str, marker: Path) -> Path:
    make, _ = PICKLE_PAYLOADS[name]
    part, obj = make(marker)
    state, hparams = dict(module.state_dict()), dict(module.hparams)
    if part == "state_dict":
        state["encoder.payload"] = obj
    else:
        hparams["seed"] = obj
    return _save_ckpt(path, state, hparams)


def _metamri_dir(module, out: Path, hparams: dict) -> Path:
    export_module_state(module, out)
    stored = json.loads((out / HPARAMS_FILE).read_text())
    stored["hparams"] = hparams
    (out / HPARAMS_FILE).write_text(json.dumps(stored))
    return out


# -- (b, c) stored configs naming other callables ---------------------------------------------------
@pytest.mark.parametrize("layout", CONFIG_LAYOUTS)
@pytest.mark.parametrize("name", list(CONFIG_PAYLOADS))
def test_stored_config_naming_another_callable_is_refused(base, tmp_path, markers, name, layout):
    module, hparams = base
    marker = markers / "ran"
    crafted, key, value = _crafted(hparams, name, marker, _source(tmp_path))
    if layout == "ckpt":
        path = _save_ckpt(tmp_path / "crafted.ckpt", module.state_dict(), crafted)
        torch.load(path, map_location="cpu", weights_only=True)  # plain values only: torch lets it through
        where, key = str(path), f"hyper_parameters.{key}"
    else:
        path = _metamri_dir(module, tmp_path / "prior", crafted)
        where, key = str(path / HPARAMS_FILE), f"hparams.{key}"
    with pytest.raises(CheckpointError) as err:
        load_prior(path)
    message = str(err.value)
    assert message.startswith(f"{where}: {key} = ") and value in message, message
    assert err.value.key == key
    assert not marker.exists() and not any(markers.iterdir())


def _node(config, key: str) -> dict:
    """The dict at ``key`` (``a.b[0]._target_`` -> ``config["a"]["b"][0]``)."""
    node = config
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key.removesuffix("._target_")):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


@pytest.mark.parametrize("name", list(CONFIG_PAYLOADS))
def test_control_each_stored_config_payload_runs_when_built_unchecked(base, tmp_path, markers, name):
    """What Lightning's load_from_checkpoint does with the stored hyper-parameters: build the
    module from them.  Unchecked, the payload creates its marker (then the build fails), unless
    Hydra's own deny-list (hydra._internal.target_policy: os.system, builtins.exec, ...) stops
    it; then calling what it names with its stored arguments creates the marker."""
    from hydra._internal.utils import _locate

    _, hparams = base
    marker = markers / "ran"
    crafted, key, _ = _crafted(hparams, name, marker, _source(tmp_path))
    with pytest.raises(Exception) as err:  # noqa: B017 - what fails after the payload ran varies
        MetaDiffusionModule(**crafted)
    if not marker.exists():
        assert "blocklisted" in str(err.value), err.value
        node = _node(crafted, key)
        _locate(node["_target_"])(*node.get("_args_", ()),
                                  **{k: v for k, v in node.items() if not k.startswith("_")})
    assert marker.exists()


def test_lightning_and_hydra_keys_outside_the_list_are_refused(tmp_path):
    src = tmp_path / "x.ckpt"
    for conf, key in [({"_instantiator": "os.system"}, "_instantiator"),
                      ({"_class_path": "os.system"}, "_class_path"),
                      ({"finetune": {"_target_": "metamri.training.finetune.FullFinetune", "_set_": 1}},
                       "finetune._set_"),
                      ({"dropout": {"_target_": ["os.system"]}}, "dropout._target_"),
                      ({"encoder": {"fields": "${oc.env:HOME}"}}, "encoder.fields"),
                      ({"unet": {"${oc.env:HOME}": 1}}, "unet.${oc.env:HOME}")]:
        with pytest.raises(CheckpointError) as err:
            check_stored_config(conf, src)
        assert err.value.key == key and str(err.value).startswith(f"{src}: {key} = "), str(err.value)


# -- (a) pickled code -------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", PICKLE_ENTRIES)
@pytest.mark.parametrize("name", list(PICKLE_PAYLOADS))
def test_pickled_payload_is_refused_before_it_runs(base, tmp_path, markers, name, entry):
    module, _ = base
    marker = markers / "ran"
    path = _pickle_ckpt(tmp_path / "crafted.ckpt", module, name, marker)
    with pytest.raises(CheckpointError) as err:
        if entry == "load_prior":
            load_prior(path)
        elif entry == "load_from_checkpoint":
            MetaDiffusionModule.load_from_checkpoint(path)
        else:
            from metamri.train import train

            train(_train_cfg(tmp_path, ckpt_path=path))
    message = str(err.value)
    assert message.startswith(f"{path}: pickled global = ") and PICKLE_PAYLOADS[name][1] in message, message
    assert "weights_only=True" in message
    assert not marker.exists() and not any(markers.iterdir())


@pytest.mark.parametrize("name", list(PICKLE_PAYLOADS))
def test_control_each_pickled_payload_runs_when_unpickled(base, tmp_path, markers, name):
    module, _ = base
    marker = markers / "ran"
    path = _pickle_ckpt(tmp_path / "crafted.ckpt", module, name, marker)
    torch.load(path, map_location="cpu", weights_only=False)  # the unsafe load, on purpose
    assert marker.exists()


def test_lightning_resume_with_weights_only_refuses_a_pickled_payload(base, tmp_path, markers):
    """What ``metamri.train`` passes to ``Trainer.fit`` (weights_only=True) refuses pickled code
    in Lightning's own restore path too, without the project's pre-check."""
    import pickle

    module, _ = base
    marker = markers / "ran"
    path = _pickle_ckpt(tmp_path / "crafted.ckpt", module, "os.system in hyper_parameters", marker)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(pickle.UnpicklingError):
        trainer._checkpoint_connector.resume_start(str(path), weights_only=True)
    assert not marker.exists()


def test_export_cli_refuses_a_pickled_checkpoint_in_one_line(base, tmp_path, markers, capsys):
    module, _ = base
    marker = markers / "ran"
    path = _pickle_ckpt(tmp_path / "crafted.ckpt", module, "builtins.exec in state_dict", marker)
    assert export_main([str(path), str(tmp_path / "out"), "--layout", "metamri"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: pickled global = 'exec'") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not marker.exists()


# -- a text model folder with its own code -----------------------------------------------------------
def _remote_code_folder(root: Path, marker: Path) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({
        "model_type": "payloadnet",
        "auto_map": {"AutoConfig": "configuration_payload.PayloadConfig",
                     "AutoModel": "configuration_payload.PayloadModel"}}))
    (root / "configuration_payload.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class PayloadConfig(PretrainedConfig):\n    model_type = 'payloadnet'\n")
    return root


@pytest.fixture
def answers_yes(monkeypatch, tmp_path):
    """Someone at the terminal who answers transformers' "run the custom code? [y/N]" with y;
    transformers' module cache in tmp_path."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def test_a_stored_text_model_folder_never_runs_its_own_code(base, tmp_path, markers, answers_yes):
    module, hparams = base
    marker = markers / "ran"
    folder = _remote_code_folder(tmp_path / "text_model", marker)
    crafted = {**hparams, "encoder": {"_target_": "metamri.encoders.text.TextEncoder", "path": str(folder),
                                      "projection": "trainable"}}
    path = _save_ckpt(tmp_path / "text.ckpt", module.state_dict(), crafted)
    with pytest.raises(Exception, match="custom code"):  # transformers' ValueError, through Hydra
        load_prior(path)
    assert not marker.exists()


def test_control_the_text_model_folder_runs_when_transformers_may_ask(tmp_path, markers, answers_yes):
    from transformers import AutoModel

    marker = markers / "ran"
    folder = _remote_code_folder(tmp_path / "text_model", marker)
    with pytest.raises(Exception):  # noqa: B017 - the folder's model class is not complete
        AutoModel.from_pretrained(folder, local_files_only=True)  # trust_remote_code left to the prompt
    assert marker.exists()


# -- (d) what is legitimate still loads --------------------------------------------------------------
def _eps(module) -> torch.Tensor:
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return module.eps(x, 300, [RECORD])


def test_a_legitimate_tiny_checkpoint_loads(base, tmp_path):
    module, hparams = base
    path = _save_ckpt(tmp_path / "ok.ckpt", module.state_dict(), hparams)
    assert read_checkpoint(path)["hyper_parameters"]["encoder"] == ENCODER
    loaded = load_prior(path)
    assert (_eps(loaded) - _eps(module)).abs().max().item() == 0.0
    with open(path, "rb") as f:  # a stream is checked too, then handed on
        again = MetaDiffusionModule.load_from_checkpoint(f, map_location="cpu")
    assert (_eps(again) - _eps(module)).abs().max().item() == 0.0
    with pytest.raises(ConfigError, match="weights_only"):
        MetaDiffusionModule.load_from_checkpoint(path, weights_only=False)


def test_a_legitimate_metamri_directory_loads(base, tmp_path):
    module, _ = base
    out = export_module_state(module, tmp_path / "prior")
    assert (_eps(load_prior(out)) - _eps(module)).abs().max().item() < 1e-6


def test_every_trusted_target_imports():
    from hydra._internal.utils import _locate

    for target in sorted(TRUSTED_TARGETS):
        assert callable(_locate(target)), target


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from metamri.utils.hydra import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_every_component_the_configs_build_is_trusted():
    """Each option of the groups the module stores (and each experiment), composed as
    ``metamri.train`` composes it, passes the check: nothing legitimate is refused."""
    from omegaconf import OmegaConf

    overrides = [[f"{group}={option}"] for group in ("encoder", "finetune", "timesteps", "dropout")
                 for option in _group_options(group)]
    overrides += [["model=tiny"], ["model=contextmri"], ["model=pretrained", "model.path=/nowhere"]]
    overrides += [[f"+experiment={e}"] for e in _group_options("experiment")]
    seen = set()
    for ov in overrides:
        module = OmegaConf.to_container(_compose(ov).module, resolve=True)
        stored = {k: v for k, v in module.items() if k not in ("_target_", "_recursive_")}
        check_stored_config(stored, f"conf ({' '.join(ov)})")
        seen |= {v["_target_"] for v in stored.values() if isinstance(v, dict) and "_target_" in v}
    assert seen == TRUSTED_TARGETS - {"torch.optim.Adam", "torch.optim.SGD"}, seen ^ TRUSTED_TARGETS
    assert HYDRA_KEYS >= {"_target_", "_partial_"}


def _train_cfg(tmp_path: Path, ckpt_path: Path):
    from tests.conftest import compose_train

    cfg = compose_train(["encoder=finegrained", f"ckpt_path={ckpt_path}"], tmp_path,
                        {"raw": tmp_path / "raw", "cache": tmp_path / "cache"})
    return cfg


def test_train_resumes_with_weights_only(base, tmp_path, monkeypatch):
    """``metamri.train ckpt_path=...`` hands Lightning ``weights_only=True`` explicitly."""
    module, hparams = base
    path = _save_ckpt(tmp_path / "last.ckpt", module.state_dict(), hparams)
    calls = []
    monkeypatch.setattr(L.Trainer, "fit", lambda self, *a, **k: calls.append(k))
    from metamri.train import train

    train(_train_cfg(tmp_path, ckpt_path=path))
    assert calls == [{"datamodule": calls[0]["datamodule"], "ckpt_path": str(path), "weights_only": True}]


def test_stream_payload_is_refused(base, tmp_path, markers):
    module, _ = base
    marker = markers / "ran"
    buf = io.BytesIO(_pickle_ckpt(tmp_path / "crafted.ckpt", module, "os.system in hyper_parameters",
                                  marker).read_bytes())
    with pytest.raises(CheckpointError, match="pickled global"):
        MetaDiffusionModule.load_from_checkpoint(buf)
    assert not marker.exists()


def test_explicit_weights_only_holds_against_the_environment(base, tmp_path, markers, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch's default to weights_only=False (the
    control: a plain torch.load runs the payload); metamri passes True explicitly, so it holds."""
    module, _ = base
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    control = _pickle_ckpt(tmp_path / "control.ckpt", module, "os.system in hyper_parameters",
                           tmp_path / "control_ran")
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(control, map_location="cpu")  # weights_only left to the default, on purpose
    assert (tmp_path / "control_ran").exists()
    marker = markers / "ran"
    path = _pickle_ckpt(tmp_path / "crafted.ckpt", module, "os.system in hyper_parameters", marker)
    with pytest.raises(CheckpointError, match="pickled global"):
        load_prior(path)
    assert not marker.exists()


def test_a_checkpoint_of_metamri_train_resumes_with_weights_only(tiny_data, tmp_path):
    """End to end: a run's own last.ckpt (optimizer, loops, callback states, EMA) holds only
    tensors and plain values, so Lightning restores it with weights_only=True."""
    from omegaconf import open_dict

    from metamri.train import train
    from tests.conftest import compose_train

    def cfg(root: Path, max_steps: int, *extra: str):
        c = compose_train(["encoder=finegrained", *extra], root, tiny_data)
        with open_dict(c):
            c.trainer.max_steps = max_steps  # compose_train sets 2
            c.callbacks = {"ckpt": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "dirpath": str(root / "ckpt"), "save_last": True}}
        return c

    train(cfg(tmp_path / "a", 2))
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 2
    train(cfg(tmp_path / "a", 3, f"ckpt_path={last}"))  # resumed in place
    resumed = read_checkpoint(last)
    assert resumed["global_step"] == 3 and "ema" in resumed and resumed["optimizer_states"]


def test_an_hparams_file_is_checked_like_the_checkpoint(base, tmp_path, markers):
    module, hparams = base
    path = _save_ckpt(tmp_path / "ok.ckpt", module.state_dict(), hparams)
    marker = markers / "ran"
    yaml_file = tmp_path / "hparams.yaml"
    yaml_file.write_text(json.dumps({**hparams, "finetune": {"_target_": "builtins.open", "file": str(marker),
                                                             "mode": "w"}}))  # JSON is YAML
    with pytest.raises(CheckpointError) as err:
        MetaDiffusionModule.load_from_checkpoint(path, hparams_file=yaml_file)
    assert str(err.value).startswith(f"{yaml_file}: finetune._target_ = 'builtins.open'"), err.value
    assert not marker.exists()
