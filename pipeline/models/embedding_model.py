"""Backbone + pooling + embedding head (+ SSL projection head) and the choice of teacher embedding."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.integrity import load_sealed, save_sealed
from pipeline.models.registry import build_backbone
from pipeline.models.heads import EmbeddingHead, build_projection_head, global_pool

TEACHER_EMBEDDINGS = ("projection", "backbone", "embedding")


class EmbeddingModel(nn.Module):
    """``forward`` returns the embedding: the head output, or the pooled features without a head.

    The projection head (SSL teachers) sits on the pooled features, parallel to the embedding head, so
    an SSL teacher can be built without an embedding head (``embedding_dim=None``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int | None = None,
        projection: str | None = None,
        projection_dim: int = 128,
        projection_hidden_dim: int | None = None,
        pooling: str = "avg+max",
        normalize_embedding: bool = False,
    ) -> None:
        super().__init__()
        global_pool(torch.zeros(1, 1, 1, 1), pooling)  # validates the name before any compute
        self.backbone = backbone
        self.pooling = pooling
        num_features = backbone.num_features
        self.head = None if embedding_dim is None else EmbeddingHead(num_features, embedding_dim, normalize_embedding)
        self.projection_head = (
            None
            if projection is None
            else build_projection_head(projection, num_features, projection_dim, projection_hidden_dim)
        )
        self.embedding_dim = num_features if embedding_dim is None else embedding_dim
        self.projection_dim = None if projection is None else projection_dim

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return global_pool(self.backbone(x), self.pooling)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.head is None else self.head(pooled)

    def project_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.projection_head is None:
            raise ValueError("this model has no projection head (projection=None)")
        return self.projection_head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_pooled(self.pooled_features(x))

    def projection(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (not normalised) projection-head output."""
        return self.project_pooled(self.pooled_features(x))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_stages(x)


def teacher_embedding(teacher: EmbeddingModel, x: torch.Tensor, kind: str = "projection") -> torch.Tensor:
    """What the teacher hands to the student's embedding-transfer loss.

    ``projection``: L2-normalised SSL projection output (DESIGN.md measured +1.6..2.6 Recall@1 for every
    student over pooled features); ``backbone``: pooled backbone features, raw; ``embedding``: the
    teacher's embedding (head output; the pooled features of a model without a head), L2-normalised as
    the label-relaxation code hands its source embedding to every loss (code/train_target.py builds the
    source with ``l2_norm=args.source_norm``, default 1, which normalises ``emb`` in code/net/resnet.py
    and bn_inception.py; the feature maps and pooled features stay raw).
    """
    if kind == "projection":
        return F.normalize(teacher.projection(x), dim=1)
    if kind == "backbone":
        return teacher.pooled_features(x)
    if kind == "embedding":
        return F.normalize(teacher(x), dim=1)
    raise ValueError(f"teacher_embedding must be one of {TEACHER_EMBEDDINGS}, got {kind!r}")


class TransferredEmbedding(nn.Module):
    """A teacher whose forward is `teacher_embedding`: scores what the students are trained to match, which
    is not the teacher's own output (SimCLR: the normalised projection, not the pooled features; the
    Proxy-Anchor teacher: its normalised embedding, the official repo's cosine protocol, not the raw one)."""

    def __init__(self, teacher: EmbeddingModel, kind: str) -> None:
        super().__init__()
        if kind not in TEACHER_EMBEDDINGS:
            raise ValueError(f"teacher_embedding must be one of {TEACHER_EMBEDDINGS}, got {kind!r}")
        self.teacher, self.kind = teacher, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return teacher_embedding(self.teacher, x, self.kind)


@dataclass
class ModelSpec:
    """Everything needed to rebuild an ``EmbeddingModel``; stored next to its weights."""

    backbone: str
    in_channels: int = 3
    embedding_dim: int | None = None
    projection: str | None = None
    projection_dim: int = 128
    projection_hidden_dim: int | None = None
    pooling: str = "avg+max"
    normalize_embedding: bool = False
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)


def build_model(spec: ModelSpec) -> EmbeddingModel:
    backbone = build_backbone(spec.backbone, spec.in_channels, **spec.backbone_kwargs)
    return EmbeddingModel(
        backbone,
        embedding_dim=spec.embedding_dim,
        projection=spec.projection,
        projection_dim=spec.projection_dim,
        projection_hidden_dim=spec.projection_hidden_dim,
        pooling=spec.pooling,
        normalize_embedding=spec.normalize_embedding,
    )


INITIAL_BACKBONE = "initial_backbone"


def save_model(model: EmbeddingModel, spec: ModelSpec, path: str | Path,
               initial_backbone: dict[str, torch.Tensor] | None = None) -> None:
    """Atomic write of spec + weights with the digest of their content (`pipeline.integrity`): a
    half-written file never exists, and a damaged one is refused when read. A teacher that started from a
    pretrained backbone carries those starting weights too: its students start from them, and the DVC
    dependency they already have on the teacher file covers them."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"spec": _jsonable(asdict(spec)), "state_dict": state}
    if initial_backbone is not None:
        payload[INITIAL_BACKBONE] = {k: v.detach().cpu() for k, v in initial_backbone.items()}
    save_sealed(path, payload, "model")


def load_initial_backbone(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The backbone weights the model at `path` started from (`save_model`), None when it started at random."""
    return load_sealed(path, "model").get(INITIAL_BACKBONE)


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               what: str = "model") -> tuple[EmbeddingModel, ModelSpec]:
    payload = load_sealed(path, what, map_location)
    spec_dict = dict(payload["spec"])
    spec = ModelSpec(**spec_dict)
    model = build_model(spec)
    model.load_state_dict(payload["state_dict"])
    return model, spec


def _jsonable(value):
    """Tuples become lists so the spec round-trips through ``weights_only`` loading unchanged in meaning."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
