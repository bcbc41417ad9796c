"""Training: one loop (``fit``) and one objective per recipe."""

from pipeline.train.config import TrainConfig
from pipeline.train.loop import FitResult, fit
from pipeline.train.objectives import (
    MoCoObjective,
    Objective,
    ProxyAnchorObjective,
    SimCLRObjective,
    TransferObjective,
)
from pipeline.train.runtime import NonFiniteLossError, TrainingInterrupted

__all__ = [
    "FitResult",
    "MoCoObjective",
    "NonFiniteLossError",
    "Objective",
    "ProxyAnchorObjective",
    "SimCLRObjective",
    "TrainConfig",
    "TrainingInterrupted",
    "TransferObjective",
    "fit",
]
