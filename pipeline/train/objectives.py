"""What one training step computes, for each recipe; the loop (``loop.py``) is shared.

An objective is an ``nn.Module`` holding everything that is trained or carried between steps (model,
momentum encoder, MoCo queue, proxies, loss regressors), so its ``state_dict`` is the model part of a
checkpoint. ``forward(images, labels, indices)`` takes this rank's uint8 batch on the training device,
augments it there, and returns the loss of the global batch (batch-wise losses see embeddings
all-gathered over DDP ranks; see ``pipeline/distributed.py`` for why no gradient factor is needed).
MoCo's objective has its own module (``moco_objective.py``): only MoCo stages then import lightly's
model utilities, and torchvision with them (2.5 s of every other training stage's start-up, measured).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline import losses
from pipeline.data.samplers import SeededBatchSampler
from pipeline.distributed import gather_batch
from pipeline.losses.contract import Loss
from pipeline.models.embedding_model import TEACHER_EMBEDDINGS, EmbeddingModel, teacher_embedding
from pipeline.models.heads import global_pool

if TYPE_CHECKING:
    from pipeline.losses.proxy_anchor import ProxyAnchorLoss


def full_precision(device: torch.device) -> torch.autocast:
    """Losses run in float32 even under AMP: exp / log-sum-exp over similarities overflow in fp16. On every
    device alike, so that CPU autocast takes the path CUDA takes (tests/test_amp.py)."""
    return torch.autocast(device.type, enabled=False)


class Objective(nn.Module):
    """Base: augmentation on the device, optional channels_last, parameter groups with lr scales."""

    find_unused_parameters = False

    def __init__(self, augment: nn.Module) -> None:
        super().__init__()
        self.augment = augment
        self.memory_format = torch.contiguous_format

    def view(self, images: torch.Tensor) -> torch.Tensor:
        return self.augment(images).contiguous(memory_format=self.memory_format)

    def two_views(self, images: torch.Tensor) -> torch.Tensor:
        """(2n, C, H, W): first view of every image, then the second; both drawn on the device."""
        return torch.cat([self.view(images), self.view(images)])

    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for recipes that change what trains per epoch (Proxy-Anchor warm-up)."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook for state updated outside autograd (MoCo's momentum encoder)."""

    def before_optimizer_step(self) -> None:
        """Hook between the backward pass and the optimiser step (STML's momentum teacher moves there)."""

    def epoch_sampler(self, epoch: int, images: torch.Tensor, batch_size: int, seed: int) -> SeededBatchSampler | None:
        """Batches this objective draws itself for `epoch` from the training `images` (STML: nearest
        neighbours in its own embedding); None: the loop's random or class-balanced ones."""
        return None

    def setup(self, device: torch.device) -> None:
        """Move state the module tree does not own (the frozen teacher) to ``device``."""

    @property
    def model(self) -> EmbeddingModel:
        raise NotImplementedError


class SimCLRObjective(Objective):
    """NT-Xent on the projections of two views; both views go through one forward pass."""

    def __init__(self, model: EmbeddingModel, augment: nn.Module, temperature: float = 0.5) -> None:
        super().__init__(augment)
        if model.projection_head is None:
            raise ValueError("SimCLR needs a model with a projection head (projection='simclr')")
        self.encoder = model
        self.criterion = losses.build("ntxent", temperature=temperature)

    @property
    def model(self) -> EmbeddingModel:
        return self.encoder

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.encoder.projection(self.two_views(images)).chunk(2)
        with full_precision(images.device):
            return self.criterion(z0.float(), z1.float())


