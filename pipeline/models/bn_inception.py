"""BN-Inception (Ioffe & Szegedy 2015, arXiv 1502.03167), the backbone of the metric-learning papers.

The layout and parameter names follow Cadene's ``pretrainedmodels`` port (``bninception``, a port of
Caffe weights), which the Proxy-Anchor (CVPR 2020) and relaxed-contrastive (Kim et al., CVPR 2021)
code build on, so its ImageNet file ``bn_inception-52deb4733.pth`` and their trained checkpoints load
without renaming. Only the convolutions and batch norms hold state; ReLUs and pools are applied
functionally here (their names carry no weights).

Facts taken from the reference port:
- every convolution has a bias; batch norms use PyTorch's defaults (eps 1e-5, momentum 0.1, Cadene's
  code since Oct. 2018; the Proxy-Anchor / LabelRelaxation copies keep the older ``momentum=0.9``,
  which only matters when BN statistics are updated, never for a frozen teacher);
- stride-2 max pools use ``ceil_mode=True`` (224 -> 112 -> 56 -> 28 -> 14 -> 7);
- the pool branch of each inception block is a 3x3 stride-1 average pool counting the padding, except in
  the reduction blocks 3c and 4e (3x3 stride-2 max pool, no projection) and in 5b (3x3 stride-1 max pool);
- the pretrained weights expect Caffe's input: BGR channel order, range [0, 255], minus the per-channel
  mean (104, 117, 128) in BGR order, no division by a std.

Input convention chosen here: the module takes the pipeline's tensors (RGB in [0, 1] normalised by a
per-channel mean and std, ImageNet's by default, as ``pipeline.data.metric_sets`` produces for every
backbone) and converts them to Caffe's convention itself (``input_space="rgb"``). Teacher and student
therefore consume the same augmented batch whatever their backbones, which the transfer losses need
(both see the same views), and no dataset has to know which backbone reads it. ``input_space="caffe_bgr"``
skips the conversion for inputs already in Caffe's convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)
INPUT_SPACES = ("rgb", "caffe_bgr")

# Inception blocks in order: (name, in channels, 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double 3x3,
# pool projection). A 1x1 of 0 marks the stride-2 reduction blocks (no 1x1 branch, max pool, no
# projection); 5b is the one block whose pool branch is a stride-1 max pool.
_BLOCKS = (
    ("3a", 192, 64, 64, 64, 64, 96, 32),
    ("3b", 256, 64, 64, 96, 64, 96, 64),
    ("3c", 320, 0, 128, 160, 64, 96, 0),
    ("4a", 576, 224, 64, 96, 96, 128, 128),
    ("4b", 576, 192, 96, 128, 96, 128, 128),
    ("4c", 576, 160, 128, 160, 128, 160, 128),
    ("4d", 608, 96, 128, 192, 160, 192, 128),
    ("4e", 608, 0, 128, 192, 192, 256, 0),
    ("5a", 1056, 352, 192, 320, 160, 224, 128),
    ("5b", 1024, 352, 192, 320, 192, 224, 128),
)
# Blocks whose outputs are the stages for FitNet / attention transfer (the relaxed-contrastive code's
# f3, f4, f5).
_STAGE_BLOCKS = ("3c", "4e", "5b")


class BNInception(nn.Module):
    """BN-Inception up to ``inception_5b``: ``forward`` gives the (N, 1024, H/32, W/32) map.

    ``forward_stages`` returns the outputs of inception_3c, 4e and 5b ((576, 1056, 1024) channels at
    H/16, H/32, H/32). Sides that are multiples of 32 work (224, 256, ...); with others the conv and
    pool branches of 3c or 4e can disagree in size (as in Cadene's port: their map must be even there).
    ``weights_path`` loads Cadene's ImageNet state dict (``weights_only=True``;
    ``last_linear`` dropped, the (1, C) batch-norm tensors of that Caffe port reshaped to (C,)), strictly.
    """

    def __init__(
        self,
        in_channels: int = 3,
        weights_path: str | Path | None = None,
        input_space: str = "rgb",
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"bn_inception takes 3-channel images (Caffe BGR weights), got {in_channels}")
        if input_space not in INPUT_SPACES:
            raise ValueError(f"input_space must be one of {INPUT_SPACES}, got {input_space!r}")
        if len(input_mean) != 3 or len(input_std) != 3:
            raise ValueError(f"input_mean/input_std need 3 entries, got {len(input_mean)}/{len(input_std)}")
        self.input_space = input_space
        # Caffe channel c (B, G, R) = 255 * (x[2 - c] * std[2 - c] + mean[2 - c]) - caffe_mean[c].
        mean_bgr = torch.tensor(input_mean, dtype=torch.float32).flip(0)
        std_bgr = torch.tensor(input_std, dtype=torch.float32).flip(0)
        caffe_mean = torch.tensor(CAFFE_BGR_MEAN)
        self.register_buffer("_input_scale", (255 * std_bgr).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_input_shift", (255 * mean_bgr - caffe_mean).view(1, 3, 1, 1), persistent=False)

        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        for name, cin, c1, c3r, c3, cdr, cd, cp in _BLOCKS:
            prefix = f"inception_{name}"
            stride = 2 if c1 == 0 else 1
            if c1:
                self._unit(f"{prefix}_1x1", cin, c1, 1)
            self._unit(f"{prefix}_3x3_reduce", cin, c3r, 1)
            self._unit(f"{prefix}_3x3", c3r, c3, 3, stride=stride)
            self._unit(f"{prefix}_double_3x3_reduce", cin, cdr, 1)
            self._unit(f"{prefix}_double_3x3_1", cdr, cd, 3)
            self._unit(f"{prefix}_double_3x3_2", cd, cd, 3, stride=stride)
            if cp:
                self._unit(f"{prefix}_pool_proj", cin, cp, 1)
        self.stage_channels = tuple(_block_out_channels(b) for b in _BLOCKS if b[0] in _STAGE_BLOCKS)
        self.num_features = self.stage_channels[-1]
        if weights_path is not None:
            self.load_state_dict(_cadene_state_dict(Path(weights_path), self.state_dict()), strict=True)

    def _unit(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))

    def _conv_bn_relu(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)), inplace=True)

    def to_caffe_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB -> Caffe BGR in [0, 255] minus (104, 117, 128); identity for ``caffe_bgr``."""
        if self.input_space == "caffe_bgr":
            return x
        return x.flip(1) * self._input_scale.to(x.dtype) + self._input_shift.to(x.dtype)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._conv_bn_relu("conv1_7x7_s2", self.to_caffe_input(x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        x = self._conv_bn_relu("conv2_3x3", self._conv_bn_relu("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        stages = []
        for block in _BLOCKS:
            x = self._inception(block, x)
            if block[0] in _STAGE_BLOCKS:
                stages.append(x)
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def _inception(self, block: tuple, x: torch.Tensor) -> torch.Tensor:
        name, _, c1, *_rest, cp = block
        prefix = f"inception_{name}"
        unit = self._conv_bn_relu
        branches = [] if c1 == 0 else [unit(f"{prefix}_1x1", x)]
        branches.append(unit(f"{prefix}_3x3", unit(f"{prefix}_3x3_reduce", x)))
        double = unit(f"{prefix}_double_3x3_1", unit(f"{prefix}_double_3x3_reduce", x))
        branches.append(unit(f"{prefix}_double_3x3_2", double))
        if cp == 0:
            branches.append(F.max_pool2d(x, 3, stride=2, ceil_mode=True))
        else:
            if name == "5b":
                pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
            else:
                pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            branches.append(unit(f"{prefix}_pool_proj", pooled))
        return torch.cat(branches, dim=1)


def _block_out_channels(block: tuple) -> int:
    _, cin, c1, _, c3, _, cd, cp = block
    return c1 + c3 + cd + (cp if cp else cin)


def _cadene_state_dict(path: Path, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cadene's ImageNet file without its classifier, its (1, C) batch-norm tensors reshaped to (C,)
    (the port predates PyTorch 0.4; Proxy-Anchor squeezes them the same way)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, value in state.items():
        if key.startswith("last_linear."):
            continue
        target = reference.get(key)
        if target is not None and value.dim() == 2 and value.shape[0] == 1 and target.dim() == 1:
            value = value.reshape(target.shape)
        out[key] = value
    return out
