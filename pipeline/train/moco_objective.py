"""MoCo's training step (He et al., CVPR 2020; v2: Chen et al., 2020): query encoder, momentum key
encoder and negative queue, on lightly's building blocks. Its own module so that only MoCo stages import
lightly's model utilities, which import all of torchvision (2.5 s of a stage's start-up, measured)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from lightly.models.batchnorm import SplitBatchNorm
from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from pipeline import losses
from pipeline.distributed import world_size
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.train.objectives import Objective, full_precision


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
