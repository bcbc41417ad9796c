"""Backbones, heads and the embedding model, checked against hand-counted sizes and direct computations."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.models.embedding_model import EmbeddingModel, ModelSpec, build_model, load_model, save_model, teacher_embedding
from pipeline.models.registry import build_backbone


def small_resnet_params(in_channels: int, widths: tuple[int, ...]) -> int:
    """Hand count: 3x3 stem conv + BN, then per stage one BasicBlock (two 3x3 convs + 2 BN), plus a
    1x1 conv + BN shortcut whenever the width changes (every stage after the first)."""
    def bn(c):
        return 2 * c

    total = 9 * in_channels * widths[0] + bn(widths[0])
    previous = widths[0]
    for width in widths:
        total += 9 * previous * width + 9 * width * width + 2 * bn(width)
        if width != previous:
            total += previous * width + bn(width)
        previous = width
    return total


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("widths, design_size", [((32, 64, 128), 307_000), ((16, 32, 64), 77_000)])
def test_small_resnet_size_matches_hand_count_and_design(widths, design_size):
    backbone = build_backbone("small_resnet", 1, widths=widths)
    assert count(backbone) == small_resnet_params(1, widths)
    assert abs(count(backbone) - design_size) / design_size < 0.01  # DESIGN.md: ~307k and ~77k
    assert backbone.num_features == widths[-1]


def test_small_resnet_stem_stride_two_halves_resolution_once():
    stages = build_backbone("small_resnet", 1).forward_stages(torch.zeros(2, 1, 28, 28))
    assert [tuple(s.shape[1:]) for s in stages] == [(32, 14, 14), (64, 7, 7), (128, 4, 4)]


def test_cifar_resnet18_matches_published_size_and_keeps_resolution():
    # The CIFAR ResNet-18 of the SSL literature (kuangliu/pytorch-cifar) has 11,173,962 parameters with
    # its 512x10 fc layer (5,130 parameters), which the backbone leaves out.
    backbone = build_backbone("cifar_resnet18", 3)
    assert count(backbone) == 11_173_962 - 5_130
    first = backbone.stem[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())
    stages = backbone.forward_stages(torch.zeros(1, 3, 32, 32))
    assert [s.shape[-1] for s in stages] == [32, 16, 8, 4]
    assert backbone.stage_channels == (64, 128, 256, 512)


def test_cifar_resnet50_is_bottleneck_with_2048_features():
    backbone = build_backbone("cifar_resnet50", 3)
    assert backbone.num_features == 2048
    # torchvision's ResNet-50 minus fc (2048*1000+1000) minus its 7x7 stem conv, plus a 3x3 stem conv.
    reference = count(torchvision.models.resnet50()) - 2_049_000 - 64 * 3 * 49 + 64 * 3 * 9
    assert count(backbone) == reference


def test_torchvision_resnet_uses_imagenet_stem():
    backbone = build_backbone("resnet18", 3)
    assert count(backbone) == count(torchvision.models.resnet18()) - 513_000  # fc removed
    stages = backbone.forward_stages(torch.zeros(1, 3, 64, 64))
    assert [s.shape[-1] for s in stages] == [16, 8, 4, 2]  # 7x7/2 conv + max-pool: /4 before stage 1


def test_torchvision_resnet_loads_local_weights_and_adapts_grey_stem(tmp_path):
    reference = torchvision.models.resnet18()
    for p in reference.parameters():
        nn.init.normal_(p, std=0.05)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    rgb = build_backbone("resnet18", 3, weights_path=path)
    torch.testing.assert_close(rgb.stages[3][1].conv2.weight, reference.layer4[1].conv2.weight, rtol=0, atol=0)
    grey = build_backbone("resnet18", 1, weights_path=path)
    x = torch.randn(2, 1, 32, 32)
    # A grey image seen by the RGB filters as three equal channels gives the same stem response.
    torch.testing.assert_close(grey.stem[0](x), reference.conv1(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


def test_embedding_head_is_linear_map_of_gap_plus_gmp():
    torch.manual_seed(0)
    model = EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 8, 16)), embedding_dim=8)
    x = torch.randn(3, 1, 16, 16)
    feature_map = model.backbone(x)
    pooled = feature_map.flatten(2).mean(-1) + feature_map.flatten(2).max(-1).values
    expected = pooled @ model.head.linear.weight.T + model.head.linear.bias
    torch.testing.assert_close(model(x), expected)
    weight = model.head.linear.weight  # 8 x 16, orthogonal rows
    torch.testing.assert_close(weight @ weight.T, torch.eye(8), atol=1e-5, rtol=0)
    assert torch.all(model.head.linear.bias == 0)


def test_teacher_embedding_kinds():
    torch.manual_seed(0)
    model = EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 8, 16)), embedding_dim=4,
                           projection="simclr", projection_dim=6).eval()
    x = torch.randn(5, 1, 16, 16)
    projected = teacher_embedding(model, x, "projection")
    assert projected.shape == (5, 6)
    torch.testing.assert_close(projected.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(projected, F.normalize(model.projection(x), dim=1))
    assert teacher_embedding(model, x, "backbone").shape == (5, 16)
    torch.testing.assert_close(teacher_embedding(model, x, "backbone"), model.pooled_features(x))  # raw
    # The embedding is L2-normalised, as the label-relaxation code's source (--source-norm 1).
    torch.testing.assert_close(teacher_embedding(model, x, "embedding"), F.normalize(model(x), dim=1))
    with pytest.raises(ValueError, match="teacher_embedding"):
        teacher_embedding(model, x, "logits")


def test_the_transferred_view_ranks_by_cosine_what_the_teacher_hands_its_students():
    """The teacher's `transferred` evaluation row: its forward is the unit-norm projection (SSL) or
    embedding (Proxy-Anchor), so Euclidean retrieval on it ranks neighbours as cosine similarity on the
    raw output does, the Proxy-Anchor repo's protocol; checked by brute force."""
    from pipeline.models.embedding_model import TransferredEmbedding

    torch.manual_seed(1)
    model = EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 8, 16)), embedding_dim=4,
                           projection="simclr", projection_dim=6).eval()
    x = torch.randn(12, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(TransferredEmbedding(model, "projection")(x), F.normalize(model.projection(x), dim=1))
        view, raw = TransferredEmbedding(model, "embedding")(x), model(x)
    torch.testing.assert_close(view.norm(dim=1), torch.ones(12))
    cosine = raw @ raw.T / (raw.norm(dim=1, keepdim=True) * raw.norm(dim=1))
    distance = torch.cdist(view, view)
    for row in range(12):  # nearest first, the query itself excluded
        by_cosine = [i for i in cosine[row].argsort(descending=True).tolist() if i != row]
        by_distance = [i for i in distance[row].argsort().tolist() if i != row]
        assert by_cosine == by_distance
    with pytest.raises(ValueError, match="teacher_embedding"):
        TransferredEmbedding(model, "logits")


def test_model_without_head_returns_pooled_features_and_projection_is_required():
    model = EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 8, 16)))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model.pooled_features(x))
    with pytest.raises(ValueError, match="projection head"):
        model.projection(x)


