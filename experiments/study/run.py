"""The study: fine-tune the paper's arms from the shipped base prior, then evaluate them
for Tables 1-7 (experiments/README.md says what each table asks).

    python experiments/study/run.py                  # everything not done yet, in order
    python experiments/study/run.py --print          # the exact commands, run nothing
    python experiments/study/run.py --only 'x4/'     # the stages whose name matches a regex
    python experiments/study/run.py --stage train    # only the fine-tuning runs
    python experiments/study/run.py --code /tmp/frozen   # run the metamri (and conf/) of a worktree

``--code DIR`` (e.g. ``git worktree add /tmp/frozen HEAD``) runs every stage with the
package of ``DIR`` (``python -P``, ``PYTHONPATH=DIR``), while outputs still go under this
checkout: a study that runs for hours is not changed by edits made here meanwhile. Without
it, the stages import the metamri of the current directory.

Every stage is resumable and skips what is done: a training run whose exported prior
exists, or whose ``last.ckpt`` has reached its steps, is skipped (one killed midway
resumes from its last checkpoint), an evaluation whose per-slice CSV exists is skipped.
Training runs live under ``logs/study/train/<arm>`` (checkpoints, not committed); each
finished run is exported (``metamri.export --layout metamri --dtype float16``: its EMA
weights, 4.7 MB) to ``experiments/study/priors/<arm>``, committed, and every evaluation
and information run reads that directory, so a later session (or a user) evaluates
without retraining.  Evaluations go under ``experiments/study/eval/<x4|x8|cardiac>/<name>``
(config + per-slice CSV, committed).
``python -m metamri.report`` turns them into the tables (and the robustness table: the
OOD + additive prior at 4x with corrupted metadata, ``x4/robust_*``, run last).  The per-timestep information
curves (``metamri.information``) go to ``experiments/study/information/<arm>.csv``.

Fixed before any result was seen, the same for every arm: 1000 steps, batch 8, AdamW
lr 1e-4 (constant), EMA 0.999, seed 0, from ``pretrained/phantom_contextmri``.
Evaluation: the test split's central slice of every volume (57 brain slices from 19
patients; cardiac: the central 4 slice-frames of each cine volume), DDS 100 steps, CFG 1
unless the table varies it, one sample unless the table varies it; 16 slices per sampler
batch (``batch_size=16``: the same reconstructions as one by one up to float rounding).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PY = os.environ.get("PY", sys.executable)
BASE = "pretrained/phantom_contextmri"
TRAIN_ROOT = Path("logs/study/train")
PRIOR_ROOT = Path("experiments/study/priors")
EVAL_ROOT = Path("experiments/study/eval")
STEPS = 1000

#: Every arm fine-tunes the base prior with these settings (nothing else differs but the arm's own).
COMMON_TRAIN = [
    "model=pretrained", f"model.path={BASE}", f"trainer.max_steps={STEPS}", "optimizer.lr=1e-4",
    "data.batch_size=8", "seed=0", "~callbacks.reconstruction", "trainer.val_check_interval=250",
    "trainer.check_val_every_n_epoch=null", "data.val_max_items=64",
]

#: arm -> its own overrides, in the order they train (the information plot's arms first). Brain-only arms on the study population's brain split; the OOD
#: arms on the 1:5 cardiac mix; ``text_mixed`` is Table 7's baseline (the text model
#: fine-tuned on that same mix, all timesteps).
ARMS: dict[str, list[str]] = {
    "text": ["+experiment=contextmri", "data=study"],
    "additive": ["+experiment=additive", "data=study"],
    "unconditional": ["+experiment=unconditional", "data=study"],
    "ood_additive": ["+experiment=ood_additive", "data=study_mixed"],
    "ood_low_noise": ["+experiment=ood_low_noise", "data=study_mixed"],
    "concat": ["+experiment=concat", "data=study", "encoder.gate_init=1"],  # the paper's plain concatenation
    "lora": ["+experiment=lora", "data=study"],
    "text_mixed": ["+experiment=contextmri", "data=study_mixed", "wandb_group=text_mixed",
                   "tags=[contextmri,text,ood]"],
    # beyond the paper (issue 11): the additive arm with a learned numeric encoding (an MLP of
    # the normalised value) in place of the sinusoidal one; everything else as ``additive``
    "additive_learned": ["+experiment=additive", "data=study", "encoder.finegrained.numeric_encoding=learned",
                         "tags=[additive,finegrained,learned_numeric]"],
}
#: Arms outside the paper's Table 1 (their own tables; evaluated at 4x and 8x like the others).
EXTRA_ARMS = ("text_mixed", "additive_learned")

#: Evaluation settings common to every run of a domain (the split is each stage's: test, but for
#: the frontier's choice of a sampler variant, made on val).
COMMON_EVAL = ["lpips=true", "batch_size=16"]
BRAIN_EVAL = ["data=study", "domain=brain", "items_per_volume=1"]
CARDIAC_EVAL = ["data=study_mixed", "domain=cardiac", "items_per_volume=4"]
#: 8x at 64 px: the paper's centre fraction (0.08: 5 lines) without the 8-line floor,
#: which would leave no line to draw at random (8x = 8 lines).
ACCEL = {"x4": ["mask.acceleration=4"], "x8": ["mask.acceleration=8", "mask.min_center_lines=0"]}
#: The speed-quality frontier's step counts below the paper's 100.
FEW_STEPS = (10, 20, 25, 50)
#: Lighter sampler variants at 25 steps (issue 13), declared before any of them ran: each
#: changes one DDS setting of conf/sampler/dds.yaml. They are compared on the VALIDATION split
#: against 100 steps there (``x4val/...``), so that the one carried to the test split is not
#: chosen on the test slices.
VARIANT_STEPS = 25
SAMPLER_VARIANTS: dict[str, list[str]] = {
    "trailing": ["sampler.timestep_spacing=trailing"],  # start at t = 999, end at 39 (not 960 .. 0)
    "eta0.5": ["sampler.eta=0.5"],                      # less fresh noise per step
    "eta1.0": ["sampler.eta=1.0"],                      # more
    "cg10": ["sampler.cg_iters=10"],                    # twice the CG iterations per step
}
FIELDS = ("anatomy", "contrast", "sequence", "slice", "tr", "te", "ti", "flip_angle")
#: Robustness to bad headers (the ``robustness`` table): name -> the metadata corruption
#: (conf/reconstruction/default.yaml ``corrupt``; drawn per volume, seed 0).
ROBUSTNESS: dict[str, list[str]] = {
    "missing50": ["corrupt.missing_rate=0.5"],
    "scale10": ["corrupt.numeric_scale=0.1"],
    "scale30": ["corrupt.numeric_scale=0.3"],
    "wrong_contrast": ["corrupt.wrong_fields=[contrast]"],
    "wrong_sequence": ["corrupt.wrong_fields=[sequence]"],
    "shuffle": ["corrupt.shuffle=true"],
}


def prior_of(arm: str) -> str:
    """The prior an arm is evaluated with: the shipped base, or the arm's exported EMA weights."""
    return BASE if arm == "base" else str(PRIOR_ROOT / arm)


