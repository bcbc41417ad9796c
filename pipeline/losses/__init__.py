"""Losses: the relaxed contrastive loss, every transfer baseline the paper compares with, and the
teacher losses. Each declares its contract on its class (`pipeline.losses.contract.Loss`); the registry
builds any of them by name. Import a class from its own module (`pipeline.losses.rkd.RKDLoss`).

The registry's functions are reachable here (`losses.build`) without importing torch until one is
called: validating params.yaml only needs the names.
"""
from typing import Any

__all__ = ["build", "build_with", "loss_class", "names", "register"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.losses import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'pipeline.losses' has no attribute {name!r}")
