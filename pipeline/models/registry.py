"""Every backbone by the name params.yaml uses. Implementations are imported when one is built, so
validating a config imports none of them (torchvision only for the torchvision ResNets)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

_CIFAR_LAYOUTS = {"cifar_resnet18": ("basic", (2, 2, 2, 2)), "cifar_resnet34": ("basic", (3, 4, 6, 3)),
                  "cifar_resnet50": ("bottleneck", (3, 4, 6, 3))}
# The CRD benchmark's classifier backbones (RepDistiller), pipeline.models.repdistiller.
_REPDISTILLER = ("resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2")
BACKBONES = (*_CIFAR_LAYOUTS, "resnet18", "resnet50", "bn_inception", "small_resnet", *_REPDISTILLER)


def build_backbone(name: str, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a backbone by name.

    Names: ``cifar_resnet18|34|50`` (3x3 stride-1 stem, no max-pool; optional ``norm_layer``),
    ``resnet18|50`` (torchvision, ImageNet stem; optional ``weights_path``), ``bn_inception``
    (Cadene's layout; optional ``weights_path``, input options), ``small_resnet`` (one BasicBlock per
    stage; ``widths`` default (32, 64, 128), ``stem_stride`` default 2, optional ``blocks_per_stage``,
    ``norm_layer``), ``resnet8x4|32x4`` and ``wrn_16_2|40_2`` (the CRD benchmark's classifier
    backbones; no options).
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if name in _CIFAR_LAYOUTS or name == "small_resnet":
        from pipeline.models.backbones import CifarResNet
        from pipeline.models.blocks import BasicBlock, Bottleneck

        if name == "small_resnet":
            widths = tuple(kwargs.pop("widths", (32, 64, 128)))
            blocks = tuple(kwargs.pop("blocks_per_stage", (1,) * len(widths)))
            stem_stride = kwargs.pop("stem_stride", 2)
            return CifarResNet(BasicBlock, blocks, widths, in_channels, stem_stride=stem_stride, **kwargs)
        kind, layout = _CIFAR_LAYOUTS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        return CifarResNet(block, layout, (64, 128, 256, 512), in_channels, stem_stride=1, **kwargs)
    if name in ("resnet18", "resnet50"):
        from pipeline.models.backbones import TorchvisionResNet

        return TorchvisionResNet(int(name.removeprefix("resnet")), in_channels, **kwargs)
    if name == "bn_inception":
        from pipeline.models.bn_inception import BNInception

        return BNInception(in_channels, **kwargs)
    if name in _REPDISTILLER:
        from pipeline.models.repdistiller import build_classifier_backbone

        return build_classifier_backbone(name, in_channels, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
