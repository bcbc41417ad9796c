"""A `train` section for loop tests: the schema's own `TrainConfig`, with the optimiser settings flattened
so a test states only what it varies (SGD, lr 0.06, momentum 0.9, weight decay 5e-4 otherwise)."""
from __future__ import annotations

from pipeline.config import OptimizerConfig, TrainConfig


def train_config(*, optimizer: str = "sgd", lr: float = 0.06, momentum: float = 0.9, weight_decay: float = 5e-4,
                 warmup_epochs: float = 0.0, **fields) -> TrainConfig:
    settings = OptimizerConfig(name=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               warmup_epochs=warmup_epochs)
    return TrainConfig(**{"epochs": 1, "batch_size": 64, **fields}, optimizer=settings)
