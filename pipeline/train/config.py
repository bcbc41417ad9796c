"""Settings of the one training loop, shared by every recipe (SimCLR, MoCo, Proxy-Anchor, transfer)."""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("none", "bf16", "fp16")
SAMPLERS = ("random", "class_balanced")


@dataclass
class TrainConfig:
    """Plain settings; validated on construction so a bad value fails before any compute.

    ``batch_size`` counts images per optimiser step over all processes (each image gives two views in
    the SSL and transfer recipes). ``max_steps`` caps the run below ``epochs`` full epochs.
    ``amp`` acts on CUDA only. ``channels_last`` defaults to on, for CUDA and CPU alike: on this project's
    2-core CPU it made the small-ResNet SimCLR step 27% faster (benchmarks/results/train_throughput.md;
    DESIGN.md's study found 22%), and it is the fast layout for convolutions under CUDA AMP.
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    lr_milestones: tuple[int, ...] = ()  # steps; non-empty switches cosine decay to step decay
    lr_gamma: float = 0.1
    grad_clip_norm: float | None = None
    amp: str = "bf16"
    channels_last: bool = True
    seed: int = 0
    device: str = "auto"
    sampler: str = "random"
    samples_per_class: int = 4
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "log_every_steps": self.log_every_steps,
                    "samples_per_class": self.samples_per_class}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "class_balanced" and self.batch_size % self.samples_per_class:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of samples_per_class {self.samples_per_class}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.checkpoint_every_steps < 0:
            raise ValueError("warmup_steps and checkpoint_every_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
