"""Typed schema of `params.yaml`: validation before any compute, and the dotted keys DVC shows.

Every section is a strict pydantic model (unknown keys are errors), so a typo in `params.yaml`
fails in milliseconds with the dotted key and a close-match suggestion, instead of after a teacher
has trained. `ConfigError` carries one readable line; stages print it and exit non-zero.
"""
from __future__ import annotations

import re
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from pipeline.data import AUGMENTATIONS, DATASETS, TUNABLE_AUGMENTATIONS
from pipeline.infra import dotted_keys, parse_endpoint
from pipeline.setting import TRANSFER_SETTINGS, Role, Setting

if TYPE_CHECKING:
    from pipeline.replica import Replica

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
# A validator's message that starts with FIELD_MARK + "key: " names a key inside the section it checks;
# the error line then shows the full dotted key (`_describe`).
FIELD_MARK = "@"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*\Z")  # \Z, not $: "$" also matches before a final newline
# Names become file names, three joined in one (`outputs/eval/TEACHER-STUDENT-LOSS-seedN`): 64 characters
# each keeps every one under the 255 bytes a file name may have on Linux filesystems.
NAME_MAX_LENGTH = 64
PATH_MAX_LENGTH = 4096  # Linux's PATH_MAX; a file name within it is at most 255 bytes
# The control student: trained with its teacher's own objective (NT-Xent / MoCo / Proxy-Anchor), no teacher signal.
TEACHER_OBJECTIVE = "teacher_objective"
# The paper's loss, which every other method of a grid is compared with (paired by seed) and whose soft labels
# the teachers' label gap measures: named here, below the report and the teacher stage that both read it.
RELAXED = "relaxed_contrastive"
# Self-Taught Metric Learning (Kim et al., CVPR 2022): the method the self-taught grid's others are compared with.
STML = "stml"


def reference_loss(setting: Setting) -> str:
    """The loss every other method of `setting`'s grid is compared with: STML in the self-taught setting,
    the paper's relaxed contrastive loss elsewhere."""
    return STML if setting is Setting.SELF_TAUGHT else RELAXED


def check_name(key: str, name: str) -> None:
    """A grid name (teacher, student, loss, method), refused before DVC or the filesystem would refuse it."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"{key}: names must match {NAME_PATTERN.pattern} (they become paths)")
    if len(name) > NAME_MAX_LENGTH:
        raise ValueError(f"{key}: {len(name)} characters, over {NAME_MAX_LENGTH} (names become file names, three "
                         "joined in one)")


class ConfigError(ValueError):
    """params.yaml is invalid; the message is one line naming the dotted key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _backbones() -> tuple[str, ...]:
    from pipeline.models.registry import BACKBONES

    return tuple(BACKBONES)


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        hint = get_close_matches(value, allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown {what} {value!r}{suggestion}; allowed: {', '.join(allowed)}")
    return value


Probability = Annotated[float, Field(ge=0, le=1)]


class AugmentationConfig(Strict):
    """A view recipe by name (`pipeline.data.augment.RECIPES`), with any of its strengths set in place of the
    recipe's: `augmentation: simclr` or `augmentation: {name: simclr, jitter_strength: 0.5}`. Dumped back to
    the plain name when no strength is set, so dotted keys stay those of params.yaml."""

    name: str
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] | None = None
    jitter_strength: NonNegativeFloat | None = None
    grayscale_probability: Probability | None = None
    blur_probability: Probability | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _known_augmentation(cls, value: str) -> str:
        return _choice(value, AUGMENTATIONS, "augmentation")

    @model_validator(mode="after")
    def _strengths_fit_the_recipe(self) -> "AugmentationConfig":
        given = self.strengths()
        if given and self.name not in TUNABLE_AUGMENTATIONS:
            raise ValueError(f"{FIELD_MARK}{sorted(given)[0]}: augmentation {self.name!r} has no strengths to set "
                             f"(only {', '.join(TUNABLE_AUGMENTATIONS)} do)")
        if self.crop_scale is not None and self.crop_scale[0] > self.crop_scale[1]:
            raise ValueError(f"{FIELD_MARK}crop_scale: [min, max] with min <= max, got {list(self.crop_scale)}")
        return self

    def strengths(self) -> dict[str, Any]:
        """The strengths set here (the rest are the recipe's)."""
        return {k: v for k, v in self if k != "name" and v is not None}

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        dumped = handler(self)
        return dumped["name"] if not self.strengths() else {k: v for k, v in dumped.items() if v is not None}


class DataConfig(Strict):
    name: str
    root: str = "data"
    download: bool = False
    image_size: PositiveInt
    load_size: PositiveInt | None = None
    protocol: Literal["retrieval", "classification"] = "retrieval"
    workers: Annotated[int, Field(ge=0)] = 2

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _choice(value, DATASETS, "dataset")

    @field_validator("root")
    @classmethod
    def _a_path_the_filesystem_takes(cls, value: str) -> str:
        longest = max((len(part.encode()) for part in Path(value).parts), default=0)
        if longest > 255 or len(value.encode()) > PATH_MAX_LENGTH:
            raise ValueError(f"a path of {len(value):,} characters with a {longest:,}-byte name; the filesystem "
                             f"takes names of at most 255 bytes and paths of at most {PATH_MAX_LENGTH}")
        return value

    def given_root(self) -> Path | None:
        """`root` when the user pointed it somewhere (not the default folder): it must then exist, never to be
        replaced by another copy of the data set (Debian's Fashion-MNIST, FASHION_MNIST_DIR)."""
        return None if self.root == type(self).model_fields["root"].default else Path(self.root)

    @model_validator(mode="after")
    def _crop_fits(self) -> "DataConfig":
        if self.load_size is not None and self.load_size < self.image_size:
            raise ValueError(f"load_size ({self.load_size}) must be >= image_size ({self.image_size}): crops cannot upsample")
        return self


