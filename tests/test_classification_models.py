"""CRD-benchmark classifier backbones against RepDistiller's published sizes; Classifier save/load; the
'cifar' augmentation against a brute-force search over every pad-4 crop and flip."""

import numpy as np
import pytest
import torch

from pipeline.data.augment import build_augmentation
from pipeline.models.embedding_model import EmbeddingModel, ModelSpec, save_model
from pipeline.models.registry import BACKBONES, build_backbone
from pipeline.models.classifier import (
    Classifier,
    ClassifierSpec,
    build_classifier,
    load_classifier,
    save_classifier,
)
from pipeline.models.repdistiller import CLASSIFIER_BACKBONES


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# RepDistiller / CRD paper (Tian et al., ICLR 2020, Table 1 footnote sizes), 100-class CIFAR models:
# resnet8x4 1.23M, resnet32x4 7.43M, WRN-16-2 0.70M, WRN-40-2 2.26M. Our Classifier adds the same
# Linear(num_features, 100) on the average-pooled last map, so the counts must round to these.
PUBLISHED_MILLIONS = {"resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_16_2": 0.70, "wrn_40_2": 2.26}
FEATURES_AND_STAGES = {  # (num_features, stage_channels): x4 ResNets 64/128/256, WRN-k-2 32/64/128
    "resnet8x4": (256, (64, 128, 256)),
    "resnet32x4": (256, (64, 128, 256)),
    "wrn_16_2": (128, (32, 64, 128)),
    "wrn_40_2": (128, (32, 64, 128)),
}


@pytest.mark.parametrize("name", list(PUBLISHED_MILLIONS))
def test_classifier_backbone_matches_published_size(name):
    backbone = build_backbone(name)
    num_features, stages = FEATURES_AND_STAGES[name]
    assert backbone.num_features == num_features and backbone.stage_channels == stages
    with_fc = parameter_count(backbone) + (num_features * 100 + 100)  # fc-less count = published - fc
    assert with_fc / 1e6 == pytest.approx(PUBLISHED_MILLIONS[name], abs=0.005)
    assert parameter_count(Classifier(backbone, 100)) == with_fc


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2"])
def test_stages_halve_resolution_twice_and_forward_is_the_last_stage(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    stages = backbone.forward_stages(x)
    assert [tuple(s.shape[1:]) for s in stages] == [
        (c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(backbone.stage_channels)
    ]
    torch.testing.assert_close(backbone(x), stages[-1])


def test_wrn_final_map_is_post_bn_relu():
    # The WRN applies BN + ReLU after its last block and pools that map: it must be non-negative.
    torch.manual_seed(0)
    assert (build_backbone("wrn_16_2")(torch.randn(4, 3, 32, 32)) >= 0).all()


def test_classifier_backbone_names_are_registered():
    assert set(CLASSIFIER_BACKBONES) <= set(BACKBONES)


def test_classifier_features_are_average_pooled_map_and_logits_are_linear(tmp_path):
    torch.manual_seed(0)
    model = Classifier(build_backbone("small_resnet", 1, widths=(4, 8)), num_classes=3).eval()
    x = torch.randn(5, 1, 8, 8)
    pooled = model.backbone(x).flatten(2).mean(-1)
    torch.testing.assert_close(model.features(x), pooled)
    torch.testing.assert_close(model(x), pooled @ model.fc.weight.T + model.fc.bias)


def test_classifier_save_load_round_trip_and_refuses_embedding_models(tmp_path):
    torch.manual_seed(0)
    spec = ClassifierSpec(
        backbone="small_resnet", num_classes=4, in_channels=1, backbone_kwargs={"widths": (4, 8)}
    )
    model = build_classifier(spec).eval()
    save_classifier(model, spec, tmp_path / "c.pt")
    loaded, loaded_spec = load_classifier(tmp_path / "c.pt")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert loaded_spec.num_classes == 4 and list(loaded_spec.backbone_kwargs["widths"]) == [4, 8]
    embedding_spec = ModelSpec(backbone="small_resnet", in_channels=1, backbone_kwargs={"widths": [4]})
    save_model(
        EmbeddingModel(build_backbone("small_resnet", 1, widths=(4,))), embedding_spec, tmp_path / "e.pt"
    )
    with pytest.raises(ValueError, match="does not hold a classifier"):
        load_classifier(tmp_path / "e.pt")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_backbone("resnet8x4", widths=(8,)), "takes no options"),
        (lambda: Classifier(build_backbone("small_resnet", 1, widths=(4,)), 1), "num_classes"),
        (lambda: __import__("pipeline.models.repdistiller", fromlist=["x"]).RepDistillerResNet(10), "depth"),
        (lambda: __import__("pipeline.models.repdistiller", fromlist=["x"]).WideResNet(12, 2), "depth"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("size, pad", [(32, 4), (8, 1)])  # pad = size // 8: RepDistiller's 4 px at CIFAR's 32
def test_cifar_augmentation_is_a_padded_crop_with_optional_flip(size, pad):
    """Every output equals one of the (2 pad + 1)^2 shifts (zero padding) of its input, flipped or not;
    flips and most shifts occur over a batch. Brute force in numpy over all candidates."""
    torch.manual_seed(0)
    images = torch.randint(
        1, 256, (64, 1, size, size), dtype=torch.uint8
    )  # no zero pixels: padding is visible
    augment = build_augmentation("cifar", size, 1, mean=(0.0,), std=(1.0,))  # identity normalisation
    out = augment(images).numpy()
    padded = np.pad(images.numpy().astype(np.float32) / 255.0, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    shifts = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]

    def candidate(i: int, dy: int, dx: int, flip: bool) -> np.ndarray:
        crop = padded[i, :, dy : dy + size, dx : dx + size]
        return crop[..., ::-1] if flip else crop

    seen = set()
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy, dx in shifts
            for flip in (False, True)
            if np.allclose(out[i], candidate(i, dy, dx, flip), atol=1e-6)
        ]
        assert matches, f"image {i} is not a pad-{pad} crop of its input"
        seen.add(matches[0])
    assert len({(dy, dx) for dy, dx, _ in seen}) >= min(9, len(shifts) - 1)
    assert {flip for *_, flip in seen} == {False, True}
