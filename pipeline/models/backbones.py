"""Backbones: CIFAR-stem ResNets, small CPU ResNets, torchvision ResNets with the ImageNet stem.

Every backbone returns its last feature map from ``forward`` and the output of every stage from
``forward_stages`` (FitNet / Attention transfer need those), and exposes ``num_features`` (channels of
the last map) and ``stage_channels``. The residual blocks are laid out as torchvision's
(``pipeline.models.blocks``); the stems and the stage layout are written here, because torchvision's
ResNet fixes four stages of widths 64..512. Names are resolved in ``pipeline.models.registry``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.models.blocks import BasicBlock, Bottleneck, NormLayer


class _StagedBackbone(nn.Module):
    """Runs ``stem`` then ``stages``; subclasses build those two and set the channel attributes."""

    stem: nn.Module
    stages: nn.ModuleList
    stage_channels: tuple[int, ...]
    num_features: int

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]


class CifarResNet(_StagedBackbone):
    """ResNet with a 3x3 stem conv, no max-pool, and any number of stages of any width.

    ``stem_stride=1`` gives the CIFAR ResNets of the SSL literature; ``stem_stride=2`` with one block per
    stage gives the small CPU nets of the default profile (4.8x cheaper than full resolution at 28x28).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        in_channels: int = 3,
        stem_stride: int = 1,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != len(widths) or not widths:
            raise ValueError(
                f"blocks_per_stage {tuple(blocks_per_stage)} and widths {tuple(widths)} must be non-empty "
                "and of equal length"
            )
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            norm_layer(widths[0]),
            nn.ReLU(inplace=True),
        )
        self._inplanes = widths[0]
        self.stages = nn.ModuleList(
            self._make_stage(block, width, count, stride=1 if i == 0 else 2)
            for i, (width, count) in enumerate(zip(widths, blocks_per_stage))
        )
        self.stage_channels = tuple(w * block.expansion for w in widths)
        self.num_features = self.stage_channels[-1]
        _init_like_torchvision(self)

    def _make_stage(self, block, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                self._norm_layer(planes * block.expansion),
            )
        layers = [block(self._inplanes, planes, stride, downsample, norm_layer=self._norm_layer)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, norm_layer=self._norm_layer) for _ in range(1, count)]
        return nn.Sequential(*layers)


class TorchvisionResNet(_StagedBackbone):
    """torchvision ResNet-18/50 with the ImageNet stem (7x7 stride-2 conv + max-pool), fc removed.

    ``weights_path`` loads a local state dict (``weights_only=True``); nothing is downloaded. With
    ``in_channels != 3`` the stem conv is rebuilt, and pretrained stem weights are summed over the RGB
    channels and spread over the new ones so grey-level inputs see the same filters.
    """

    def __init__(self, depth: int, in_channels: int = 3, weights_path: str | Path | None = None) -> None:
        super().__init__()
        import torchvision  # deferred: 1.6 s of imports that only these backbones need

        constructors = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}
        if depth not in constructors:
            raise ValueError(f"depth must be one of {sorted(constructors)}, got {depth}")
        net = constructors[depth](weights=None)
        if weights_path is not None:
            state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            net.load_state_dict(state, strict=False)
        if in_channels != 3:
            rgb = net.conv1.weight.detach()
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            if weights_path is not None:
                with torch.no_grad():
                    net.conv1.weight.copy_(rgb.sum(1, keepdim=True).expand(-1, in_channels, -1, -1) / in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        expansion = 1 if depth == 18 else 4
        self.stage_channels = tuple(w * expansion for w in (64, 128, 256, 512))
        self.num_features = self.stage_channels[-1]


def _init_like_torchvision(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
