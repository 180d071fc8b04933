"""The DDPM forward-noising schedule (T = 1000 steps, linear betas, epsilon prediction).

``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``abar_t = prod_{s<=t} (1 - beta_s)``;
``DDPMScheduler.add_noise`` implements it.  A pretrained checkpoint's own
``scheduler/`` folder replaces the default (ContextMRI ships one).
"""

from __future__ import annotations

from os import PathLike

from diffusers import DDPMScheduler

from metamri.errors import ConfigError


def build_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    pretrained: str | PathLike[str] | None = None,
) -> DDPMScheduler:
    """The training noise schedule.

    Args:
        num_train_timesteps: T; timesteps are integers in [0, T).
        beta_schedule: ``"linear"`` (DDPM) or any diffusers schedule name.
        beta_start / beta_end: The linear schedule's end points.
        pretrained: A diffusers directory with ``scheduler/`` (or the folder itself);
            when given, every other argument is ignored.
    """
    if pretrained is not None:
        return load_scheduler(pretrained)
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        beta_schedule=beta_schedule,
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        prediction_type="epsilon",
        clip_sample=False,
    )


def load_scheduler(path: str | PathLike[str]) -> DDPMScheduler:
    """Read ``path/scheduler`` (or ``path`` itself) from disk and check it predicts epsilon."""
    from metamri.models.unet import _subfolder

    sched = DDPMScheduler.from_pretrained(_subfolder(path, "scheduler"), local_files_only=True)
    if sched.config.prediction_type != "epsilon":
        raise ConfigError("model.scheduler.pretrained", str(path),
                          f"prediction_type is {sched.config.prediction_type!r}; "
                          "metamri trains and samples epsilon-prediction models")
    return sched
