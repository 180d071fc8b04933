"""The study's plan (experiments/study/run.py): every command composes with Hydra, the
arms differ from each other only by their own overrides, and every evaluation reads the
exported prior of its arm. Nothing is run: a typo in one of the ~60 commands fails here,
not an hour into a session."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import REPO

CONF = str(REPO / "conf")


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_run", REPO / "experiments" / "study" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study_run"] = module
    spec.loader.exec_module(module)
    return module


def _overrides(args: list[str]) -> list[str]:
    """The Hydra overrides of a command line: no ``-m``, no hydra.* keys, a sweep's first value."""
    out = []
    for a in args:
        if a == "-m" or a.startswith("hydra."):
            continue
        key, _, value = a.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if "=" in a else a)
    return out


def test_every_command_composes(study):
    config_of = {"train": "train", "eval": "evaluate", "information": "information"}
    stages = study.plan()
    kinds = {s.kind for s in stages}
    assert kinds == {"train", "export", "eval", "information"}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for stage in stages:
            if stage.kind == "export":
                continue
            cfg = compose(config_of[stage.kind], overrides=_overrides(stage.args))
            if stage.kind == "eval":
                # the sampler variants are chosen on the validation split; every other eval is on test
                split = "val" if stage.name.startswith("eval/x4val/") else "test"
                assert cfg.split == split and cfg.batch_size == 16, stage.name
            if stage.kind == "train":
                assert cfg.trainer.max_steps == study.STEPS and cfg.seed == 0, stage.name


def test_arms_share_one_budget_and_evaluate_their_exports(study):
    stages = {s.name: s for s in study.plan()}
    for arm in study.ARMS:
        train = stages[f"train/{arm}"].args
        assert all(c in train for c in study.COMMON_TRAIN), arm
        export = stages[f"export/{arm}"].args
        assert export[0] == f"logs/study/train/{arm}/checkpoints/last.ckpt"
        assert export[1] == f"experiments/study/priors/{arm}" and "float16" in export
    for name, stage in stages.items():
        if stage.kind == "eval" and not name.endswith("baselines"):
            prior = next(a for a in stage.args if a.startswith("prior="))[len("prior="):]
            assert prior == "pretrained/phantom_contextmri" or prior.startswith("experiments/study/priors/"), name
    # every run the report's manifest reads is one the plan writes
    import yaml

    manifest = yaml.safe_load((REPO / "experiments" / "study" / "tables.yaml").read_text())
    planned = {str(p.parent.parent.relative_to(study.EVAL_ROOT))
               for s in stages.values() if s.kind == "eval" for p in s.done_when}
    wanted = {row["run"] for table in manifest["tables"] for row in table["rows"]}
    assert wanted <= planned, sorted(wanted - planned)


def test_robustness_stages_come_last_with_the_ood_additive_settings(study):
    stages = [s for s in study.plan() if s.kind == "eval"]
    names = [s.name for s in stages]
    robust = [f"eval/x4/robust_{n}" for n in ("missing50", "scale10", "scale30", "wrong_contrast",
                                               "wrong_sequence", "shuffle")]
    assert names[-len(robust):] == robust  # after every existing stage
    reference = next(s for s in stages if s.name == "eval/x4/ood_additive")
    corrupt = {"missing50": ("missing_rate", 0.5), "scale10": ("numeric_scale", 0.1),
               "scale30": ("numeric_scale", 0.3), "wrong_contrast": ("wrong_fields", ["contrast"]),
               "wrong_sequence": ("wrong_fields", ["sequence"]), "shuffle": ("shuffle", True)}
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        ref = compose("evaluate", overrides=_overrides(reference.args))
        for stage in stages[-len(robust):]:
            cfg = compose("evaluate", overrides=_overrides(stage.args))
            key, value = corrupt[stage.name.rsplit("robust_", 1)[1]]
            assert cfg.corrupt[key] == value, stage.name
            cfg.corrupt = ref.corrupt  # otherwise exactly x4/ood_additive's evaluation
            for k in cfg:
                if k not in ("wandb", "paths", "hydra"):
                    assert cfg[k] == ref[k], (stage.name, k)


def test_code_option_imports_metamri_from_the_frozen_tree(study, tmp_path):
    """``--code DIR``: the stage's Python imports DIR's metamri, not this checkout's (the
    current directory) nor the editable install."""
    import subprocess

    fake = tmp_path / "frozen" / "metamri"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHERE = 'frozen'\n")
    probe = [sys.executable, "-c", "import metamri; print(getattr(metamri, 'WHERE', metamri.__file__))"]
    cmd, env = study.frozen(probe, {"PATH": "/usr/bin:/bin"}, str(tmp_path / "frozen"))
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "frozen"
    # without -P, Python puts the current directory (this checkout) first for -c and -m,
    # so PYTHONPATH alone does not isolate a stage
    plain = subprocess.run(probe, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert plain.strip() == str(REPO / "metamri" / "__init__.py")
    assert study.frozen(probe, {}, None) == (probe, {})
    with pytest.raises(SystemExit, match="no metamri package"):
        study.frozen(probe, {}, str(tmp_path))
