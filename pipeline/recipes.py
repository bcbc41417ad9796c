"""From validated config sections to the objects the training loop runs: models, objectives, settings.

Stages stay thin by calling these; tests build the same objects from a tiny config.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from pipeline import config as cfg
from pipeline import losses
from pipeline.data import FileImageSet, ImageSet, load_dataset, subset_classes
from pipeline.data.augment import build_augmentation
from pipeline.data.files import materialize
from pipeline.models import EmbeddingModel, ModelSpec, build_model
from pipeline.train import config as train_config
from pipeline.train.objectives import (
    MoCoObjective,
    Objective,
    ProxyAnchorObjective,
    SimCLRObjective,
    TransferObjective,
)

PROJECTION_KIND = {"simclr": "simclr", "moco": "mocov2"}


def load_images(data: cfg.DataConfig, split: str, classes: tuple[int, ...] | None = None) -> ImageSet:
    """One split in memory as uint8; file datasets are decoded once at `load_size` (crops happen on device)."""
    dataset = load_dataset(data.name, split, root=data.root, download=data.download, protocol=data.protocol)
    if isinstance(dataset, FileImageSet):
        dataset = materialize(dataset, data.load_size or data.image_size, workers=data.workers)
    if classes is not None:
        dataset = subset_classes(dataset, classes)
    return dataset


def evaluation_classes(params: cfg.Params, teacher: str | None) -> tuple[int, ...] | None:
    """Classes a model is evaluated on: those its teacher never saw in training (metric setting), else all."""
    if teacher is None or params.teachers[teacher].train_classes is None:
        return None
    seen = set(params.teachers[teacher].train_classes)
    total = load_dataset(params.data.name, "test", root=params.data.root, protocol=params.data.protocol).num_classes
    return tuple(c for c in range(total) if c not in seen)


def model_spec(model: cfg.ModelConfig, channels: int, projection: str | None = None, projection_dim: int = 128) -> ModelSpec:
    backbone_kwargs: dict = {}
    if model.widths is not None:
        backbone_kwargs["widths"] = list(model.widths)
    if model.weights_path is not None:
        if not Path(model.weights_path).is_file():
            raise FileNotFoundError(f"weights_path {model.weights_path} does not exist (nothing is downloaded)")
        backbone_kwargs["weights_path"] = model.weights_path
    return ModelSpec(backbone=model.backbone, in_channels=channels, embedding_dim=model.embedding_dim,
                     projection=projection, projection_dim=projection_dim, backbone_kwargs=backbone_kwargs)


def train_settings(train: cfg.TrainConfig, seed: int, num_images: int, device: str = "auto",
                   samples_per_class: int | None = None) -> train_config.TrainConfig:
    """The loop's settings; warm-up is given in epochs in params.yaml and converted to steps here."""
    steps_per_epoch = max(1, num_images // train.batch_size)
    if train.max_steps is not None and train.max_steps > train.epochs * steps_per_epoch:
        warnings.warn(f"max_steps {train.max_steps} is never reached: {train.epochs} epoch(s) of {num_images} images "
                      f"at batch {train.batch_size} stop after {train.epochs * steps_per_epoch} steps; raise epochs",
                      stacklevel=2)
    return train_config.TrainConfig(
        epochs=train.epochs,
        max_steps=train.max_steps,
        batch_size=train.batch_size,
        optimizer=train.optimizer.name,
        lr=train.optimizer.lr,
        momentum=train.optimizer.momentum,
        weight_decay=train.optimizer.weight_decay,
        warmup_steps=round(train.optimizer.warmup_epochs * steps_per_epoch),
        lr_milestones=tuple(m * steps_per_epoch for m in train.optimizer.milestones_epochs),
        lr_gamma=train.optimizer.gamma,
        amp="none" if train.amp == "off" else train.amp,
        seed=seed,
        device=device,
        sampler="class_balanced" if samples_per_class else "random",
        samples_per_class=samples_per_class or 4,
        checkpoint_every_steps=train.checkpoint_every_steps or 0,
    )


def _augment(kind: str, data: cfg.DataConfig, images: ImageSet) -> torch.nn.Module:
    return build_augmentation(kind, data.image_size, images.channels, images.mean, images.std)


def _own_objective(method: str, teacher: cfg.TeacherConfig, model: EmbeddingModel, augment: torch.nn.Module,
                   num_classes: int) -> Objective:
    """The recipe's own objective: trains a teacher, or the control student with no teacher signal."""
    if method == "simclr":
        return SimCLRObjective(model, augment, temperature=teacher.temperature)
    if method == "moco":
        return MoCoObjective(model, augment, queue_size=teacher.moco.queue_size, temperature=teacher.temperature,
                             momentum_base=teacher.moco.momentum)
    pa = teacher.proxy_anchor
    loss = losses.build("proxy_anchor", num_classes=num_classes, embedding_dim=model.embedding_dim,
                        margin=pa.margin, alpha=pa.alpha)
    return ProxyAnchorObjective(model, augment, loss, proxy_lr_multiplier=pa.proxy_lr_multiplier,
                                warmup_epochs=pa.warmup_epochs, freeze_batchnorm=pa.frozen_bn)


def _initialised_from_seed(build):
    """Initial weights (backbones, heads, proxies, regressors, queues) come from params.yaml's `seed` alone,
    so two runs of a stage start alike and a resumed run can equal an uninterrupted one; the caller's
    global RNG is left as it was."""

    @functools.wraps(build)
    def seeded_build(params: cfg.Params, *args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            return build(params, *args, **kwargs)

    return seeded_build


@_initialised_from_seed
def teacher_objective(params: cfg.Params, name: str, images: ImageSet) -> tuple[Objective, ModelSpec]:
    """The objective that trains teacher `name` on `images`, and the spec its model is saved with."""
    teacher = params.teachers[name]
    spec = model_spec(teacher.model, images.channels, PROJECTION_KIND.get(teacher.method), teacher.projection_dim)
    model = build_model(spec)
    objective = _own_objective(teacher.method, teacher, model, _augment(teacher.augmentation, params.data, images),
                               images.num_classes)
    return objective, spec


def teacher_sampler(params: cfg.Params, name: str) -> int | None:
    """Images per class in a Proxy-Anchor teacher's class-balanced batches; None means random batches."""
    teacher = params.teachers[name]
    return teacher.proxy_anchor.samples_per_class if teacher.method == "proxy_anchor" else None


@_initialised_from_seed
def transfer_objective(
    params: cfg.Params, teacher_name: str, student_name: str, loss_name: str,
    teacher: EmbeddingModel, images: ImageSet,
) -> tuple[Objective, ModelSpec]:
    """A student trained from the frozen `teacher` with loss `loss_name`, or by the teacher's own objective."""
    teacher_cfg = params.teachers[teacher_name]
    loss_cfg = params.losses[loss_name]
    student_model = params.students[student_name].model
    augment = _augment(params.transfer.augmentation, params.data, images)
    if loss_cfg.name == cfg.TEACHER_OBJECTIVE:
        spec = model_spec(student_model, images.channels, PROJECTION_KIND.get(teacher_cfg.method),
                          teacher_cfg.projection_dim)
        if teacher_cfg.method in PROJECTION_KIND:
            # An SSL objective never trains an embedding head: like the SSL teacher, the control student
            # is evaluated on its pooled backbone features.
            spec.embedding_dim = None
        student = build_model(spec)
        return _own_objective(teacher_cfg.method, teacher_cfg, student, augment, images.num_classes), spec
    spec = model_spec(student_model, images.channels)
    student = build_model(spec)
    loss_params = dict(loss_cfg.params)
    if loss_cfg.name == "fitnet":
        loss_params.update(student_channels=list(student.backbone.stage_channels),
                           teacher_channels=list(teacher.backbone.stage_channels))
    elif loss_cfg.name == "crd":
        teacher_dim = teacher_embedding_dim(teacher, teacher_cfg.transfer_embedding)
        loss_params.update(student_dim=student.embedding_dim, teacher_dim=teacher_dim, n_data=len(images))
    criterion = losses.build(loss_cfg.name, **loss_params)
    auxiliary = None
    weight = loss_cfg.effective_proxy_anchor_weight()
    if weight > 0:
        auxiliary = losses.build("proxy_anchor", num_classes=images.num_classes, embedding_dim=student.embedding_dim)
    objective = TransferObjective(student, teacher, augment, criterion, loss_cfg.name,
                                  teacher_embedding_kind=teacher_cfg.transfer_embedding,
                                  auxiliary_loss=auxiliary, auxiliary_weight=weight)
    return objective, spec


def teacher_embedding_dim(teacher: EmbeddingModel, kind: str) -> int:
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
    """A model a stage saved; a corrupt or foreign file is a one-line ValueError naming it, not a traceback."""
    from pipeline.models import load_model

    try:
        return load_model(path)
    except Exception as err:  # a corrupt or foreign file: torch/pickle raise many types, with long messages
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{what} {path} cannot be loaded ({type(err).__name__}: {reason})") from None


def load_teacher(path: Path, teacher: cfg.TeacherConfig) -> tuple[EmbeddingModel, ModelSpec]:
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


def classifier_spec(backbone: cfg.BackboneConfig, channels: int, num_classes: int):
    from pipeline.models.classifier import ClassifierSpec

    kwargs = {"widths": list(backbone.widths)} if backbone.widths is not None else {}
    return ClassifierSpec(backbone=backbone.backbone, num_classes=num_classes, in_channels=channels,
                          backbone_kwargs=kwargs)


@_initialised_from_seed
def classifier_teacher_objective(params: cfg.Params, name: str, images: ImageSet):
    """The cross-entropy teacher `name` of the classification experiment, and its spec."""
    from pipeline.models.classifier import build_classifier
    from pipeline.train.classification import CrossEntropyObjective

    section = params.classification
    spec = classifier_spec(section.teachers[name].model, images.channels, images.num_classes)
    return CrossEntropyObjective(build_classifier(spec), _augment(section.augmentation, params.data, images)), spec


@_initialised_from_seed
def classifier_student_objective(params: cfg.Params, student: str, method: str, teacher, images: ImageSet):
    """A student classifier: cross-entropy alone, or plus the method's transfer term from `teacher`."""
    from pipeline.models.classifier import build_classifier
    from pipeline.train.classification import CrossEntropyObjective, DistillationObjective

    section = params.classification
    spec = classifier_spec(section.students[student], images.channels, images.num_classes)
    model = build_classifier(spec)
    augment = _augment(section.augmentation, params.data, images)
    chosen = section.methods[method]
    if chosen.loss is None:
        return CrossEntropyObjective(model, augment), spec
    loss_params = dict(chosen.params)
    if chosen.loss == "crd":
        loss_params.update(student_dim=model.embedding_dim, teacher_dim=teacher.embedding_dim, n_data=len(images))
    term = losses.build(chosen.loss, **loss_params)
    objective = DistillationObjective(model, teacher, augment, term, chosen.loss, chosen.transfer_weight,
                                      ce_weight=chosen.ce_weight)
    return objective, spec
