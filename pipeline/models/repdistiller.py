"""The CIFAR backbones of the CRD distillation benchmark (Tian et al., ICLR 2020; RepDistiller code).

- ``resnet8x4`` / ``resnet32x4``: a 3x3 stem of 32 channels, then three stages of ``n = (depth-2)/6``
  post-activation BasicBlocks of widths 64/128/256 (the first stage already has a 1x1 projection
  shortcut, because its width differs from the stem's). ``CifarResNet`` ties the stem width to the first
  stage's, so this layout is its own class; the blocks are still torchvision's.
- ``wrn_16_2`` / ``wrn_40_2``: Wide-ResNet (Zagoruyko & Komodakis) with ``n = (depth-4)/6``
  pre-activation blocks per stage, widths 16k/32k/64k, dropout 0, and the final BN + ReLU that the
  original applies before pooling (placed at the end of the last stage, so ``forward`` returns the map
  that is pooled). Hand-written: neither torchvision nor timm has the CIFAR pre-activation variant.

All of them follow the backbone interface of ``pipeline.models.backbones`` (``forward``,
``forward_stages``, ``num_features``, ``stage_channels``) and carry no classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from pipeline.models.blocks import BasicBlock

from pipeline.models.backbones import CifarResNet, _init_like_torchvision, _StagedBackbone

RESNET_DEPTHS = {"resnet8x4": 8, "resnet32x4": 32}
WRN_LAYOUTS = {"wrn_16_2": (16, 2), "wrn_40_2": (40, 2)}
CLASSIFIER_BACKBONES = (*RESNET_DEPTHS, *WRN_LAYOUTS)


class RepDistillerResNet(CifarResNet):
    """RepDistiller's CIFAR ResNet: stem of ``widths[0]`` channels, stages of ``widths[1:]``."""

    def __init__(self, depth: int, widths: Sequence[int] = (32, 64, 128, 256), in_channels: int = 3) -> None:
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must give the stem and three stages (4 entries), got {tuple(widths)}")
        nn.Module.__init__(self)  # CifarResNet.__init__ would build a stem as wide as the first stage
        blocks = (depth - 2) // 6
        self._norm_layer = nn.BatchNorm2d
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self._inplanes = widths[0]
        self.stages = nn.ModuleList(
            self._make_stage(BasicBlock, width, blocks, stride=1 if i == 0 else 2)
            for i, width in enumerate(widths[1:])
        )
        self.stage_channels = tuple(widths[1:])
        self.num_features = widths[-1]
        _init_like_torchvision(self)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the identity, or a 1x1
    conv of the *activated* input when the width or resolution changes (as in the original WRN code)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            None
            if in_planes == out_planes and stride == 1
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(_StagedBackbone):
    """WRN-depth-k for 32x32 inputs; ``forward`` returns the final BN-ReLU map of 64k channels."""

    def __init__(self, depth: int, widen_factor: int, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        blocks = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages, in_planes = [], 16
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [
                WideBasicBlock(
                    in_planes if j == 0 else width, width, stride=(1 if i == 0 else 2) if j == 0 else 1
                )
                for j in range(blocks)
            ]
            if i == len(widths) - 1:
                layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
            in_planes = width
        self.stages = nn.ModuleList(stages)
        self.stage_channels = widths
        self.num_features = widths[-1]
        _init_like_torchvision(self)


def build_classifier_backbone(name: str, in_channels: int = 3, **options: object) -> nn.Module:
    """One of ``CLASSIFIER_BACKBONES``; these take no further options (their layouts are the benchmark's)."""
    if options:
        raise ValueError(f"backbone {name!r} takes no options, got {sorted(options)}")
    if name in RESNET_DEPTHS:
        return RepDistillerResNet(RESNET_DEPTHS[name], in_channels=in_channels)
    if name in WRN_LAYOUTS:
        depth, widen_factor = WRN_LAYOUTS[name]
        return WideResNet(depth, widen_factor, in_channels)
    raise ValueError(f"unknown classifier backbone {name!r}; choose one of {CLASSIFIER_BACKBONES}")
