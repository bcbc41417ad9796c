"""A Proxy-Anchor teacher's self-supervised start (`teachers.NAME.pretrain`, `config.PretrainConfig`).

Kim et al. (CVPR 2021, Sec. 5.1) start the Table 1 teachers and students from ImageNet-pretrained backbones;
from random weights, the CPU profile's 100-step teacher is weaker than raw pixels. The analogue here trains
SimCLR (or MoCo v2) on the teacher's own train images first, in the teacher's stage and folder
(`pretrain/`, checkpointed and resumed like any training), then starts the teacher from that backbone. The
teacher file carries the starting weights (`save_model(initial_backbone=...)`), and the students whose
backbone is the teacher's start from them too (`recipes.student_backbone`). The search's bench does the
same on its fit split only, so the validation classes stay unseen by the pretraining as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.data import ImageSet
from pipeline.train.loop import MetricLogger
from pipeline.train.recipes import Backbone, pretraining_objective
from pipeline.train.session import train_and_save

PRETRAIN_FOLDER = "pretrain"
PRETRAIN_PREFIX = "pretrain/"  # its MLflow metrics, beside the teacher's own on the teacher's run


class _Prefixed:
    """The teacher run's logger, its keys under `pretrain/` so the two trainings' curves stay apart."""

    def __init__(self, logger: MetricLogger) -> None:
        self.logger = logger

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics({f"{PRETRAIN_PREFIX}{key}": value for key, value in metrics.items()}, step)


def train_teacher(params: Params, name: str, images: ImageSet, out: Path, settings: dict[str, Any],
                  logger: MetricLogger, description: str) -> dict[str, float]:
    """Train embedding teacher `name` on `images` into `out` (resuming): its pretraining where declared, then
    its own objective from that start, saved with the start (`save_model(initial_backbone=...)`); the summary.
    The teacher stage and the search's bench both train a teacher so."""
    from pipeline.models.embedding_model import save_model
    from pipeline.train.recipes import teacher_objective, teacher_sampler

    start = pretrained_backbone(params, name, images, out, settings, logger, description)
    objective, spec = teacher_objective(params, name, images, start)
    return train_and_save(objective, images, params.teachers[name].train, out, settings, logger, description,
                          lambda path: save_model(objective.model, spec, path, start), seed=params.seed,
                          samples_per_class=teacher_sampler(params, name))


def pretrained_backbone(params: Params, name: str, images: ImageSet, out: Path, settings: dict[str, Any],
                        logger: MetricLogger, description: str) -> Backbone:
    """Train (or resume, or find finished) teacher `name`'s pretraining on `images` into `out/pretrain`, and
    return its backbone weights; None when the teacher declares no `pretrain`. `settings` are the teacher's
    (its `pretrain` section among them): a change to them starts the pretraining over."""
    if params.teachers[name].pretrain is None:
        return None
    from pipeline.models.embedding_model import save_model

    objective, spec = pretraining_objective(params, name, images)
    train_and_save(objective, images, params.teachers[name].pretraining().train, out / PRETRAIN_FOLDER, settings,
                   _Prefixed(logger), f"{description} pretraining", lambda path: save_model(objective.model, spec, path),
                   seed=params.seed)
    return {key: value.detach().clone() for key, value in objective.model.backbone.state_dict().items()}