class BackboneConfig(Strict):
    backbone: str
    widths: tuple[PositiveInt, ...] | None = None

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return _choice(value, _backbones(), "backbone")

    @model_validator(mode="after")
    def _widths_only_for_small_nets(self):
        if self.widths is not None and self.backbone != "small_resnet":
            raise ValueError(f"widths applies to backbone 'small_resnet' only, not {self.backbone!r}")
        return self


class ModelConfig(BackboneConfig):
    embedding_dim: PositiveInt | None = None  # None: the pooled backbone features are the embedding
    weights_path: str | None = None

    def backbone_fields(self) -> dict[str, Any]:
        """The backbone's architecture: two models with equal fields can exchange backbone weights."""
        return {name: getattr(self, name) for name in BackboneConfig.model_fields}


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: PositiveFloat
    weight_decay: NonNegativeFloat = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    warmup_epochs: NonNegativeFloat = 0.0
    milestones_epochs: tuple[PositiveInt, ...] = ()  # empty: cosine decay; else lr x gamma at each epoch listed
    gamma: Fraction = 0.1
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0  # the cosine schedule's floor, as a fraction of lr


class TrainConfig(Strict):
    """One `train` section; the training loop (`pipeline.train.loop.fit`) reads it as it is.

    `batch_size` counts images per optimiser step over all processes (each image gives two views in the
    SSL and transfer recipes); `max_steps` caps the run below `epochs` full epochs. `amp` is the autocast
    dtype on CUDA, and on the CPU too with `amp_on_cpu`. `channels_last` is on by default for CUDA and CPU alike: on this project's 2-core CPU it made the
    small-ResNet SimCLR step 27% faster (benchmarks/results/train_throughput.md).
    """

    epochs: PositiveInt
    max_steps: PositiveInt | None = None
    batch_size: Annotated[int, Field(ge=2)]
    optimizer: OptimizerConfig
    checkpoint_every_steps: PositiveInt | None = None
    log_every_steps: PositiveInt = 10
    amp: Literal["bf16", "fp16", "off"] = "bf16"
    # Off by default: the 2-core CPUs here have no bf16 matrix units, and CPU autocast only slows them. The
    # default test suite turns it on to run every recipe's AMP path as CUDA runs it (tests/test_amp.py).
    amp_on_cpu: bool = False
    # cuDNN's autotuner: off, as measured on an H200 (SimCLR fit at batch 512: 5,875 img/s off, 4,733 on;
    # the network alone 24,427 vs 25,104: shared/gpu/PROFILE.md). CUDA only.
    cudnn_benchmark: bool = False
    # torch.compile of the trained network's backbone (nn.Module.compile, in place: checkpoints keep their
    # keys). Off until measured on a GPU; on this 2-core CPU see BENCHMARKS.md.
    compile: bool = False
    channels_last: bool = True
    grad_clip_norm: PositiveFloat | None = None
    sync_batchnorm: bool = True  # under CUDA DDP
    # >1 or "auto" (one per visible GPU): the stage relaunches itself under torchrun (pipeline.infra.launch);
    # batch_size stays the global batch.
    processes: PositiveInt | Literal["auto"] = 1
    # >1: machines joined by torchrun's c10d rendezvous (pipeline.infra.launch); "auto": as many as the launcher
    # that started the stage (torchrun --nnodes, srun) has, else 1. `processes` counts per node.
    nodes: PositiveInt | Literal["auto"] = 1
    # host:port every node reaches (else MASTER_ADDR / MASTER_PORT, or the SLURM job's first node), and how
    # long the nodes may take to gather. Where the job meets, not what it computes: left out of the dumped
    # section, so the run fingerprint and the MLflow params do not change with the cluster's host names.
    rendezvous: str | None = Field(default=None, exclude=True)
    rendezvous_timeout_s: PositiveInt = Field(default=300, exclude=True)

    @field_validator("rendezvous")
    @classmethod
    def _endpoint_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_endpoint(value)
        return value


class MocoConfig(Strict):
    """`variant`: "symmetric" (the default, so existing runs keep their meaning) scores both view pairs,
    with momentum on lightly's cosine schedule from `momentum` to 1; "v2" is MoCo v2 as its authors ran it
    (He et al. CVPR 2020, Chen et al. 2020; facebookresearch/moco builder.py): q from view 0, k from view 1,
    the loss once, constant `momentum`, shuffle BN with `bn_splits` BatchNorm groups per process (the
    official CIFAR-10 demo's SplitBatchNorm; 1: one group per process, as on each GPU of the DDP code)."""

    variant: Literal["symmetric", "v2"] = "symmetric"
    queue_size: PositiveInt = 4096
    # One field, its default per variant (filled in before validation, so a dumped section shows the value
    # used): 0.99, where the symmetric form's cosine schedule starts, as before; 0.999, MoCo v2's constant
    # (builder.py at ImageNet scale; its CIFAR-10 demo runs 0.99). Both are the key encoder's m; only the
    # schedule differs, so a second field would let a profile set the one its variant ignores.
    momentum: Fraction
    bn_splits: PositiveInt | None = None  # v2 only; left out there: 8, the demo's

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            v2 = data.get("variant") == "v2"
            data = {"momentum": 0.999 if v2 else 0.99, **({"bn_splits": 8} if v2 else {}), **data}
        return data

    @model_validator(mode="after")
    def _shuffle_bn_is_v2s(self) -> "MocoConfig":
        if self.variant == "symmetric" and self.bn_splits is not None:
            raise ValueError(f"{FIELD_MARK}bn_splits: only variant v2 has shuffle BN (the symmetric form runs plain "
                             "BatchNorm); leave bn_splits out or set variant: v2")
        return self


