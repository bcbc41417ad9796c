"""Released Proxy-Anchor sources: files in the official layout load into ``EmbeddingModel`` and embed
exactly as the official forward does.

The official-style modules below follow Proxy-Anchor's ``code/net/bn_inception.py`` and
``code/net/resnet.py`` (the modules LabelRelaxation's ``train_target.py`` loads sources into): the
backbone under ``model.``, ``model.gap`` + ``model.gmp`` summed, ``model.embedding``, then ``l2_norm``
when ``is_norm``; the unused ImageNet classifier stays in the state dict. Their BN-Inception is Cadene's
layer list with ``momentum=0.9`` batch norms and in-place ReLUs, fed Caffe BGR input.
"""

import pytest
import torch
import torchvision
from test_models_bn_inception import CADENE_CONVS
from torch import nn

from pipeline.models.released import load_released_teacher

# Pool branch of each block in Cadene's bninception.py: (kind, stride, padding), all ceil_mode=True;
# the average pools count the padding.
CADENE_POOLS = {
    "3a": ("avg", 1, 1), "3b": ("avg", 1, 1), "3c": ("max", 2, 0),
    "4a": ("avg", 1, 1), "4b": ("avg", 1, 1), "4c": ("avg", 1, 1), "4d": ("avg", 1, 1), "4e": ("max", 2, 0),
    "5a": ("avg", 1, 1), "5b": ("max", 1, 1),
}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def official_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Proxy-Anchor's ``l2_norm``: divide by sqrt(sum of squares + 1e-12)."""
    return x / torch.sqrt(x.pow(2).sum(1) + 1e-12).view(-1, 1)


class CadeneBNInception(nn.Module):
    """Proxy-Anchor's ``BNInception`` body: the named layers and ``features``' data flow."""

    def __init__(self) -> None:
        super().__init__()
        for name, cin, cout, k, stride, padding in CADENE_CONVS:
            setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
            setattr(self, f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-05, momentum=0.9, affine=True))
            setattr(self, f"{name}_relu", nn.ReLU(inplace=True))
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for block, (kind, stride, padding) in CADENE_POOLS.items():
            pool = (
                nn.AvgPool2d(3, stride=stride, padding=padding, ceil_mode=True, count_include_pad=True)
                if kind == "avg"
                else nn.MaxPool2d(3, stride=stride, padding=padding, ceil_mode=True)
            )
            setattr(self, f"inception_{block}_pool", pool)
        self.last_linear = nn.Linear(1024, 1000)

    def unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, f"{name}_bn")(getattr(self, name)(x))
        getattr(self, f"{name}_relu")(out)  # in place, as there: the BN output is used afterwards
        return out

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pool1_3x3_s2(self.unit("conv1_7x7_s2", x))
        x = self.pool2_3x3_s2(self.unit("conv2_3x3", self.unit("conv2_3x3_reduce", x)))
        outputs = {}
        for block in CADENE_POOLS:
            p = f"inception_{block}"
            branches = [self.unit(f"{p}_1x1", x)] if hasattr(self, f"{p}_1x1") else []
            branches.append(self.unit(f"{p}_3x3", self.unit(f"{p}_3x3_reduce", x)))
            double = self.unit(f"{p}_double_3x3_1", self.unit(f"{p}_double_3x3_reduce", x))
            branches.append(self.unit(f"{p}_double_3x3_2", double))
            pooled = getattr(self, f"{p}_pool")(x)
            has_proj = hasattr(self, f"{p}_pool_proj")
            branches.append(self.unit(f"{p}_pool_proj", pooled) if has_proj else pooled)
            x = outputs[block] = torch.cat(branches, 1)
        return outputs