def test_save_and_load_round_trip(tmp_path):
    spec = ModelSpec("small_resnet", in_channels=1, embedding_dim=12, projection="mocov2",
                     backbone_kwargs={"widths": (8, 16, 16)})
    model = build_model(spec).eval()
    save_model(model, spec, tmp_path / "model.pt")
    loaded, loaded_spec = load_model(tmp_path / "model.pt")
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    assert loaded_spec.embedding_dim == 12 and list(loaded_spec.backbone_kwargs["widths"]) == [8, 16, 16]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("call, message", [
    (lambda: build_backbone("vgg", 3), "unknown backbone"),
    (lambda: build_backbone("small_resnet", 0), "in_channels"),
    (lambda: build_backbone("small_resnet", 1, stem_stride=3), "stem_stride"),
    (lambda: build_backbone("small_resnet", 1, widths=(8, 16), blocks_per_stage=(1,)), "blocks_per_stage"),
    (lambda: EmbeddingModel(build_backbone("small_resnet", 1), pooling="median"), "pooling"),
    (lambda: EmbeddingModel(build_backbone("small_resnet", 1), projection="byol"), "projection"),
    (lambda: EmbeddingModel(build_backbone("small_resnet", 1), embedding_dim=0), "embedding_dim"),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", ["BasicBlock", "Bottleneck"])
@pytest.mark.parametrize("stride", [1, 2])
def test_our_residual_blocks_equal_torchvisions(name, stride):
    """Same submodule names, the same seeded initial weights, the same outputs and gradients."""
    from torchvision.models import resnet as tv

    from pipeline.models import blocks

    def build(module):
        torch.manual_seed(3)
        expansion = getattr(module, name).expansion
        downsample = nn.Sequential(nn.Conv2d(16, 8 * expansion, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(8 * expansion))
        return getattr(module, name)(16, 8, stride, downsample)

    ours, theirs = build(blocks), build(tv)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(4, 16, 8, 8)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(a), theirs(b)
    assert torch.equal(out_ours, out_theirs)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    assert torch.equal(a.grad, b.grad)
