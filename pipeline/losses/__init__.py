"""Losses: the relaxed contrastive loss, every transfer baseline the paper compares with, and the
teacher losses. Each declares its contract on its class (`pipeline.losses.contract.Loss`); the registry
builds any of them by name. Import a class from its own module (`pipeline.losses.rkd.RKDLoss`)."""

from pipeline.losses.contract import Loss, LossParams
from pipeline.losses.registry import build, build_with, loss_class, names, register

__all__ = ["Loss", "LossParams", "build", "build_with", "loss_class", "names", "register"]