class ProxyAnchorConfig(Strict):
    margin: NonNegativeFloat = 0.1
    alpha: PositiveFloat = 32.0
    proxy_lr_multiplier: PositiveFloat = 100.0
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    frozen_bn: bool = False
    samples_per_class: PositiveInt | None = None  # None: random batches (the original recipe); K: P x K batches


class PretrainConfig(Strict):
    """A self-supervised start for a Proxy-Anchor teacher's backbone: Kim et al. (CVPR 2021, Sec. 5.1) start
    every Table 1 network from ImageNet weights; the CPU analogue is SimCLR (or MoCo v2) on the teacher's own
    train images, so the unseen test classes stay unseen. The students whose backbone equals the teacher's
    start from the same weights (`pipeline.train.pretraining`)."""

    method: Literal["simclr", "moco"] = "simclr"
    augmentation: AugmentationConfig = AugmentationConfig(name="simclr")
    temperature: PositiveFloat = 0.5
    projection_dim: PositiveInt = 128
    moco: MocoConfig = MocoConfig()
    train: TrainConfig


class TeacherConfig(Strict):
    method: Literal["simclr", "moco", "proxy_anchor"]
    model: ModelConfig
    projection_dim: PositiveInt = 128
    augmentation: AugmentationConfig
    temperature: PositiveFloat = 0.5
    moco: MocoConfig = MocoConfig()
    proxy_anchor: ProxyAnchorConfig = ProxyAnchorConfig()
    train_classes: tuple[Annotated[int, Field(ge=0)], ...] | None = None
    transfer_embedding: Literal["projection", "backbone", "embedding"] = "projection"
    pretrain: PretrainConfig | None = None
    train: TrainConfig

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        """Without `pretrain` when none is declared: a teacher's dotted keys, MLflow params and checkpoint
        fingerprints stay those of params.yaml."""
        dumped = handler(self)
        if self.pretrain is None:
            dumped.pop("pretrain", None)
        return dumped

    def pretraining(self) -> "TeacherConfig":
        """The self-supervised teacher that `pretrain` trains: this teacher's backbone, no embedding head."""
        pretrain = self.pretrain
        return TeacherConfig(method=pretrain.method, model=ModelConfig(**self.model.backbone_fields()),
                             projection_dim=pretrain.projection_dim, augmentation=pretrain.augmentation,
                             temperature=pretrain.temperature, moco=pretrain.moco, train_classes=self.train_classes,
                             transfer_embedding="backbone", train=pretrain.train)

    @property
    def setting(self) -> Setting:
        """The setting of this teacher and its students (`Setting.of_teacher`)."""
        return Setting.of_teacher(self.method)

    @model_validator(mode="after")
    def _consistent(self) -> "TeacherConfig":
        if self.method == "proxy_anchor" and self.transfer_embedding == "projection":
            raise ValueError("a proxy_anchor teacher has no projection head: set transfer_embedding to 'embedding'")
        if self.method == "proxy_anchor" and self.model.embedding_dim is None:
            raise ValueError("model.embedding_dim: a proxy_anchor teacher needs an embedding head (its proxies live there)")
        if self.method != "proxy_anchor" and self.model.embedding_dim is not None:
            raise ValueError(f"model.embedding_dim: a {self.method} teacher trains its backbone and projection head only; "
                             "an embedding head would stay untrained. Leave embedding_dim out: the teacher is "
                             "evaluated on its pooled backbone features")
        if self.pretrain is not None and self.method != "proxy_anchor":
            raise ValueError(f"{FIELD_MARK}pretrain: a {self.method} teacher is itself self-supervised; only a proxy_anchor "
                             "teacher starts from a self-supervised backbone")
        if self.model.weights_path is not None and self.pretrain is not None:
            raise ValueError(f"{FIELD_MARK}pretrain: the backbone already starts from model.weights_path; declare "
                             "one of the two")
        if self.pretrain is not None and (self.train.processes != 1 or self.train.nodes != 1):
            raise ValueError(f"{FIELD_MARK}pretrain: a pretrained start runs in one process only for now (a second "
                             "training in the same torchrun job would re-open its process group); set "
                             "train.processes and train.nodes to 1")
        if self.method == "moco" and self.moco.variant == "v2":
            if self.train.batch_size % self.moco.bn_splits:
                raise ValueError(f"{FIELD_MARK}train.batch_size: {self.train.batch_size} images do not split into "
                                 f"moco.bn_splits = {self.moco.bn_splits} equal BatchNorm groups")
            if self.train.sync_batchnorm and (self.train.processes != 1 or self.train.nodes != 1):
                raise ValueError(f"{FIELD_MARK}train.sync_batchnorm: MoCo v2's shuffle BN needs BatchNorm per process "
                                 "(the official DDP code); SyncBatchNorm pools the whole batch, which leaves "
                                 "the shuffle nothing to split. Set it false")
        return self