@dataclass
class Stage:
    """One command and the file whose existence says it is done."""

    name: str
    kind: str  # train | export | eval | information
    args: list[str]
    done_when: list[Path] = field(default_factory=list)
    steps: int | None = None  # train: the global step last.ckpt must have reached

    def command(self) -> list[str]:
        module = {"train": "metamri.train", "export": "metamri.export", "eval": "metamri.evaluate",
                  "information": "metamri.information"}[self.kind]
        return [PY, "-m", module, *self.args]

    def prior(self) -> str | None:
        """The prior an evaluation or information run reads (``None`` for other stages)."""
        return next((a[len("prior="):] for a in self.args if a.startswith("prior=")), None)

    def is_done(self) -> bool:
        if self.kind == "train":
            exported = Path(prior_of(self.name.split("/", 1)[1])) / "export.json"
            return exported.is_file() or checkpoint_step(self.done_when[0]) >= (self.steps or 0)
        return all(p.is_file() for p in self.done_when)


def checkpoint_step(path: Path) -> int:
    if not path.is_file():
        return -1
    import torch

    return int(torch.load(str(path), map_location="cpu", weights_only=True).get("global_step", -1))


def train_stage(arm: str) -> Stage:
    run = TRAIN_ROOT / arm
    last = run / "checkpoints" / "last.ckpt"
    args = [*ARMS[arm], *COMMON_TRAIN, f"hydra.run.dir={run}",
            f"callbacks.model_checkpoint.dirpath={run / 'checkpoints'}", f"wandb_group=study_{arm}"]
    if arm == "text_mixed":  # its own group name is part of the arm
        args = [a for a in args if a != f"wandb_group=study_{arm}"]
    return Stage(f"train/{arm}", "train", args, [last], steps=STEPS)


