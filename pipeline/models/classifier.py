"""Classifier = backbone -> global average pool (the penultimate embedding) -> linear; spec save/load.

The pooled features are what the embedding-transfer terms act on in classification distillation
(the CRD benchmark's protocol), so ``features`` exposes them and ``logits`` maps them to class scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.integrity import load_sealed
from pipeline.models.registry import build_backbone
from pipeline.models.embedding_model import save_model


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.embedding_dim = backbone.num_features
        self.num_classes = num_classes
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding: average-pooled last feature map, (B, ``embedding_dim``)."""
        return self.backbone(x).mean(dim=(2, 3))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_stages(x)


@dataclass
class ClassifierSpec:
    """Everything needed to rebuild a ``Classifier``; stored next to its weights."""

    backbone: str
    num_classes: int
    in_channels: int = 3
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


def build_classifier(spec: ClassifierSpec) -> Classifier:
    return Classifier(
        build_backbone(spec.backbone, spec.in_channels, **spec.backbone_kwargs), spec.num_classes
    )


def save_classifier(model: Classifier, spec: ClassifierSpec, path: str | Path) -> None:
    """Same atomic file format as ``save_model`` (spec dict + CPU state dict)."""
    save_model(model, spec, path)


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", what: str = "classifier"
) -> tuple[Classifier, ClassifierSpec]:
    payload = load_sealed(path, what, map_location)
    spec_dict = dict(payload["spec"])
    expected = {f.name for f in fields(ClassifierSpec)}
    if not {"backbone", "num_classes"} <= set(spec_dict) <= expected:
        raise ValueError(f"{path} does not hold a classifier (spec keys {sorted(spec_dict)}); use load_model")
    spec = ClassifierSpec(**spec_dict)
    model = build_classifier(spec)
    model.load_state_dict(payload["state_dict"])
    return model, spec
