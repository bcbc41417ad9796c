"""Classification distillation for the one loop (``fit``): cross-entropy alone, or cross-entropy plus a
transfer term from a frozen classifier teacher, and top-k accuracy of a classifier's logits.

The standard KD recipe (RepDistiller, the CRD benchmark the paper's classification table follows):
one augmented view per image (augmentation kind ``cifar``: pad-4 crop + flip), seen by teacher and
student alike; ``loss = ce_weight * CE(student logits, labels) + transfer_weight * term``, where the
term acts on the penultimate embeddings (relaxed contrastive, RKD, PKT, CRD) or on the logits
(Hinton KD). The loop checks every returned loss for finiteness.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.imageset import ImageSet
from pipeline.eval.features import extract_features
from pipeline.losses.contract import Loss
from pipeline.eval.linear_probe import topk_accuracy
from pipeline.models.classifier import Classifier
from pipeline.train.objectives import FrozenTeacherObjective, Objective, full_precision

class CrossEntropyObjective(Objective):
    """A classifier trained on its labels alone: the teacher, or the student-alone control."""

    def __init__(self, model: Classifier, augment: nn.Module) -> None:
        super().__init__(augment)
        self.classifier = model

    @property
    def model(self) -> Classifier:
        return self.classifier

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.view(images))
        with full_precision(images.device):
            return F.cross_entropy(logits.float(), labels)


class DistillationObjective(FrozenTeacherObjective):
    """Student cross-entropy plus one transfer term from the frozen ``teacher``, fed what the term's
    contract declares: penultimate embeddings or logits (``features``), and dataset indices (CRD).

    The embedding terms gather over DDP ranks themselves; CE and Hinton KD are per-sample means, whose
    gradients DDP's averaging already makes global.
    """

    def __init__(
        self,
        student: Classifier,
        teacher: Classifier,
        augment: nn.Module,
        transfer_loss: Loss,
        transfer_weight: float,
        ce_weight: float = 1.0,
    ) -> None:
        if transfer_loss.features not in ("embedding", "pooled", "logits") or "labels" in transfer_loss.active_inputs:
            raise ValueError(f"{type(transfer_loss).__name__} is not a classification transfer term "
                             f"(it reads {transfer_loss.features} and {transfer_loss.active_inputs})")
        for name, value in (("transfer_weight", transfer_weight), ("ce_weight", ce_weight)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if transfer_loss.features == "logits" and student.num_classes != teacher.num_classes:
            raise ValueError(
                f"{type(transfer_loss).__name__} compares logits: student has {student.num_classes} classes, "
                f"teacher {teacher.num_classes}"
            )
        super().__init__(augment, student, teacher)
        self.criterion = transfer_loss
        self.transfer_weight = transfer_weight
        self.ce_weight = ce_weight

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        view = self.view(images)
        student_features = self.student.features(view)
        student_logits = self.student.logits(student_features)
        with torch.no_grad():  # the teacher's logits under the same autocast as the student's
            teacher_features = self.teacher.features(view)
            teacher_logits = self.teacher.logits(teacher_features) if self.criterion.features == "logits" else None
        with full_precision(images.device):
            ce = F.cross_entropy(student_logits.float(), labels)
            if teacher_logits is not None:
                inputs = {"student": student_logits.float(), "teacher": teacher_logits.float()}
            else:
                inputs = {"student": student_features.float(), "teacher": teacher_features.float()}
            term = self.criterion(*({**inputs, "indices": indices}[name] for name in self.criterion.active_inputs))
            return self.ce_weight * ce + self.transfer_weight * term


def classification_metrics(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Top-1 (and top-5 when there are >= 10 classes) accuracy of ``model``'s logits, as fractions.

    ``transform`` maps a raw batch to the model's input (e.g. ``build_augmentation("none", ...)``);
    the model runs in eval mode and its train/eval flags are restored afterwards.
    """
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    logits, targets = extract_features(model, images, batch_size, device, transform, labels=labels)
    metrics = {"top1": float(topk_accuracy(logits, targets, 1))}
    if logits.shape[1] >= 10:
        metrics["top5"] = float(topk_accuracy(logits, targets, 5))
    return metrics


def score_classifier(model: nn.Module, images: ImageSet, image_size: int, batch_size: int) -> dict[str, float]:
    """`classification_metrics` of `images` (uint8) through the evaluation's preprocessing (no augmentation):
    how the stage scores the test split and the search the validation split."""
    from pipeline.data.augment import build_augmentation

    preprocess = build_augmentation("none", image_size, images.channels, images.mean, images.std)
    return classification_metrics(model, images.images, images.labels, batch_size=batch_size, transform=preprocess)