def export_stage(arm: str) -> Stage:
    """The finished run's EMA weights as a committed prior directory (float16 storage)."""
    out = PRIOR_ROOT / arm
    args = [str(TRAIN_ROOT / arm / "checkpoints" / "last.ckpt"), str(out), "--layout", "metamri",
            "--dtype", "float16"]
    return Stage(f"export/{arm}", "export", args, [out / "export.json"])


def eval_stage(name: str, arm: str, extra: list[str], domain_args: list[str] = BRAIN_EVAL,
               split: str = "test") -> Stage:
    run = EVAL_ROOT / name
    args = [f"prior={prior_of(arm)}", f"split={split}", *COMMON_EVAL, *domain_args, *extra,
            f"hydra.run.dir={run}", f"wandb.name={name}"]
    return Stage(f"eval/{name}", "eval", args, [run / "reconstruction" / f"{split}_metrics.csv"])


def sweep_stage(name: str, arm: str, key: str, values: list[str], extra: list[str], prefix: str = "s") -> Stage:
    """A Hydra multirun over ``key`` (one W&B run per value, in one group); value v's run
    goes to ``<name>/<prefix><v>``."""
    sweep = EVAL_ROOT / name
    sub = prefix + "${" + key + "}"
    args = ["-m", f"prior={prior_of(arm)}", "split=test", *COMMON_EVAL, *BRAIN_EVAL, *extra,
            f"{key}={','.join(values)}", f"hydra.sweep.dir={sweep}",
            f"hydra.sweep.subdir={sub}", f"wandb.name={name}/{sub}"]
    done = [sweep / f"{prefix}{v}" / "reconstruction" / "test_metrics.csv" for v in values]
    return Stage(f"eval/{name}", "eval", args, done)


def information_stage(arm: str) -> Stage:
    """Validation denoising loss per timestep with true, dropped and shuffled metadata."""
    out = Path("experiments/study/information") / f"{arm}.csv"
    data = "data=study_mixed" if arm.startswith("ood") else "data=study"
    args = [f"prior={prior_of(arm)}", data, "split=val", "domain=brain", f"out={out}",
            f"hydra.run.dir=logs/study/information/{arm}"]
    return Stage(f"information/{arm}", "information", args, [out])