class OfficialBNInception(nn.Module):
    """``net/bn_inception.py``'s ``bn_inception`` wrapper: f3/f4/f5 = inception 3c/4e/5b (LabelRelaxation)."""

    def __init__(self, embedding_size: int, is_norm: bool = True) -> None:
        super().__init__()
        self.model = CadeneBNInception()
        self.model.gap = nn.AdaptiveAvgPool2d(1)
        self.model.gmp = nn.AdaptiveMaxPool2d(1)
        self.model.embedding = nn.Linear(1024, embedding_size)
        self.is_norm = is_norm

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps = self.model.features(x)
        f5 = maps["5b"]
        pooled = (self.model.gap(f5) + self.model.gmp(f5)).view(x.size(0), -1)
        emb = self.model.embedding(pooled)
        return [maps["3c"], maps["4e"], f5], official_l2_norm(emb) if self.is_norm else emb


class OfficialResnet(nn.Module):
    """``net/resnet.py``'s ``Resnet18`` / ``Resnet50``: torchvision's ResNet under ``model.``, fc kept."""

    def __init__(self, depth: int, embedding_size: int, is_norm: bool = True) -> None:
        super().__init__()
        self.model = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        self.model.gap = nn.AdaptiveAvgPool2d(1)
        self.model.gmp = nn.AdaptiveMaxPool2d(1)
        self.model.embedding = nn.Linear(self.model.fc.in_features, embedding_size)
        self.is_norm = is_norm

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        stages = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = layer(x)
            stages.append(x)
        pooled = (m.gmp(x) + m.gap(x)).view(x.size(0), -1)
        emb = m.embedding(pooled)
        return stages, official_l2_norm(emb) if self.is_norm else emb


def randomise(net: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """Random weights that keep activations of unit scale at every depth (so the input, not the biases,
    decides the embedding): He-normal convs, random BN affines, BN statistics of one calibration batch."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, std=0.1)
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(calibration)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.9 if isinstance(net, OfficialBNInception) else 0.1
    return net.eval()


def caffe_bgr(normalised_rgb: torch.Tensor) -> torch.Tensor:
    """Proxy-Anchor's inception transform applied to the image behind an ImageNet-normalised tensor."""
    rgb01 = normalised_rgb * IMAGENET_STD + IMAGENET_MEAN
    return rgb01[:, [2, 1, 0]] * 255 - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)


