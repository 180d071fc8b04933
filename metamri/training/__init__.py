"""Training: CFG field dropout, per-domain timestep ranges, fine-tune strategies, the LightningModule."""

from metamri.training.dropout import FieldDropout
from metamri.training.finetune import (
    FullFinetune,
    LoraFinetune,
    parameter_counts,
    trainable_parameters,
)
from metamri.training.module import MetaDiffusionModule
from metamri.training.timesteps import TimestepRangeSampler, fraction_to_timestep

__all__ = [
    "FieldDropout", "FullFinetune", "LoraFinetune", "MetaDiffusionModule", "TimestepRangeSampler",
    "fraction_to_timestep", "parameter_counts", "trainable_parameters",
]
