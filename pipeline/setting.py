"""The paper's settings and Table 1's student roles, declared once as values.

A *setting* (Kim et al., CVPR 2021, Sec. 4) is what a teacher and its students are trained in: self-supervised
transfer (SimCLR / MoCo teachers, no labels), metric-learning transfer (a Proxy-Anchor teacher on labelled
classes, retrieval on unseen ones: Table 1), or classifier distillation (Sec. 4.4); and the follow-up's
self-taught metric learning (STML, Kim et al., CVPR 2022): Table 1's split without its labels, where the grid's
teacher is a self-supervised model of the same unlabelled images. Each setting owns how its
models pool, whether its training data has labels, its params section and grid, and the DVC stage family
that trains its students; everything else asks it.

A *role* is where a metric-learning student sits in Table 1 relative to its teacher: the same network and
dimension (self-transfer), the same network with fewer dimensions, or a smaller network. It is declared per
student in params.yaml (`students.NAME.role`), not guessed from the trained models.
"""
from __future__ import annotations

from enum import StrEnum


class Setting(StrEnum):
    """A setting; its value is what params.yaml, MLflow's `setting` tag and the summary keys spell."""

    # value, DVC stage family of its students, pooling of its models, labels, grid's method column, title
    SELF_SUPERVISED = ("self_supervised", "transfer", "avg", False, "loss", "self-supervised transfer")
    METRIC_LEARNING = ("metric_learning", "metric_transfer", "avg+max", True, "loss",
                       "metric-learning transfer (Table 1)")
    CLASSIFICATION = ("classification", "classifier_student", None, True, "method", "classification")
    SELF_TAUGHT = ("self_taught", "self_taught", "avg+max", False, "loss",
                   "self-taught metric learning (no labels, unseen classes)")

    def __new__(cls, value: str, stage: str, pooling: str | None, labels: bool, method_key: str, title: str):
        member = str.__new__(cls, value)
        member._value_ = value
        # SSL models pool by average, as SimCLR, MoCo, lightly and solo-learn do (their probe / kNN numbers
        # are what ours are compared with); metric-learning models sum average and max pooling, as the
        # Proxy-Anchor and LabelRelaxation code do (net/resnet.py).
        member.pooling = pooling
        member.labels = labels  # whether its training data has class labels a loss or sampler may read
        member.stage = stage
        member.method_key = method_key  # `loss` in a transfer grid, `method` in the classification grid
        member.title = title
        return member

    @property
    def grid_key(self) -> str:
        """The params.yaml key of this setting's grid."""
        return "classification.grid" if self is Setting.CLASSIFICATION else f"transfer.{self.value}.grid"

    @classmethod
    def of_teacher(cls, method: str) -> "Setting":
        """The setting of a teacher trained by `method`: Proxy-Anchor is labelled metric learning."""
        return cls.METRIC_LEARNING if method == "proxy_anchor" else cls.SELF_SUPERVISED

    def trained_on(self, images):
        """`images` (an `ImageSet` or `FileImageSet`) as this setting's students train on them: unlabelled where
        the setting has no labels (the class ids only picked the split), so no loss, sampler or choice can read
        a class. The transfer stage and the search's split both hand their images over through here."""
        return images if self.labels else images.unlabelled()

    @property
    def unseen_classes(self) -> bool:
        """Whether its students are scored on classes their training never saw (Table 1's protocol), so its
        validation split is class-disjoint too."""
        return self in (Setting.METRIC_LEARNING, Setting.SELF_TAUGHT)

    @property
    def teacher_setting(self) -> "Setting":
        """The setting of the teachers this setting's grid takes: a self-taught grid's teacher is a
        self-supervised model of its unlabelled images (its start, and the 2021 transfer's teacher)."""
        return Setting.SELF_SUPERVISED if self is Setting.SELF_TAUGHT else self


# One `transfer` section each; their students all train by `stages.transfer`.
TRANSFER_SETTINGS = (Setting.SELF_SUPERVISED, Setting.METRIC_LEARNING, Setting.SELF_TAUGHT)


class Role(StrEnum):
    """A student's Table 1 role relative to its teacher, in the paper's order."""

    SELF_TRANSFER = ("self_transfer", "self-transfer", "Self-transfer: the teacher's network and dimension")
    DIM_REDUCTION = ("dim_reduction", "dimensionality reduction",
                     "Dimensionality reduction: the teacher's network, fewer dimensions")
    COMPRESSION = ("compression", "compression", "Compression: a smaller network, fewer dimensions")

    def __new__(cls, value: str, short: str, title: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.short = short
        member.title = title
        return member