class StudentConfig(Strict):
    model: ModelConfig
    # Its Table 1 role relative to the teachers it learns from (pipeline/setting.py): declared, so the
    # report groups Table 1 by it instead of guessing from the trained models.
    role: Role


class TunedConfig(Strict):
    """What the hyperparameter search chose for one method in one setting (pipeline/search, on the validation
    split): params over the declared ones, the weight of its extra term (the Proxy-Anchor term of a transfer
    loss, the transfer term of a classification method), and the learning rate of its students."""

    params: dict[str, Any] = {}
    proxy_anchor_weight: NonNegativeFloat | None = None
    transfer_weight: NonNegativeFloat | None = None
    lr: PositiveFloat | None = None


class Tunable(Strict):
    """A method entry the search tunes: `tuned` maps a setting to the values chosen there (written by
    `python -m pipeline.search` through a profile overlay, never by hand); the students of that setting train
    with `in_setting` and `train_in`. A subclass declares `params` and `tuned` (after its own fields, so
    dumps keep params.yaml's order)."""

    if TYPE_CHECKING:
        params: dict[str, Any]
        tuned: dict[Setting, TunedConfig]

    def in_setting(self, setting: Setting) -> "Tunable":
        """This entry as its students in `setting` train with it: the search's values over the declared ones."""
        tuned = self.tuned.get(setting)
        update: dict[str, Any] = {"tuned": {}}
        if tuned is not None:
            update["params"] = {**self.params, **tuned.params}
            update.update({k: v for k, v in tuned if k in type(self).model_fields and k != "params" and v is not None})
        return self.model_copy(update=update)

    def train_in(self, setting: Setting, train: TrainConfig) -> TrainConfig:
        """`train` (its setting's section) with the learning rate the search chose for this entry, if any."""
        lr = self.tuned[setting].lr if setting in self.tuned else None
        if lr is None:
            return train
        return train.model_copy(update={"optimizer": train.optimizer.model_copy(update={"lr": lr})})

    def _tuned_in(self, settings: tuple[Setting, ...], weight: str) -> None:
        for setting, tuned in self.tuned.items():
            if setting not in settings:
                raise ValueError(f"{FIELD_MARK}tuned.{setting}: this entry serves {', '.join(settings)} only")
            other = next((k for k in ("proxy_anchor_weight", "transfer_weight") if k != weight and getattr(tuned, k)
                          is not None), None)
            if other is not None:
                raise ValueError(f"{FIELD_MARK}tuned.{setting}.{other}: this entry's extra term is its {weight}")

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        """Without `tuned` when nothing was tuned, so an untuned entry's dotted keys, MLflow params and
        checkpoint fingerprints are those of params.yaml."""
        dumped = handler(self)
        if not self.tuned:
            dumped.pop("tuned", None)
        return dumped


class LossConfig(Tunable):
    name: str  # a registered loss (checked with its params by pipeline.contracts) or the control
    params: dict[str, Any] = {}  # checked against the loss's declared `Params` model (pipeline.contracts)
    # Weight of the Proxy-Anchor term added on the student embedding; None: the paper's choice, declared by
    # the loss (`proxy_anchor`: 1 for FitNet, Attention and CRD, 0 otherwise).
    proxy_anchor_weight: NonNegativeFloat | None = None
    tuned: dict[Literal[tuple(TRANSFER_SETTINGS)], TunedConfig] = {}

    @model_validator(mode="after")
    def _control_takes_no_params(self) -> "LossConfig":
        # A loss may serve both transfer settings; each is searched on its own validation split.
        self._tuned_in(TRANSFER_SETTINGS, "proxy_anchor_weight")
        if self.name == TEACHER_OBJECTIVE and (self.params or any(t.params or t.proxy_anchor_weight is not None
                                                                  for t in self.tuned.values())):
            raise ValueError(f"the {TEACHER_OBJECTIVE} control takes no params (only a tuned lr)")
        return self


class Grid(Strict):
    """A grid of stages: DVC's matrix makes one stage per combination of its lists (and seed)."""

    def empty_field(self) -> str | None:
        """The first list that is empty, which leaves the matrix without a stage; None when it has stages."""
        return next((field for field, names in self if not names), None)

    def declares_models(self) -> bool:
        """Whether the matrix makes any stage: every list non-empty."""
        return self.empty_field() is None

    def teachers_with_models(self) -> tuple[str, ...]:
        """The grid's teachers, or none where the matrix makes no stage: those the report covers."""
        return self.teacher if self.declares_models() else ()


class GridConfig(Grid):
    teacher: tuple[str, ...]
    student: tuple[str, ...]
    loss: tuple[str, ...]


class BalancedSamplerConfig(Strict):
    classes_per_batch: PositiveInt
    samples_per_class: PositiveInt


class SettingTransferConfig(Strict):
    """How the students of one setting train: the views they see, how many, the training budget and the
    grid of (teacher, student, loss) stages. A section whose grid declares stages must set every key
    (dvc.yaml's transfer stages depend on each by name: a key left to a default would be a missing
    parameter to DVC); one with an empty grid needs only the grid."""

    augmentation: AugmentationConfig | None = None
    # Augmented views of every image per step, each seen by teacher and student: 2 in the SSL setting
    # (SimCLR-style pairs), 1 or 2 in the metric-learning one (LabelRelaxation train_target.py --view,
    # default 1). A Proxy-Anchor or SSL control (own_objective) trains with its own objective's views.
    views: Literal[1, 2] | None = None
    train: TrainConfig | None = None
    grid: GridConfig

    @model_validator(mode="after")
    def _complete_when_used(self):
        if self.grid.declares_models():
            for key in type(self).model_fields:
                if key not in self.model_fields_set:
                    raise ValueError(f"{FIELD_MARK}{key}: required key is missing (the grid declares stages, "
                                     "and dvc.yaml's transfer stages depend on it)")
        return self


