"""From validated params.yaml sections to the objective a training stage runs (SimCLR, MoCo v2,
Proxy-Anchor teachers; transfer students; `classifier_recipes.py` builds the classifiers).

Stages stay thin by calling these; tests build the same objects from a tiny config. Losses are built
from their declared contracts (`pipeline.losses.contract`): the user's params plus the runtime
arguments (model widths, dataset size) that only this layer knows.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pipeline import config as cfg
from pipeline import losses
from pipeline.contracts import effective_proxy_anchor_weight
from pipeline.data import ImageSet
from pipeline.data.augment import build_augmentation
from pipeline.models.embedding_model import EmbeddingModel, ModelSpec, build_model
from pipeline.models.loading import model_spec, teacher_embedding_dim
from pipeline.replica import Replica
from pipeline.setting import Setting
from pipeline.train.objectives import Objective, ProxyAnchorObjective, SimCLRObjective, TransferObjective

PROJECTION_KIND = {"simclr": "simclr", "moco": "mocov2"}  # the projection head of each SSL teacher method
Backbone = dict[str, torch.Tensor] | None  # backbone weights to start from; None: a random start


def augment_for(augmentation: str | cfg.AugmentationConfig, data: cfg.DataConfig, images: ImageSet) -> torch.nn.Module:
    """The view generator of a recipe name, or of an `augmentation` section (a name and the strengths set)."""
    if isinstance(augmentation, str):
        augmentation = cfg.AugmentationConfig(name=augmentation)
    return build_augmentation(augmentation.name, data.image_size, images.channels, images.mean, images.std,
                              **augmentation.strengths())


def _own_objective(method: str, teacher: cfg.TeacherConfig, model: EmbeddingModel, augment: torch.nn.Module,
                   num_classes: int) -> Objective:
    """The recipe's own objective: trains a teacher, or the control student with no teacher signal."""
    if method == "simclr":
        return SimCLRObjective(model, augment, temperature=teacher.temperature)
    if method == "moco":
        from pipeline.train.moco_objective import MoCoObjective  # lightly's model utilities: MoCo only

        moco = teacher.moco
        return MoCoObjective(model, augment, queue_size=moco.queue_size, temperature=teacher.temperature,
                             momentum=moco.momentum, variant=moco.variant, bn_splits=moco.bn_splits or 1)
    pa = teacher.proxy_anchor
    loss = losses.build("proxy_anchor", num_classes=num_classes, embedding_dim=model.embedding_dim,
                        margin=pa.margin, alpha=pa.alpha)
    return ProxyAnchorObjective(model, augment, loss, proxy_lr_multiplier=pa.proxy_lr_multiplier,
                                warmup_epochs=pa.warmup_epochs, freeze_batchnorm=pa.frozen_bn)


