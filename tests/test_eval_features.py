"""Feature extraction: same numbers as a hand-run eval forward pass, modes restored, both input kinds."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.eval.features import extract_features


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model.train()
    model(torch.randn(8, 1, 6, 6))  # move the BatchNorm running statistics away from their init
    return model


def images_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8, generator=generator), torch.arange(10)


def expected_features(model: nn.Module, images: torch.Tensor, preprocess) -> torch.Tensor:
    """Independent reference: a plain eval-mode forward pass on the whole preprocessed set."""
    model.eval()
    with torch.no_grad():
        out = model(preprocess(images))
    model.train()
    return out


def test_uint8_tensor_input_with_preprocess_and_labels():
    model, (images, labels) = small_model(), images_and_labels()
    preprocess = lambda batch: (batch.float() / 255 - 0.5) / 0.25  # noqa: E731
    features, returned = extract_features(model, images, batch_size=3, transform=preprocess, labels=labels)
    torch.testing.assert_close(features, expected_features(model, images, preprocess))
    assert torch.equal(returned, labels) and features.dtype == torch.float32
    assert not features.requires_grad


def test_default_preprocess_scales_uint8_to_unit_range():
    model, (images, _) = small_model(), images_and_labels()
    features, labels = extract_features(model, images, batch_size=4)
    torch.testing.assert_close(features, expected_features(model, images, lambda b: b.float() / 255))
    assert labels is None


def test_dataloader_input():
    model, (images, labels) = small_model(), images_and_labels()
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    features, returned = extract_features(model, loader)
    torch.testing.assert_close(features, expected_features(model, images, lambda b: b.float() / 255))
    assert torch.equal(returned, labels)


def test_every_submodule_mode_is_restored():
    model, (images, _) = small_model(), images_and_labels()
    model[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    before = [m.training for m in model.modules()]
    extract_features(model, images)
    assert [m.training for m in model.modules()] == before == [True, True, False, True, True, True, True]


def test_mode_is_restored_when_the_model_fails():
    model, (images, _) = small_model(), images_and_labels()
    with pytest.raises(RuntimeError):
        extract_features(model, images.repeat(1, 2, 1, 1))  # 2 channels into a 1-channel conv
    assert model.training


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (torch.zeros(4, 6, 6, dtype=torch.uint8), {}, "N, C, H, W"),
        (torch.zeros(4, 1, 6, 6, dtype=torch.uint8), {"labels": torch.arange(3)}, "4 items but labels has 3"),
        (torch.zeros(4, 1, 6, 6, dtype=torch.uint8), {"batch_size": 0}, "batch_size"),
        (torch.zeros(0, 1, 6, 6, dtype=torch.uint8), {}, "no images"),
    ],
)
def test_bad_input_is_refused(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract_features(small_model(), images, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_close_to_float32_reference():
    model, (images, labels) = small_model(), images_and_labels()
    features, _ = extract_features(model.cuda(), images, device="cuda", labels=labels)
    reference = expected_features(model.cpu(), images, lambda b: b.float() / 255)
    assert features.device.type == "cpu" and features.dtype == torch.float32
    torch.testing.assert_close(features, reference, atol=2e-2, rtol=2e-2)