def plan() -> list[Stage]:
    stages = [stage for arm in ARMS for stage in (train_stage(arm), export_stage(arm))]
    stages += [information_stage(arm) for arm in ("base", "text", "additive", "ood_additive", "unconditional")]
    diffusion_only = ["methods=[diffusion]"]
    for acc, acc_args in ACCEL.items():
        # Table 1 (and 5: ood_additive vs ood_low_noise): every prior, CFG 1, one sample
        stages.append(eval_stage(f"{acc}/baselines", "base", [*acc_args, "methods=[zero_filled,cs]"]))
        for arm in ("base", *[a for a in ARMS if a not in EXTRA_ARMS]):
            stages.append(eval_stage(f"{acc}/{arm}", arm, [*acc_args, *diffusion_only]))
    x4 = [*ACCEL["x4"], *diffusion_only]
    # Table 2: CFG sweep of OOD + additive (1 is x4/ood_additive)
    stages.append(sweep_stage("x4/cfg", "ood_additive", "guidance_scale", ["0", "2", "3", "5"], x4))
    # Tables 3 and 4: drop one field / keep one field
    for f in FIELDS:
        stages.append(eval_stage(f"x4/drop_{f}", "ood_additive", [*x4, f"drop_fields=[{f}]"]))
    for f in FIELDS:
        stages.append(eval_stage(f"x4/keep_{f}", "ood_additive", [*x4, f"keep_fields=[{f}]"]))
    # Table 6: ensemble of 5 samples (their complex mean)
    stages.append(eval_stage("x4/ood_additive_k5", "ood_additive", [*x4, "ensemble=5"]))
    # Table 7: the cardiac test split, OOD + additive vs the text model fine-tuned on the same mix
    card = [*ACCEL["x4"]]
    stages.append(eval_stage("cardiac/baselines", "base", [*card, "methods=[zero_filled,cs]"], CARDIAC_EVAL))
    for arm in ("ood_additive", "text_mixed", "base"):
        stages.append(eval_stage(f"cardiac/{arm}", arm, [*card, *diffusion_only], CARDIAC_EVAL))
    # Speed-quality frontier (issue 13): fewer sampler steps (100 is x4/ood_additive) and K = 2
    # (1 and 5 are x4/ood_additive and x4/ood_additive_k5), the same 57 test slices
    stages.append(sweep_stage("x4/steps", "ood_additive", "sampler.num_steps", [str(n) for n in FEW_STEPS], x4,
                              prefix="n"))
    stages.append(eval_stage("x4/ood_additive_k2", "ood_additive", [*x4, "ensemble=2"]))
    # ... and the lighter variants at 25 steps, on val against val's own 100 and 25 steps
    few = [*x4, f"sampler.num_steps={VARIANT_STEPS}"]
    stages.append(eval_stage("x4val/n100", "ood_additive", x4, split="val"))
    stages.append(eval_stage(f"x4val/n{VARIANT_STEPS}", "ood_additive", few, split="val"))
    for name, overrides in SAMPLER_VARIANTS.items():
        stages.append(eval_stage(f"x4val/n{VARIANT_STEPS}_{name}", "ood_additive", [*few, *overrides], split="val"))
    # Learned vs sinusoidal numeric encoding (issue 11): additive_learned against additive
    for acc, acc_args in ACCEL.items():
        stages.append(eval_stage(f"{acc}/additive_learned", "additive_learned", [*acc_args, *diffusion_only]))
    # Robustness: OOD + additive at 4x (as x4/ood_additive) with corrupted metadata; last, so the
    # paper's tables come first
    for name, corrupt in ROBUSTNESS.items():
        stages.append(eval_stage(f"x4/robust_{name}", "ood_additive", [*x4, *corrupt]))
    return stages


