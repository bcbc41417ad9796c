"""What one training step computes, for each recipe; the loop (``loop.py``) is shared.

An objective is an ``nn.Module`` holding everything that is trained or carried between steps (model,
momentum encoder, MoCo queue, proxies, loss regressors), so its ``state_dict`` is the model part of a
checkpoint. ``forward(images, labels, indices)`` takes this rank's uint8 batch on the training device,
augments it there, and returns the loss of the global batch (batch-wise losses see embeddings
all-gathered over DDP ranks; see ``pipeline/distributed.py`` for why no gradient factor is needed).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable, Literal

import torch
from lightly.models.batchnorm import SplitBatchNorm
from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from pipeline import losses
from pipeline.distributed import gather_batch, world_size
from pipeline.losses.contract import Loss
from pipeline.models.embedding_model import TEACHER_EMBEDDINGS, EmbeddingModel, teacher_embedding
from pipeline.models.heads import global_pool

if TYPE_CHECKING:
    from pipeline.losses.proxy_anchor import ProxyAnchorLoss


def full_precision(device: torch.device):
    """Losses run in float32 even under AMP: exp / log-sum-exp over similarities overflow in fp16."""
    return torch.autocast(device.type, enabled=False) if device.type == "cuda" else nullcontext()


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


class MoCoObjective(Objective):
    """MoCo: a momentum key encoder and a queue of negative keys (checkpointed through the loss's state),
    in one of two forms.

    ``variant="symmetric"``: both view pairs, (q0, k1) and (q1, k0), in one call on the stacked pairs: the
    mean over the 2n rows equals 0.5 * (L(q0, k1) + L(q1, k0)), and both halves score against the same
    queue (two calls would enqueue k1 in between, so the second would count q1's own view k1 among its
    negatives); momentum on lightly's cosine schedule from ``momentum`` to 1.

    ``variant="v2"``: MoCo v2 as its authors ran it (He et al. CVPR 2020, Sec. 3.3; Chen et al. 2020;
    facebookresearch/moco ``moco/builder.py``): q from view 0, k from view 1, the loss once, constant
    momentum ``momentum``, and shuffle BN: the keys are computed on a shuffled batch, so a query and its
    positive key are normalised with statistics of different samples and BatchNorm cannot leak which key
    is the positive. Under torch.distributed the batch is shuffled across processes (lightly's
    ``batch_shuffle(distributed=True)``, builder.py's ``_batch_shuffle_ddp``), each process one BatchNorm
    group as each GPU there. ``bn_splits`` > 1 emulates such groups inside a process as the official
    CIFAR-10 demo (``colab/moco_cifar10_demo.ipynb``) does on one GPU: the BatchNorm2d layers of both
    encoders compute statistics per split (lightly's ``SplitBatchNorm``), the key batch shuffled first.
    ``model`` folds the splits back into BatchNorm2d, so the saved model is a plain ``EmbeddingModel``.
    """

    class _SplitBatchNorm(SplitBatchNorm):
        """lightly's SplitBatchNorm views (N, C, H, W) as (N / s, s * C, H, W), so split j holds samples
        j, j + s, ...; a channels_last tensor (the loop's default) has no such view: it goes through a
        contiguous copy and comes back channels_last."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if input.is_contiguous():
                return super().forward(input)
            return super().forward(input.contiguous()).contiguous(memory_format=torch.channels_last)

    def __init__(
        self,
        model: EmbeddingModel,
        augment: nn.Module,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
        variant: Literal["symmetric", "v2"] = "symmetric",
        bn_splits: int = 1,
    ) -> None:
        super().__init__(augment)
        if model.projection_head is None:
            raise ValueError("MoCo needs a model with a projection head (projection='mocov2')")
        if variant not in ("symmetric", "v2"):
            raise ValueError(f"variant must be 'symmetric' or 'v2', got {variant!r}")
        if bn_splits < 1 or (bn_splits > 1 and variant != "v2"):
            raise ValueError(f"bn_splits: a positive number of BatchNorm groups, above 1 for v2 only; got {bn_splits}")
        self.variant = variant
        self.momentum = momentum
        self.bn_splits = bn_splits
        if bn_splits > 1:  # in place: the encoder is the model passed, as in the other objectives
            self._swap_batchnorms(model, self._split_batchnorm)
        self.encoder = model
        self.key_encoder = copy.deepcopy(model)
        self.key_encoder.requires_grad_(False)
        self.criterion = losses.build(
            "moco", embedding_dim=model.projection_dim, queue_size=queue_size, temperature=temperature
        )

    @property
    def model(self) -> EmbeddingModel:
        """The query encoder; with ``bn_splits`` > 1 a copy of it with each split BatchNorm folded into a
        BatchNorm2d (running statistics averaged over the splits, as lightly's SplitBatchNorm does in eval)."""
        if self.bn_splits == 1:
            return self.encoder
        plain = copy.deepcopy(self.encoder)
        self._swap_batchnorms(plain, self._fold_batchnorm)
        return plain

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        views = self.two_views(images)
        if self.variant == "symmetric":
            q0, q1 = self.encoder.projection(views).chunk(2)
            with torch.no_grad():
                k0, k1 = self.key_encoder.projection(views).chunk(2)
            with full_precision(images.device):
                return self.criterion(torch.cat([q0, q1]).float(), torch.cat([k1, k0]).float())
        if len(images) % self.bn_splits:
            raise ValueError(f"a batch of {len(images)} images per process does not split into "
                             f"moco.bn_splits = {self.bn_splits} BatchNorm groups")
        if any(isinstance(m, nn.SyncBatchNorm) for m in self.key_encoder.modules()):
            raise ValueError("train.sync_batchnorm: MoCo v2's shuffle BN needs BatchNorm per process; set it false")
        view0, view1 = views.chunk(2)
        query = self.encoder.projection(view0)
        keys = self.keys(view1)
        with full_precision(images.device):
            return self.criterion(query.float(), keys.float())

    @torch.no_grad()
    def keys(self, view: torch.Tensor) -> torch.Tensor:
        """v2's keys of ``view``, in its order: the key encoder runs on the batch shuffled (across processes
        under torch.distributed), and its projections are put back in order."""
        distributed = world_size() > 1
        shuffled, shuffle = batch_shuffle(view, distributed=distributed)
        return batch_unshuffle(self.key_encoder.projection(shuffled), shuffle, distributed=distributed)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """k = m k + (1 - m) q on the parameters (builder.py's momentum update; buffers are the key
        encoder's own)."""
        momentum = self.momentum if self.variant == "v2" else cosine_schedule(step, total_steps, self.momentum, 1.0)
        update_momentum(self.encoder, self.key_encoder, m=momentum)

    @staticmethod
    def _swap_batchnorms(model: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> None:
        """Replace each child that ``convert`` maps to a new module (None: keep it)."""
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                replacement = convert(child)
                if replacement is not None:
                    setattr(parent, name, replacement)

    def _split_batchnorm(self, module: nn.Module) -> nn.Module | None:
        if type(module) is not nn.BatchNorm2d:  # BatchNorm1d (a projection head's) stays whole-batch
            return None
        split = self._SplitBatchNorm(module.num_features, self.bn_splits, eps=module.eps, momentum=module.momentum)
        with torch.no_grad():
            split.weight.copy_(module.weight)
            split.bias.copy_(module.bias)
            split.running_mean.copy_(module.running_mean.repeat(self.bn_splits))
            split.running_var.copy_(module.running_var.repeat(self.bn_splits))
            split.num_batches_tracked.copy_(module.num_batches_tracked)
        return split.to(module.weight.device).train(module.training)

    @staticmethod
    def _fold_batchnorm(module: nn.Module) -> nn.Module | None:
        if not isinstance(module, SplitBatchNorm):
            return None
        splits, channels = module.num_splits, module.num_features
        plain = nn.BatchNorm2d(channels, eps=module.eps, momentum=module.momentum, device=module.weight.device)
        with torch.no_grad():
            plain.weight.copy_(module.weight)
            plain.bias.copy_(module.bias)
            plain.running_mean.copy_(module.running_mean.view(splits, channels).mean(0))
            plain.running_var.copy_(module.running_var.view(splits, channels).mean(0))
            plain.num_batches_tracked.copy_(module.num_batches_tracked)
        return plain.train(module.training)


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