class SelfSupervisedTransferConfig(SettingTransferConfig):
    """Students of SimCLR / MoCo teachers. No class labels exist here: no sampler key (class-balanced
    batches read labels), and pipeline.contracts refuses a loss that reads labels in the grid."""


class MetricLearningTransferConfig(SettingTransferConfig):
    """Students of Proxy-Anchor teachers (the paper's Table 1): labelled training classes, evaluation on
    the unseen ones."""

    # P classes x K images per batch (the metric-learning recipe); null: random batches.
    sampler: BalancedSamplerConfig | None = None

    @model_validator(mode="after")
    def _sampler_fills_the_batch(self) -> "MetricLearningTransferConfig":
        if self.sampler is not None and self.train is not None:
            batch = self.sampler.classes_per_batch * self.sampler.samples_per_class
            if batch != self.train.batch_size:
                raise ValueError(f"{FIELD_MARK}sampler: classes_per_batch x samples_per_class = {batch} must equal "
                                 f"train.batch_size ({self.train.batch_size})")
        return self


class SelfTaughtTransferConfig(SettingTransferConfig):
    """Self-taught metric learning (STML) on a metric-learning split without its labels: the grid's teachers
    are self-supervised models of the same unlabelled images; STML (and the SimCLR / MoCo control) start from
    them, the transfer losses learn from them frozen. No labels reach any loss, sampler or choice here: no
    sampler key, and pipeline.contracts refuses a loss that reads labels in the grid."""

    @model_validator(mode="after")
    def _one_process(self) -> "SelfTaughtTransferConfig":
        if self.train is not None and (self.train.processes != 1 or self.train.nodes != 1):
            raise ValueError(f"{FIELD_MARK}train.processes: self-taught students train in one process for now (each "
                             "process would find its own nearest-neighbour batches); set train.processes and "
                             "train.nodes to 1")
        return self


class TransferConfig(Strict):
    """One section per setting, so each has its own augmentation, sampler and budget, and DVC re-runs
    only the students of the section that changed."""

    self_supervised: SelfSupervisedTransferConfig
    metric_learning: MetricLearningTransferConfig
    self_taught: SelfTaughtTransferConfig

    def of(self, setting: Setting) -> SettingTransferConfig:
        """The section of a transfer setting (a teacher's `TeacherConfig.setting`)."""
        return getattr(self, _choice(setting, TRANSFER_SETTINGS, "setting"))