def record_training(arm: str) -> None:
    """Write ``<prior>/training.json`` (the arm's command, its validation-loss curve) and the
    priors' model card ``experiments/study/priors/README.md`` from every exported arm."""
    import json

    curve: list[list[float]] = []
    metrics = TRAIN_ROOT / arm / "csv" / "metrics.csv"
    if metrics.is_file():
        import pandas as pd

        m = pd.read_csv(metrics)
        if "val/loss" in m:
            val = m.dropna(subset=["val/loss"]).drop_duplicates("step", keep="last").sort_values("step")
            curve = [[int(a), round(float(b), 5)] for a, b in zip(val["step"], val["val/loss"], strict=True)]
    info = {"arm": arm, "command": "python " + " ".join(_quote(c) for c in train_stage(arm).command()[1:]),
            "steps": STEPS, "val_loss": curve,
            "val_loss_note": "val/loss of the run's CSV log (logs/study/train/<arm>/csv/metrics.csv): "
                             "EMA weights, fixed noise, the first 64 validation items"}
    (PRIOR_ROOT / arm / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    rows = []
    for d in sorted(PRIOR_ROOT.glob("*/training.json")):
        t, e = json.loads(d.read_text()), json.loads((d.parent / "export.json").read_text())
        last = f"{t['val_loss'][-1][1]:.4f} (step {t['val_loss'][-1][0] + 1})" if t["val_loss"] else "n/a"
        rows.append(f"| `{t['arm']}` | {e['global_step']} | {last} | {e['parameters'] / 1e6:.2f} M | "
                    f"`{e['sha256'][:12]}` |")
    card = f"""# The study's fine-tuned priors

Each directory is one arm of the study (experiments/README.md), fine-tuned from
`pretrained/phantom_contextmri` with the same budget ({STEPS} steps, batch 8, AdamW lr 1e-4,
EMA 0.999, seed 0) and exported with `python -m metamri.export last.ckpt DIR --layout metamri
--dtype float16`: its EMA weights (rounded to float16 for storage, float32 on load) and the
hyper-parameters that rebuild it. `prior=experiments/study/priors/<arm>` evaluates it; the
text encoder of every arm is read from `pretrained/phantom_contextmri` (run from the repository
root). Each `training.json` holds the exact training command and its validation-loss curve.
Made by `python experiments/study/run.py --only '^(train|export)/'` (from the shipped base prior
and `python -m metamri.phantom preset=study`).

| arm | steps | val/loss at the end | parameters | SHA-256 of module.safetensors |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    (PRIOR_ROOT / "README.md").write_text(card)


def frozen(cmd: list[str], env: dict[str, str], code: str | None) -> tuple[list[str], dict[str, str]]:
    """``cmd`` and ``env`` made to import metamri from ``code`` (``None``: unchanged).

    ``-P`` keeps Python from putting the current directory (this checkout) first on
    ``sys.path``, so ``PYTHONPATH=code`` wins over both it and an editable install.
    """
    if code is None:
        return cmd, env
    root = Path(code).resolve()
    if not (root / "metamri" / "__init__.py").is_file():
        sys.exit(f"--code {code}: no metamri package there (expected {root / 'metamri' / '__init__.py'})")
    return [cmd[0], "-P", *cmd[1:]], {**env, "PYTHONPATH": str(root)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--print", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--only", default=None, help="regex on stage names (train/<arm>, eval/<acc>/<name>)")
    ap.add_argument("--stage", choices=["train", "export", "information", "eval"], default=None)
    ap.add_argument("--code", default=None, metavar="DIR",
                    help="import metamri from DIR (a worktree of a fixed commit); outputs stay here")
    args = ap.parse_args(argv)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    failed, waiting = [], []
    for stage in plan():
        if args.stage and stage.kind != args.stage:
            continue
        if args.only and not re.search(args.only, stage.name):
            continue
        cmd = stage.command()
        if args.print:
            print("python", " ".join(_quote(c) for c in cmd[1:]))
            continue
        if stage.is_done():
            print(f"== {stage.name}: done", flush=True)
            continue
        prior = stage.prior()
        if prior is not None and not Path(prior).exists():
            print(f"== {stage.name}: waits for its prior {prior} (train and export it first)", flush=True)
            waiting.append(stage.name)
            continue
        if stage.kind == "train":
            last = stage.done_when[0]
            if last.is_file():
                cmd.append(f"ckpt_path={last}")
        print(f"== {stage.name}: {' '.join(cmd[1:])}", flush=True)
        run_cmd, run_env = frozen(cmd, env, args.code)
        if subprocess.run(run_cmd, env=run_env).returncode != 0:
            print(f"!! {stage.name} failed", flush=True)
            failed.append(stage.name)
        elif stage.kind == "export":
            record_training(stage.name.split("/", 1)[1])
    if waiting:
        print("waiting for a prior:", *waiting, sep="\n  ")
    if failed:
        print("failed:", *failed, sep="\n  ")
    return 1 if failed else 0


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in "[]${}~,") else arg


if __name__ == "__main__":
    sys.exit(main())
