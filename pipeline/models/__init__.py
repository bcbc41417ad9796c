"""Backbones, heads and the embedding model used by teachers and students."""

from pipeline.models.backbones import BACKBONES, CifarResNet, TorchvisionResNet, build_backbone
from pipeline.models.embedding_model import (
    TEACHER_EMBEDDINGS,
    EmbeddingModel,
    ModelSpec,
    build_model,
    load_model,
    save_model,
    teacher_embedding,
)
from pipeline.models.heads import EmbeddingHead, build_projection_head, global_pool

__all__ = [
    "BACKBONES",
    "TEACHER_EMBEDDINGS",
    "CifarResNet",
    "EmbeddingHead",
    "EmbeddingModel",
    "ModelSpec",
    "TorchvisionResNet",
    "build_backbone",
    "build_model",
    "build_projection_head",
    "global_pool",
    "load_model",
    "save_model",
    "teacher_embedding",
]