class ProbeConfig(Strict):
    enabled: bool = True  # off for SOP-like sets: thousands of classes with 2-12 images each
    train_samples: PositiveInt | None = None
    val_fraction: Fraction = 0.1
    weight_decays: tuple[PositiveFloat, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


class KnnConfig(Strict):
    enabled: bool = True
    k: PositiveInt = 200
    temperature: PositiveFloat = 0.1


class RetrievalConfig(Strict):
    ks: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (1, 2, 4, 8)
    distance: Literal["euclidean", "cosine"] = "euclidean"
    memory_budget_mb: PositiveInt = 512


class EvaluationConfig(Strict):
    batch_size: PositiveInt = 512
    tsne_points: Annotated[int, Field(ge=0)] = 1000  # 0 skips the t-SNE map (seconds per model on CPU)
    probe: ProbeConfig = ProbeConfig()
    knn: KnnConfig = KnnConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    # NMI clusters the test embeddings with k = number of classes (pipeline.eval.kmeans); false skips it and
    # the report says "NMI off" (SOP on CPU: 17.9 of the 20.9 minutes of one evaluation, BENCHMARKS.md).
    nmi: bool = True


class DistillationMethodConfig(Tunable):
    """One row of the classification table: cross-entropy plus (optionally) one transfer term."""

    loss: str | None = None  # None: the student trained alone (the control); else a registered loss
    params: dict[str, Any] = {}  # checked against the loss's declared `Params` model (pipeline.contracts)
    ce_weight: NonNegativeFloat = 1.0
    transfer_weight: NonNegativeFloat = 1.0
    tuned: dict[Literal[Setting.CLASSIFICATION.value], TunedConfig] = {}

    @model_validator(mode="after")
    def _params_need_a_loss(self) -> "DistillationMethodConfig":
        self._tuned_in((Setting.CLASSIFICATION,), "transfer_weight")
        if self.loss is None and (self.params or any(t.params or t.transfer_weight is not None
                                                     for t in self.tuned.values())):
            raise ValueError(f"params given without a loss: {sorted(self.params) or 'tuned'}")
        return self


class ClassificationGridConfig(Grid):
    teacher: tuple[str, ...] = ()
    student: tuple[str, ...] = ()
    method: tuple[str, ...] = ()


class ClassifierTeacherConfig(Strict):
    model: BackboneConfig
    train: TrainConfig


class ClassificationConfig(Strict):
    """Classifier distillation (the paper's third experiment): CE teachers, students with CE + one term.

    Empty by default, so profiles without it declare no classification stages.
    """

    augmentation: str = "cifar"
    teachers: dict[str, ClassifierTeacherConfig] = {}
    students: dict[str, BackboneConfig] = {}
    methods: dict[str, DistillationMethodConfig] = {}
    train: TrainConfig | None = None
    grid: ClassificationGridConfig = ClassificationGridConfig()

    @field_validator("augmentation")
    @classmethod
    def _known_augmentation(cls, value: str) -> str:
        return _choice(value, AUGMENTATIONS, "augmentation")

    @model_validator(mode="after")
    def _grid_declared(self) -> "ClassificationConfig":
        for section in ("teachers", "students", "methods"):
            for name in getattr(self, section):
                check_name(f"{section}.{name}", name)
        for field, section in (("teacher", "teachers"), ("student", "students"), ("method", "methods")):
            for name in getattr(self.grid, field):
                if name not in getattr(self, section):
                    raise ValueError(f"grid.{field}: {name!r} is not in classification.{section} "
                                     f"(declared: {', '.join(getattr(self, section)) or 'none'})")
        if self.grid.student and self.train is None:
            raise ValueError("train: required when grid.student is not empty (the students' training settings)")
        return self


class ValidationConfig(Strict):
    """The split every hyperparameter is chosen on (pipeline/search), never the test split (Musgrave et al.,
    A Metric Learning Reality Check, ECCV 2020). Metric learning: class-disjoint, as test is: `classes` are
    held out of the metric teachers' train classes, a search teacher is trained on the rest by its own recipe,
    and students are scored on the held-out classes' train images, the way Table 1 scores the unseen ones.
    Self-supervised and classification: `fraction` of the train images, held out of the search teacher's and
    students' training."""

    classes: tuple[Annotated[int, Field(ge=0)], ...] = ()  # none: the metric-learning grid cannot be searched
    fraction: Fraction = 0.1
    # Validation images scored per trial and checkpoint at most (a seeded subset; MAP@R on all of them costs
    # more than the training step on 2 cores).
    max_images: PositiveInt = 2000


class SearchConfig(Strict):
    """The hyperparameter search (pipeline/search): the same budget, sampler and pruner for every method of each
    grid, each drawing its loss's declared space (`Loss.search_space`), its extra term's weight and the lr."""

    trials: PositiveInt = 8  # per (setting, method), counted over every worker of the study
    student: str | None = None  # the student every trial trains (a key of `students`); null: each grid's first
    # Validation MAP@R is reported every this many steps; Optuna's median pruner stops a trial below the
    # median of earlier trials at the same step (after `startup_trials` complete ones).
    report_every_steps: PositiveInt = 25
    startup_trials: Annotated[int, Field(ge=0)] = 3
    lr_factor: PositiveFloat = 4.0  # lr drawn log-uniformly within [lr / factor, lr * factor] of its section
    # Optuna's storage: an RDB URL (the team PostgreSQL, docs/team-scale.md), so several processes or nodes
    # share one study; null: a SQLite file under outputs/search.
    storage: str | None = None


class IndexConfig(Strict):
    """The gallery indexes of `pipeline.deploy.index`: exact, and HNSW (faiss's `IndexHNSWFlat`) beside it."""

    k: PositiveInt = 10  # neighbours compared: the exact index's against the evaluation's, HNSW's against exact
    approximate: bool = True
    hnsw_m: PositiveInt = 32  # links per node (faiss's default)
    ef_construction: PositiveInt = 40  # faiss's default
    ef_search: PositiveInt = 64


class DeployConfig(Strict):
    """What the export stages measure of every trained model (pipeline/deploy, issue 30): ONNX Runtime latency
    at each batch size on each thread count (0: all the cores the stage may use), median of `repeats` runs; the
    gallery indexes; the int8 variant, calibrated on `calibration_images` train images; the MLflow Model
    Registry entry of each exported model."""

    batch_sizes: tuple[PositiveInt, ...] = (1, 64)
    threads: tuple[Annotated[int, Field(ge=0)], ...] = (1, 0)
    repeats: PositiveInt = 20
    index: IndexConfig = IndexConfig()
    int8: bool = True
    calibration_images: PositiveInt = 256
    registry: bool = True


class MlflowConfig(Strict):
    experiment: str = "embedding-transfer"

    @field_validator("experiment")
    @classmethod
    def _named(cls, value: str) -> str:
        """MLflow refuses a blank name only when the first run opens, after a teacher's start-up."""
        if not value.strip():
            raise ValueError("an experiment needs a name (MLflow refuses a blank one)")
        return value


class Params(Strict):
    # `seed`: the teachers and the evaluation protocol (probe subsample, its validation split), so every
    # replica is scored on the same sample; `seeds`: the replicas of each student stage (dvc.yaml's
    # matrix), each seed its own initial weights, augmentation stream and batch order.
    seed: Annotated[int, Field(ge=0)] = 0
    seeds: tuple[Annotated[int, Field(ge=0, strict=True)], ...]
    data: DataConfig
    teachers: dict[str, TeacherConfig]
    students: dict[str, StudentConfig]
    losses: dict[str, LossConfig]
    transfer: TransferConfig
    evaluation: EvaluationConfig = EvaluationConfig()
    classification: ClassificationConfig = ClassificationConfig()
    mlflow: MlflowConfig = MlflowConfig()
    validation: ValidationConfig = ValidationConfig()
    search: SearchConfig = SearchConfig()
    deploy: DeployConfig = DeployConfig()
    # Teacher name -> an official Proxy-Anchor source checkpoint (LabelRelaxation's
    # download_pretrained_source_models.sh files) that its teacher stage loads instead of training it.
    # `teachers.NAME` still says what the model is; its `train` section and `model.weights_path` (how it
    # would be trained) are then unused, so one entry here switches a profile to the released file. A
    # mapping of its own, not a key inside `teachers`: dvc.yaml's released_teacher stage iterates over it to
    # make each file a dependency (a foreach over `teachers` could only name a file every teacher has).
    released_teachers: dict[str, str] = {}

    @field_validator("seeds")
    @classmethod
    def _replicas(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        """Each seed names a replica's stage and folder (`-seed<N>`): at least one, none twice."""
        if not seeds:
            raise ValueError("needs at least one seed (each one replicates the student stages)")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds {repeated} are listed twice (each seed is one replica)")
        return seeds

    def grid(self, setting: Setting) -> GridConfig | ClassificationGridConfig:
        """The grid of `setting`'s student stages."""
        return self.classification.grid if setting is Setting.CLASSIFICATION else self.transfer.of(setting).grid

    def method(self, setting: Setting, name: str) -> LossConfig | DistillationMethodConfig:
        """Entry `name` of the methods `setting`'s grid names (`losses`, or `classification.methods`)."""
        return self.classification.methods[name] if setting is Setting.CLASSIFICATION else self.losses[name]

    def train_section(self, setting: Setting) -> TrainConfig:
        """The `train` section `setting`'s students train under (before any tuned learning rate)."""
        return self.classification.train if setting is Setting.CLASSIFICATION else self.transfer.of(setting).train

    def teacher(self, name: str) -> TeacherConfig:
        """`teachers.NAME`, or one line naming it and the declared ones."""
        if name not in self.teachers:
            raise KeyError(f"teachers.{name} is not in params.yaml (declared: {', '.join(self.teachers)})")
        return self.teachers[name]

    def checked(self, replica: "Replica") -> "Replica":
        """A student stage's replica, refused in one line where params.yaml does not declare it: a seed outside
        `seeds` would train a model that no report and no dvc.yaml stage reads."""
        if replica.seed not in self.seeds:
            raise ConfigError(f"--seed {replica.seed} is not one of params.yaml's seeds {list(self.seeds)}")
        if replica.setting is Setting.CLASSIFICATION:
            sections = (("classification.teachers", self.classification.teachers, replica.teacher),
                        ("classification.students", self.classification.students, replica.student),
                        ("classification.methods", self.classification.methods, replica.method))
        else:
            sections = (("teachers", self.teachers, replica.teacher), ("students", self.students, replica.student),
                        ("losses", self.losses, replica.method))
        for key, declared, name in sections:
            if name not in declared:
                raise KeyError(f"{key}.{name} is not in params.yaml (declared: {', '.join(declared) or 'none'})")
        if replica.setting is not Setting.CLASSIFICATION:
            found = self.teachers[replica.teacher].setting
            if found is not replica.setting.teacher_setting:
                raise ConfigError(f"teachers.{replica.teacher}: a {found} teacher has no students in the "
                                  f"{replica.setting} setting (the stage's --setting and --teacher disagree)")
        return replica

    @model_validator(mode="after")
    def _cross_references(self) -> "Params":
        for section in ("teachers", "students", "losses"):
            for name in getattr(self, section):
                check_name(f"{section}.{name}", name)
        for setting in TRANSFER_SETTINGS:
            grid = self.transfer.of(setting).grid
            for field, section in (("teacher", "teachers"), ("student", "students"), ("loss", "losses")):
                for name in getattr(grid, field):
                    if name not in getattr(self, section):
                        raise ValueError(
                            f"transfer.{setting}.grid.{field}: {name!r} is not in {section} "
                            f"(declared: {', '.join(getattr(self, section)) or 'none'})"
                        )
            for teacher in grid.teacher:
                found = self.teachers[teacher]
                if found.setting != setting.teacher_setting:
                    expected = "proxy_anchor" if setting is Setting.METRIC_LEARNING else "simclr or moco"
                    raise ValueError(f"transfer.{setting}.grid.teacher: {teacher!r} is a {found.method} teacher "
                                     f"({found.setting} setting: its students go in transfer.{found.setting}.grid); "
                                     f"this grid takes {expected}")
        for name, path in self.released_teachers.items():
            teacher = self.teachers.get(name)
            if teacher is None:
                raise ValueError(f"released_teachers.{name}: {name!r} is not in teachers (declared: "
                                 f"{', '.join(self.teachers) or 'none'}); the entry there says what the model is")
            if teacher.method != "proxy_anchor" or not path:
                raise ValueError(f"released_teachers.{name}: the released sources are Proxy-Anchor models, so "
                                 f"teachers.{name} needs method proxy_anchor and the entry a file path (got method "
                                 f"{teacher.method!r}, path {path!r})")
            if teacher.pretrain is not None:
                raise ValueError(f"released_teachers.{name}: teachers.{name} declares pretrain, but a released "
                                 f"teacher is loaded, not trained: delete teachers.{name}.pretrain")
        if self.search.student is not None and self.search.student not in self.students:
            raise ValueError(f"search.student: {self.search.student!r} is not in students "
                             f"(declared: {', '.join(self.students) or 'none'})")
        unseen = [t for setting in TRANSFER_SETTINGS if setting.unseen_classes for t in self.transfer.of(setting).grid.teacher]
        for teacher in unseen if self.validation.classes else ():
            # A teacher without train_classes trains on every class of the train split (CUB, Cars, SOP: the
            # class-disjoint half), which only the dataset knows: pipeline.search.split checks those.
            declared, held = self.teachers[teacher].train_classes, set(self.validation.classes)
            if len(held) < 2 or (declared is not None and (not held <= set(declared)
                                                           or len(set(declared) - held) < 2)):
                raise ValueError(f"validation.classes: {list(self.validation.classes)} must be two or more of "
                                 f"teachers.{teacher}.train_classes {list(self.teachers[teacher].train_classes or ())}"
                                 ", leaving two or more to fit on (the test classes are never validated on)")
        for name, teacher in self.teachers.items():
            if teacher.train_classes is not None:
                bad = [c for c in teacher.train_classes if c >= 1000]
                if bad or len(set(teacher.train_classes)) != len(teacher.train_classes):
                    raise ValueError(f"teachers.{name}.train_classes: duplicate or implausible class ids {teacher.train_classes}")
        return self


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that sits at `loc` (for close-match suggestions on unknown keys)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
        while get_origin(current) is Union or str(get_origin(current)) == "types.UnionType":
            options = [a for a in get_args(current) if a is not type(None)]
            current = options[0]
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


# Keys a section refuses on purpose, with the reason shown instead of the generic "unknown key".
REFUSED_KEYS = {
    ("transfer", "self_supervised", "sampler"): "the self-supervised setting has no class labels to balance "
    "batches by (a class-balanced sampler belongs in transfer.metric_learning)",
    ("transfer", "self_taught", "sampler"): "self-taught metric learning has no class labels to balance batches "
    "by: STML builds its batches from nearest neighbours in its own embedding",
    ("transfer", "self_taught", "labels"): "self-taught metric learning trains without labels; the class ids of "
    "its teacher's train_classes only pick the split, as the test protocol does",
}


def _describe(error: dict) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "<top level>"
    if error["type"] == "extra_forbidden" and loc in REFUSED_KEYS:
        return f"{key}: not allowed here: {REFUSED_KEYS[loc]}"
    if error["type"] == "extra_forbidden":
        known = _fields_at(Params, loc[:-1])
        hint = get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"; did you mean {'.'.join([*map(str, loc[:-1]), hint[0]])!r}?" if hint else ""
        return f"{key}: unknown key{suggestion} (allowed here: {', '.join(known)})"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith(FIELD_MARK):
        inner, message = message.removeprefix(FIELD_MARK).split(": ", 1)
        key = f"{key}.{inner}" if loc else inner
    elif not loc:  # the cross-section checks of `Params` start their messages with the dotted key
        return f"{message}"
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {_short(value)})"
    return f"{key}: {message}{shown}"


def _short(value: Any, limit: int = 60) -> str:
    """A value as the error line shows it: its repr, cut to `limit` characters (a 5,000-character path
    still makes one readable line)."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(str(value)):,} characters)"


def validate_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ConfigError with the first problem on one line.

    Every section's structure, types and ranges; what each loss entry's loss declares (its typed
    params, where it may be used) is checked by `pipeline.contracts`, which imports the losses.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        # A misspelt key also makes its correct spelling "missing": report the misspelling first.
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
        problems = [_describe(e) for e in errors]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}") from None
    return params


# How far YAML anchors and aliases may expand a parameters file: nodes after expansion per byte of the file.
# A params.yaml has a few nodes per line; a "billion laughs" file of 7.4 KB expands to 10^7 leaves, which
# cost DVC (it expands every alias while parsing) 93 s and 5.8 GB before any stage runs (issue 32).
MAX_NODES_PER_BYTE = 4


def check_expansion(root: yaml.Node | None, text: str, source: str) -> None:
    """Refuse YAML whose aliases expand far beyond the file: counted on the composed node graph `root`, where
    an alias is a reference to its anchor's node, so the count costs one visit per distinct node."""
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a node inside itself (a recursive alias) counts once
            children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                        else node.value if isinstance(node, yaml.SequenceNode) else [])
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]

    limit = MAX_NODES_PER_BYTE * max(len(text), 1024)
    if root is not None and (total := expanded(root)) > limit:
        raise ConfigError(f"{source}: its YAML anchors and aliases expand to {total:,} nodes, over {limit:,} for a "
                          f"file of {len(text):,} bytes; write the values out instead of aliasing them")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every error is a ConfigError naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read parameters file ({err.strerror})") from None
    loader = yaml.SafeLoader(text)  # composed once: the expansion is counted on the graph it constructs from
    try:
        root = loader.get_single_node()
        check_expansion(root, text, str(path))
        raw = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    finally:
        loader.dispose()
    return validate_params(raw, str(path))


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.config [PATH]`: the pre-flight check to run before `dvc repro` (README): DVC
    parses params.yaml, aliases expanded, before any stage of this project can refuse it."""
    import sys

    path = Path((argv if argv is not None else sys.argv[1:] or ["params.yaml"])[0])
    try:
        params = load_params(path)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{path}: valid ({len(params.teachers)} teachers, seeds {list(params.seeds)})")


def flatten(params: Params | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys as `dvc params diff` / `dvc exp show` print them; lists become JSON strings."""
    return dotted_keys(params.model_dump(mode="json") if isinstance(params, BaseModel) else params, prefix)


if __name__ == "__main__":
    main()