class ProxyAnchorObjective(Objective):
    """Proxy-Anchor teacher with the original recipe's options: proxies at ``proxy_lr_multiplier`` x lr,
    the first ``warmup_epochs`` training only the embedding head and the proxies, frozen BatchNorm."""

    def __init__(
        self,
        model: EmbeddingModel,
        augment: nn.Module,
        loss: nn.Module,
        proxy_lr_multiplier: float = 100.0,
        warmup_epochs: int = 0,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__(augment)
        if model.head is None:
            raise ValueError("Proxy-Anchor needs a model with an embedding head (embedding_dim set)")
        if not hasattr(loss, "proxies"):
            raise ValueError("loss must expose its proxies as `.proxies` (pipeline.losses 'proxy_anchor')")
        self.encoder = model
        self.criterion = loss
        self.proxy_lr_multiplier = proxy_lr_multiplier
        self.warmup_epochs = warmup_epochs
        self.freeze_batchnorm = freeze_batchnorm
        self.find_unused_parameters = warmup_epochs > 0
        if freeze_batchnorm:
            for module in self._batchnorms():
                module.requires_grad_(False)

    @property
    def model(self) -> EmbeddingModel:
        return self.encoder

    def _batchnorms(self):
        return [m for m in self.encoder.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> ProxyAnchorObjective:
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self._batchnorms():
                module.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        frozen = {id(p) for m in self._batchnorms() for p in m.parameters()} if self.freeze_batchnorm else set()
        backbone = [p for p in self.encoder.backbone.parameters() if id(p) not in frozen]
        return [
            {"params": backbone, "lr_scale": 1.0},
            {"params": list(self.encoder.head.parameters()), "lr_scale": 1.0},
            {"params": list(self.criterion.parameters()), "lr_scale": self.proxy_lr_multiplier},
        ]

    def on_epoch_start(self, epoch: int) -> None:
        trains_backbone = epoch >= self.warmup_epochs
        frozen = {id(p) for m in self._batchnorms() for p in m.parameters()} if self.freeze_batchnorm else set()
        for parameter in self.encoder.backbone.parameters():
            if id(parameter) not in frozen:
                parameter.requires_grad_(trains_backbone)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        embeddings = self.encoder(self.view(images))
        with full_precision(images.device):
            return self.criterion(gather_batch(embeddings.float()), gather_batch(labels))


class FrozenTeacherObjective(Objective):
    """A student trained against a frozen ``teacher`` (embedding transfer and classifier distillation).

    The teacher is kept out of the module tree on purpose: it is not trained, not checkpointed, not
    synchronised by DDP, and ``train()`` on the objective must not switch it out of eval mode.
    """

    def __init__(self, augment: nn.Module, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__(augment)
        self.student = student
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher

    @property
    def model(self) -> nn.Module:
        return self.student

    def setup(self, device: torch.device) -> None:
        self.teacher.to(device=device, memory_format=self.memory_format)


class TransferObjective(FrozenTeacherObjective):
    """Student transfer: the teacher frozen in eval mode, ``views`` augmented views of every image (two in
    the SSL setting; one or two in the metric-learning one, LabelRelaxation's ``--view``), all seen by
    teacher and student; the loss gets what its contract declares (``features``: embeddings, where the teacher's
    is ``teacher_embedding`` of ``teacher_embedding_kind``; pooled backbone features of both networks;
    or stage maps; ``active_inputs``: student, teacher, labels, dataset indices); optional auxiliary
    Proxy-Anchor term on the student embedding (the paper's FitNet / Attention / CRD baselines add it).

    The transfer losses all-gather over DDP ranks themselves (``pipeline.losses``), so local rows are
    passed; the auxiliary Proxy-Anchor term does not, so its inputs are gathered here.
    """

    def __init__(
        self,
        student: EmbeddingModel,
        teacher: EmbeddingModel,
        augment: nn.Module,
        loss: Loss,
        teacher_embedding_kind: str = "projection",
        auxiliary_loss: ProxyAnchorLoss | None = None,
        auxiliary_weight: float = 1.0,
        views: int = 2,
    ) -> None:
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views!r}")
        if teacher_embedding_kind not in TEACHER_EMBEDDINGS:
            raise ValueError(f"teacher_embedding must be one of {TEACHER_EMBEDDINGS}, got {teacher_embedding_kind!r}")
        if loss.features not in ("embedding", "pooled", "stage_maps"):
            raise ValueError(f"{type(loss).__name__} compares {loss.features}; embedding transfer has "
                             "embeddings, pooled features and stage maps")
        super().__init__(augment, student, teacher)
        self.criterion = loss
        self.teacher_embedding_kind = teacher_embedding_kind
        self.auxiliary = auxiliary_loss
        self.auxiliary_weight = auxiliary_weight
        self.views = views
        # Without the auxiliary term a loss on pooled features or stage maps leaves the embedding head unused.
        self.find_unused_parameters = auxiliary_loss is None and loss.features != "embedding"

    def parameter_groups(self) -> list[dict]:
        """The student and the loss's own modules (CRD heads, FitNet regressors) at the base lr, the
        auxiliary Proxy-Anchor proxies at ``LR_MULTIPLIER`` (100) times it, as the label-relaxation code
        groups them (code/train_target.py: ``'lr': float(args.lr) * 100`` for the Proxy-Anchor criterion)."""
        proxies = [] if self.auxiliary is None else [p for p in self.auxiliary.parameters() if p.requires_grad]
        own = {id(p) for p in proxies}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if proxies:
            groups.append({"params": proxies, "lr_scale": self.auxiliary.LR_MULTIPLIER})
        return groups

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.views == 2:
            views = self.two_views(images)
            view_labels, view_indices = torch.cat([labels, labels]), torch.cat([indices, indices])
        else:
            views, view_labels, view_indices = self.view(images), labels, indices
        inputs = {"labels": view_labels, "indices": view_indices}
        if self.criterion.features == "stage_maps":
            student_stages = self.student.stage_features(views)
            with torch.no_grad():
                teacher_stages = self.teacher.stage_features(views)
            inputs.update(student=[s.float() for s in student_stages], teacher=[t.float() for t in teacher_stages])
            # The loss's graph before the embedding's: the last map has three consumers then (the loss,
            # mean and max pooling), and autograd sums their gradients in the order they were recorded.
            with full_precision(images.device):
                loss = self.criterion(*(inputs[name] for name in self.criterion.active_inputs))
            student = self.student.embed_pooled(global_pool(student_stages[-1], self.student.pooling))
        elif self.criterion.features == "pooled":
            student_pooled = self.student.pooled_features(views)
            with torch.no_grad():
                teacher_pooled = self.teacher.pooled_features(views)
            inputs.update(student=student_pooled.float(), teacher=teacher_pooled.float())
            student = self.student.embed_pooled(student_pooled)
        else:
            student = self.student(views)
            with torch.no_grad():
                teacher = teacher_embedding(self.teacher, views, self.teacher_embedding_kind)
            inputs.update(student=student.float(), teacher=teacher.float())
        if self.criterion.features != "stage_maps":
            with full_precision(images.device):
                loss = self.criterion(*(inputs[name] for name in self.criterion.active_inputs))
        if self.auxiliary is not None:
            with full_precision(images.device):
                loss = loss + self.auxiliary_weight * self.auxiliary(
                    gather_batch(student.float()), gather_batch(view_labels)
                )
        return loss