SIDE = 64  # BN-Inception needs sides that are multiples of 32 (the 3c / 4e branches must agree)
CASES = {"bn_inception": 512, "resnet50": 512, "resnet18": 128}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, tuple]:
    """backbone -> (checkpoint path, official module, its input transform)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("released")
    out = {}
    for backbone, dim in CASES.items():
        if backbone == "bn_inception":
            official, to_input = OfficialBNInception(dim), caffe_bgr
        else:
            official, to_input = OfficialResnet(int(backbone.removeprefix("resnet")), dim), (lambda x: x)
        randomise(official, to_input(torch.randn(2, 3, SIDE, SIDE)))
        path = folder / f"cub_{backbone}_{dim}dim_Proxy_Anchor_ckpt.pth"
        torch.save({"model_state_dict": official.state_dict()}, path)
        out[backbone] = (path, official, to_input)
    return out


@pytest.mark.parametrize("backbone", list(CASES))
def test_released_teacher_embeds_like_the_official_forward(released, backbone):
    path, official, to_input = released[backbone]
    model, spec = load_released_teacher(path, backbone, embedding_dim=CASES[backbone])
    assert (spec.backbone, spec.embedding_dim, spec.pooling, spec.normalize_embedding) == (
        backbone, CASES[backbone], "avg+max", True,
    )
    assert not model.training
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        official_stages, official_emb = official(to_input(x))
        ours = model(x)
        ours_stages = model.stage_features(x)
    torch.testing.assert_close(ours, official_emb, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(2))
    assert len(ours_stages) == len(official_stages)
    for a, b in zip(ours_stages, official_stages):  # float error of the input conversion, to scale
        torch.testing.assert_close(a, b, atol=2e-5 * b.abs().max().item(), rtol=1e-4)
    # The check is sensitive: two images embed far apart, and BN-Inception fed RGB instead of BGR differs.
    assert (ours[0] - ours[1]).abs().max() > 1e-2
    if backbone == "bn_inception":
        with torch.no_grad():
            assert (ours - official(caffe_bgr(x)[:, [2, 1, 0]])[1]).abs().max() > 1e-2


def test_unnormalised_embedding_matches_official_without_l2_norm(released):
    path, official, _ = released["resnet18"]
    model, spec = load_released_teacher(path, "resnet18", embedding_dim=128, normalize_embedding=False)
    official.is_norm = False
    try:
        x = torch.randn(2, 3, SIDE, SIDE)
        with torch.no_grad():
            torch.testing.assert_close(model(x), official(x)[1], atol=1e-4, rtol=1e-4)
    finally:
        official.is_norm = True
    assert spec.normalize_embedding is False


def test_official_modules_hold_the_official_key_names(released):
    keys = set(released["resnet50"][1].state_dict())
    assert {"model.conv1.weight", "model.layer4.2.conv3.weight", "model.fc.weight",
            "model.embedding.weight"} <= keys
    keys = set(released["bn_inception"][1].state_dict())
    assert {"model.conv1_7x7_s2.weight", "model.inception_5b_pool_proj_bn.running_var",
            "model.last_linear.weight", "model.embedding.bias"} <= keys


def rewrite(path, tmp_path, edit) -> str:
    state = dict(torch.load(path, weights_only=True)["model_state_dict"])
    edit(state)
    out = tmp_path / "edited.pth"
    torch.save({"model_state_dict": state}, out)
    return out


def refusal(path, backbone="resnet18", embedding_dim=128) -> str:
    with pytest.raises(ValueError) as info:
        load_released_teacher(path, backbone, embedding_dim=embedding_dim)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_renamed_key_is_refused_naming_both_names(released, tmp_path):
    def rename(state):
        state["model.layer2.0.conv1.wieght"] = state.pop("model.layer2.0.conv1.weight")

    message = refusal(rewrite(released["resnet18"][0], tmp_path, rename))
    assert "unexpected key 'model.layer2.0.conv1.wieght' (shape [128, 64, 3, 3])" in message
    assert "missing key 'model.layer2.0.conv1.weight' (expected shape [128, 64, 3, 3])" in message


def test_wrong_shapes_are_refused_naming_key_and_shapes(released, tmp_path):
    message = refusal(released["resnet18"][0], embedding_dim=64)
    assert "key 'model.embedding.weight' has shape [128, 512], expected [64, 512]" in message

    def shrink(state):
        state["model.inception_4e_3x3_bn.running_mean"] = torch.zeros(191)

    message = refusal(rewrite(released["bn_inception"][0], tmp_path, shrink), "bn_inception", 512)
    assert "key 'model.inception_4e_3x3_bn.running_mean' has shape [191], expected [192]" in message


def test_unexpected_key_wrong_backbone_and_missing_state_dict_are_refused(released, tmp_path):
    def add(state):
        state["model.extra.weight"] = torch.zeros(3)

    message = refusal(rewrite(released["resnet18"][0], tmp_path, add))
    assert "unexpected key 'model.extra.weight' (shape [3])" in message
    # A ResNet file read as BN-Inception fails on its first key.
    assert "unexpected key 'model.conv1.weight'" in refusal(released["resnet18"][0], "bn_inception", 128)
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(released["resnet18"][0], weights_only=True)["model_state_dict"], bare)
    assert "no 'model_state_dict'" in refusal(bare)
    with pytest.raises(ValueError, match="resnet34"):
        load_released_teacher(released["resnet18"][0], "resnet34")


def test_data_parallel_prefix_is_accepted(released, tmp_path):
    path, official, _ = released["resnet18"]
    state = torch.load(path, weights_only=True)["model_state_dict"]
    wrapped = tmp_path / "data_parallel.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    model, _ = load_released_teacher(wrapped, "resnet18", embedding_dim=128)
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x)[1], atol=2e-5, rtol=1e-4)
