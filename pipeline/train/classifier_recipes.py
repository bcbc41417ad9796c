"""From the `classification` section of params.yaml to the objectives of the paper's third experiment:
cross-entropy teachers, and students trained by cross-entropy plus one transfer term (or alone)."""
from __future__ import annotations

from pipeline import config as cfg
from pipeline import losses
from pipeline.data.imageset import ImageSet
from pipeline.models.classifier import Classifier, ClassifierSpec, build_classifier
from pipeline.train.classification import CrossEntropyObjective, DistillationObjective
from pipeline.train.objectives import Objective
from pipeline.replica import Replica
from pipeline.setting import Setting
from pipeline.train.recipes import augment_for, initial_weights


def classifier_spec(backbone: cfg.BackboneConfig, channels: int, num_classes: int) -> ClassifierSpec:
    kwargs = {"widths": list(backbone.widths)} if backbone.widths is not None else {}
    return ClassifierSpec(backbone=backbone.backbone, num_classes=num_classes, in_channels=channels,
                          backbone_kwargs=kwargs)


def classifier_teacher_objective(params: cfg.Params, name: str, images: ImageSet) -> tuple[Objective, ClassifierSpec]:
    """The cross-entropy teacher `name` of the classification experiment (initialised from `seed`), and its spec."""
    section = params.classification
    with initial_weights(params.seed):
        spec = classifier_spec(section.teachers[name].model, images.channels, images.num_classes)
        return CrossEntropyObjective(build_classifier(spec), augment_for(section.augmentation, params.data, images)), spec


def classifier_student_objective(params: cfg.Params, replica: Replica, teacher: Classifier,
                                 images: ImageSet) -> tuple[Objective, ClassifierSpec]:
    """A student classifier initialised from its replica's seed: cross-entropy alone, or plus the method's
    transfer term from `teacher`."""
    with initial_weights(replica.seed):
        return _student_objective(params, replica, teacher, images)


def _student_objective(params: cfg.Params, replica: Replica, teacher: Classifier,
                       images: ImageSet) -> tuple[Objective, ClassifierSpec]:
    section = params.classification
    spec = classifier_spec(section.students[replica.student], images.channels, images.num_classes)
    model = build_classifier(spec)
    augment = augment_for(section.augmentation, params.data, images)
    chosen = section.methods[replica.method].in_setting(Setting.CLASSIFICATION)
    if chosen.loss is None:
        return CrossEntropyObjective(model, augment), spec
    # A classifier's penultimate feature is its pooled feature; RepDistiller's CIFAR CRD also draws
    # other-class negatives (dataset/cifar100.py, cls_negative).
    context = {"student_dim": model.embedding_dim, "teacher_dim": teacher.embedding_dim, "n_data": len(images),
               "dataset_labels": images.labels}
    term = losses.build_with(chosen.loss, chosen.params, context)
    objective = DistillationObjective(model, teacher, augment, term, chosen.transfer_weight, ce_weight=chosen.ce_weight)
    return objective, spec
