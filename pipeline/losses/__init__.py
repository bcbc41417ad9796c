"""Losses: the relaxed contrastive loss, every transfer baseline the paper compares with, and the
teacher losses.  `build(name, **params)` makes any of them by its `NAMES` entry."""

from pipeline.losses.attention import AttentionTransferLoss
from pipeline.losses.contrastive import ContrastiveLoss
from pipeline.losses.crd import CRDLoss
from pipeline.losses.darkrank import HardDarkRankLoss
from pipeline.losses.fitnet import FitNetLoss
from pipeline.losses.hinton_kd import HintonKDLoss
from pipeline.losses.moco import MoCoLoss
from pipeline.losses.ntxent import NTXentLoss
from pipeline.losses.pkt import PKTLoss
from pipeline.losses.proxy_anchor import ProxyAnchorLoss
from pipeline.losses.registry import NAMES, NEEDS_PROXY_ANCHOR, build
from pipeline.losses.relaxed_contrastive import RelaxedContrastiveLoss
from pipeline.losses.rkd import RKDLoss

__all__ = [
    "NAMES",
    "NEEDS_PROXY_ANCHOR",
    "AttentionTransferLoss",
    "CRDLoss",
    "ContrastiveLoss",
    "FitNetLoss",
    "HardDarkRankLoss",
    "HintonKDLoss",
    "MoCoLoss",
    "NTXentLoss",
    "PKTLoss",
    "ProxyAnchorLoss",
    "RKDLoss",
    "RelaxedContrastiveLoss",
    "build",
]
