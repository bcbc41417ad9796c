"""From params.yaml's model sections to model specs, and saved models back to modules, refusing a file
that is corrupt or does not match the model params.yaml declares."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.integrity import DamagedFileError, first_safe_line
from pipeline.models.embedding_model import EmbeddingModel, ModelSpec, load_model

if TYPE_CHECKING:
    from pipeline.config import ModelConfig, TeacherConfig


def model_spec(model: ModelConfig, channels: int, projection: str | None = None, projection_dim: int = 128) -> ModelSpec:
    backbone_kwargs: dict = {}
    if model.widths is not None:
        backbone_kwargs["widths"] = list(model.widths)
    if model.weights_path is not None:
        if not Path(model.weights_path).is_file():
            raise FileNotFoundError(f"weights_path {model.weights_path} does not exist (nothing is downloaded)")
        backbone_kwargs["weights_path"] = model.weights_path
    return ModelSpec(backbone=model.backbone, in_channels=channels, embedding_dim=model.embedding_dim,
                     projection=projection, projection_dim=projection_dim, backbone_kwargs=backbone_kwargs)


def teacher_embedding_dim(teacher: EmbeddingModel, kind: str) -> int:
    """Width of what `teacher_embedding(teacher, x, kind)` hands the student."""
    if kind == "projection":
        return int(teacher.projection_dim)
    if kind == "backbone":
        return int(teacher.backbone.num_features)
    return int(teacher.embedding_dim)


def count_parameters(model: torch.nn.Module, exclude_projection: bool = True) -> int:
    """Parameters used at inference: the projection head is training-only and left out."""
    skip = {id(p) for p in model.projection_head.parameters()} if exclude_projection and getattr(
        model, "projection_head", None) is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def load_saved_model(path: Path, what: str = "model") -> tuple[EmbeddingModel, ModelSpec]:
    """A model a stage saved, its content digest checked; a corrupt, damaged or foreign file is a one-line
    error naming it (`pipeline.integrity.DamagedFileError`), not a traceback."""
    try:
        return load_model(path, what=what)
    except DamagedFileError:
        raise
    except Exception as err:  # a sealed payload that does not build a model (a foreign spec)
        raise DamagedFileError(f"{what} {path} cannot be loaded ({type(err).__name__}: {first_safe_line(err)})"
                               ) from None


def load_teacher(path: Path, teacher: TeacherConfig) -> tuple[EmbeddingModel, ModelSpec]:
    """The frozen teacher, refused when its checkpoint does not match the teacher params.yaml declares."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist; run its teacher stage first")
    model, spec = load_saved_model(path, "teacher checkpoint")
    expected = (teacher.model.backbone, teacher.model.embedding_dim, list(teacher.model.widths or []))
    found = (spec.backbone, spec.embedding_dim, list(spec.backbone_kwargs.get("widths", [])))
    if expected != found:
        raise ValueError(f"teacher checkpoint {path} holds backbone/embedding_dim/widths {found}, "
                         f"but params.yaml declares {expected}; re-run the teacher stage")
    model.eval().requires_grad_(False)
    return model, spec