@contextlib.contextmanager
def initial_weights(seed: int) -> Iterator[None]:
    """Initial weights (backbones, heads, proxies, regressors, queues) built inside come from `seed` alone
    (a teacher's: params.yaml's `seed`; a student's: its replica's), so two runs of a stage start alike and
    a resumed run can equal an uninterrupted one; the caller's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def teacher_objective(params: cfg.Params, name: str, images: ImageSet,
                      backbone: Backbone = None) -> tuple[Objective, ModelSpec]:
    """The objective that trains teacher `name` on `images`, and the spec its model is saved with; its
    backbone starts from `backbone` when given (its pretraining's: `pipeline.train.pretraining`)."""
    return _teacher_objective(params, params.teachers[name], images, backbone)


def pretraining_objective(params: cfg.Params, name: str, images: ImageSet) -> tuple[Objective, ModelSpec]:
    """The self-supervised objective of teacher `name`'s `pretrain` section, on the teacher's backbone."""
    return _teacher_objective(params, params.teachers[name].pretraining(), images, None)


def _teacher_objective(params: cfg.Params, teacher: cfg.TeacherConfig, images: ImageSet,
                       backbone: Backbone) -> tuple[Objective, ModelSpec]:
    with initial_weights(params.seed):
        spec = model_spec(teacher.model, images.channels, PROJECTION_KIND.get(teacher.method), teacher.projection_dim)
        spec.pooling = teacher.setting.pooling
        model = build_model(spec)
        _start_from(model, backbone)
        objective = _own_objective(teacher.method, teacher, model,
                                   augment_for(teacher.augmentation, params.data, images), images.num_classes)
    return objective, spec


def _start_from(model: EmbeddingModel, backbone: Backbone) -> None:
    if backbone is not None:
        model.backbone.load_state_dict(backbone)


def student_backbone(teacher: cfg.TeacherConfig, student: cfg.ModelConfig, backbone: Backbone) -> Backbone:
    """The weights a student's backbone starts from: its teacher's pretrained start when the teacher has one
    and the two backbones are the same network (the paper's Table 1 students start from the ImageNet weights
    their teachers started from); else None, a random start."""
    if teacher.pretrain is None or student.backbone_fields() != teacher.model.backbone_fields():
        return None
    if backbone is None:
        raise ValueError("the teacher checkpoint carries no pretrained backbone although teachers.*.pretrain is "
                         "declared: re-run its teacher stage")
    return backbone


def self_taught_start(teacher: cfg.TeacherConfig, student: cfg.ModelConfig, model: EmbeddingModel) -> Backbone:
    """Where a self-taught student (STML, or the SimCLR / MoCo control) starts: its own declared weights
    (`model.weights_path`: ImageNet, the official STML start, at paper scale), else the backbone of its grid's
    teacher, the self-supervised model of the same unlabelled images (the CPU analogue of that start, as
    `teachers.NAME.pretrain` is Table 1's), when the two are the same network; else a random start."""
    if student.weights_path is not None or student.backbone_fields() != teacher.model.backbone_fields():
        return None
    return model.backbone.state_dict()  # `_start_from` copies it into the student


def teacher_sampler(params: cfg.Params, name: str) -> int | None:
    """Images per class in a Proxy-Anchor teacher's class-balanced batches; None means random batches."""
    teacher = params.teachers[name]
    return teacher.proxy_anchor.samples_per_class if teacher.method == "proxy_anchor" else None


def transfer_objective(params: cfg.Params, replica: Replica, teacher: EmbeddingModel, images: ImageSet,
                       teacher_start: Backbone = None) -> tuple[Objective, ModelSpec]:
    """Replica `replica` of a student, initialised from its seed: trained from the frozen `teacher` with
    its loss under the transfer section of its setting, or by the teacher's own objective: that control
    trains with its teacher's augmentation (MoCo v2's for a MoCo teacher, crop + flip for Proxy-Anchor)
    and views, and with the section's budget and sampler (the stage passes those), so it differs from its
    teacher only in the student network and the budget. `teacher_start`: the backbone the teacher started
    from (`load_initial_backbone`), where the student's starts too (`student_backbone`)."""
    with initial_weights(replica.seed):
        return _transfer_objective(params, replica, teacher, images, teacher_start)


def _transfer_objective(params: cfg.Params, replica: Replica, teacher: EmbeddingModel, images: ImageSet,
                        teacher_start: Backbone) -> tuple[Objective, ModelSpec]:
    teacher_cfg = params.teachers[replica.teacher]
    setting = replica.setting
    section = params.transfer.of(setting)
    loss_cfg = params.losses[replica.method].in_setting(setting)
    student_model = params.students[replica.student].model
    trains_itself = loss_cfg.name == cfg.TEACHER_OBJECTIVE or losses.loss_class(loss_cfg.name).role == "self_taught"
    if setting is Setting.SELF_TAUGHT and trains_itself:
        backbone = self_taught_start(teacher_cfg, student_model, teacher)
    else:
        backbone = student_backbone(teacher_cfg, student_model, teacher_start)
    if loss_cfg.name == cfg.TEACHER_OBJECTIVE:
        augment = augment_for(teacher_cfg.augmentation, params.data, images)
        spec = model_spec(student_model, images.channels, PROJECTION_KIND.get(teacher_cfg.method),
                          teacher_cfg.projection_dim)
        if teacher_cfg.method != "proxy_anchor":
            # An SSL objective never trains an embedding head: like the SSL teacher, the control student
            # is evaluated on its pooled backbone features.
            spec.embedding_dim = None
        spec.pooling = setting.pooling
        student = build_model(spec)
        _start_from(student, backbone)
        return _own_objective(teacher_cfg.method, teacher_cfg, student, augment, images.num_classes), spec
    augment = augment_for(section.augmentation, params.data, images)
    spec = model_spec(student_model, images.channels)
    spec.pooling = setting.pooling
    student = build_model(spec)
    _start_from(student, backbone)
    pooled = losses.loss_class(loss_cfg.name).features == "pooled"  # CRD: widths of the pooled features
    context = {
        "student_channels": list(student.backbone.stage_channels),
        "teacher_channels": list(teacher.backbone.stage_channels),
        "student_dim": student.backbone.num_features if pooled else student.embedding_dim,
        "teacher_dim": (teacher.backbone.num_features if pooled
                        else teacher_embedding_dim(teacher, teacher_cfg.transfer_embedding)),
        "n_data": len(images),
        "num_classes": images.num_classes,
        "dataset_labels": images.labels if setting.labels else None,
        "views": section.views,
    }
    criterion = losses.build_with(loss_cfg.name, loss_cfg.params, context)
    if criterion.role == "self_taught":
        from pipeline.train.stml_objective import STMLObjective

        if section.train.batch_size % criterion.neighbours:
            raise ValueError(f"transfer.{setting}.train.batch_size: {section.train.batch_size} images are not whole "
                             f"nearest-neighbour groups of losses.{replica.method}.params.neighbours = "
                             f"{criterion.neighbours}")
        plain = augment_for("none", params.data, images)
        return STMLObjective(student, augment, plain, criterion, len(images)), spec
    auxiliary = None
    weight = effective_proxy_anchor_weight(loss_cfg)
    if weight > 0:
        auxiliary = losses.build("proxy_anchor", num_classes=images.num_classes, embedding_dim=student.embedding_dim)
    objective = TransferObjective(student, teacher, augment, criterion,
                                  teacher_embedding_kind=teacher_cfg.transfer_embedding,
                                  auxiliary_loss=auxiliary, auxiliary_weight=weight, views=section.views)
    return objective, spec
