"""The one training loop: optimiser, warm-up + cosine schedule, AMP, checkpoints, resume, signals, DDP."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import TrainConfig
from pipeline.data import ImageSet
from pipeline.train.batches import BatchPlan
from pipeline.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pipeline.train.objectives import Objective
from pipeline.train.progress import Progress
from pipeline.train.runtime import Runtime, SignalFlag, resolve_runtime, seed_everything
from pipeline.train.schedule import WarmupCosine, WarmupMultiStep
from pipeline.train.stops import NonFiniteLossError, TrainingInterrupted


RECENT_LOSSES_KEPT = 1000  # per-step losses carried in a checkpoint (the full history is in MLflow)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class FitResult:
    """`seconds`: time in the training loop over the whole run, the sessions before a resume included."""

    steps: int
    epochs: int
    resumed_from_step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """Each group's lr is ``optimizer.lr * lr_scale`` (Proxy-Anchor's proxies train at 100x)."""
    settings = config.optimizer
    param_groups = [
        {"params": g["params"], "lr": settings.lr * g.get("lr_scale", 1.0)} for g in groups if g["params"]
    ]
    if settings.name == "sgd":
        return torch.optim.SGD(param_groups, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(param_groups, lr=settings.lr, weight_decay=settings.weight_decay)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # `train.amp` -> the autocast dtype


def fit(
    objective: Objective,
    data: ImageSet,
    config: TrainConfig,
    *,
    seed: int = 0,
    device: str = "auto",
    samples_per_class: int | None = None,
    checkpoint_dir: str | Path | None = None,
    logger: MetricLogger | None = None,
    description: str = "train",
    on_checkpoint: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Train ``objective`` on ``data`` for ``config.epochs`` epochs (or ``config.max_steps`` steps).

    ``config`` is a ``train`` section of params.yaml; warm-up and lr milestones given there in epochs
    become steps of this data set. ``samples_per_class=K`` draws class-balanced P x K batches, else
    random ones; ``seed`` fixes the batch order and every RNG of the run.
    With ``checkpoint_dir``, a checkpoint is written after every epoch (and every
    ``config.checkpoint_every_steps`` steps), and an existing one is resumed from. SIGTERM / SIGINT save
    one and raise ``TrainingInterrupted``; a non-finite loss raises ``NonFiniteLossError`` without
    saving. ``on_checkpoint(step, epochs_completed)`` runs after each save (tests use it to kill the process).
    """
    if samples_per_class is not None and config.batch_size % samples_per_class:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of samples_per_class {samples_per_class}")
    runtime = resolve_runtime(device)
    seed_everything(seed + runtime.rank)
    cuda = runtime.device.type == "cuda"
    channels_last = config.channels_last and not _onednn_channels_last_bug(objective, runtime.device)
    if channels_last:
        objective.memory_format = torch.channels_last
    objective.to(runtime.device)
    if channels_last:
        objective.to(memory_format=torch.channels_last)
    objective.setup(runtime.device)
    if cuda:
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    if config.compile:  # the backbone, which every path of every model runs (forward, projection, features)
        objective.model.backbone.compile()

    plan = BatchPlan(data.labels, config.batch_size, seed, samples_per_class is not None,
                     samples_per_class or 1, runtime.world_size, runtime.rank)
    total_steps = plan.steps_per_epoch * config.epochs
    if config.max_steps is not None:
        if config.max_steps > total_steps:
            warnings.warn(f"{description}: max_steps {config.max_steps} is never reached: {config.epochs} epoch(s) of "
                          f"{plan.steps_per_epoch} batches stop after {total_steps} steps; raise epochs", stacklevel=2)
        total_steps = min(total_steps, config.max_steps)
    epochs = math.ceil(total_steps / plan.steps_per_epoch)

    optimizer = build_optimizer(objective.parameter_groups(), config)
    warmup_steps = round(config.optimizer.warmup_epochs * plan.steps_per_epoch)
    milestones = tuple(m * plan.steps_per_epoch for m in config.optimizer.milestones_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        WarmupMultiStep(warmup_steps, milestones, config.optimizer.gamma) if milestones
        else WarmupCosine(warmup_steps, total_steps, config.optimizer.min_lr_ratio),
    )
    amp_dtype = AMP_DTYPES.get(config.amp) if cuda or config.amp_on_cpu else None
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=amp_dtype == torch.float16)

    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start_step = 0
    earlier_seconds = 0.0  # spent by the sessions this run resumes
    state = load_checkpoint(checkpoint_path, runtime.device) if checkpoint_path is not None else None
    if state is not None:
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"][runtime.rank] if len(state["rng"]) > runtime.rank else state["rng"][0])
        start_step = int(state["step"])
        earlier_seconds = float(state.get("train_seconds", 0.0))

    module: nn.Module = objective
    if runtime.distributed:
        if config.sync_batchnorm and cuda:
            objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
        elif config.sync_batchnorm and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in objective.modules()):
            warnings.warn("SyncBatchNorm needs CUDA: BatchNorm statistics stay per process under CPU DDP",
                          stacklevel=2)
        module = DistributedDataParallel(
            objective, device_ids=[runtime.local_rank] if cuda else None,
            find_unused_parameters=objective.find_unused_parameters,
        )

    images = training_images(data.images, runtime.device)
    labels = data.labels.to(runtime.device)
    progress = Progress(total_steps, start_step, config.batch_size, runtime.is_main, description)
    result = FitResult(steps=total_steps, epochs=epochs, resumed_from_step=start_step)
    if state is not None:
        result.losses = [(int(s), float(v)) for s, v in state.get("recent_losses", [])]
    pending: list[tuple[int, torch.Tensor]] = []
    started = time.perf_counter()

    def seconds_so_far() -> float:
        return earlier_seconds + time.perf_counter() - started

    def flush() -> None:
        """Check and log the losses of the steps since the last flush (one host sync per flush)."""
        if not pending:
            return
        values = torch.stack([loss for _, loss in pending]).float()
        if runtime.distributed:
            dist.all_reduce(values)
            values /= runtime.world_size
        values = values.tolist()
        for (step, _), value in zip(pending, values):
            if not math.isfinite(value):
                kept = f"; the last good checkpoint is {checkpoint_path}" if checkpoint_path else ""
                raise NonFiniteLossError(f"{description}: non-finite loss {value} at step {step}{kept}")
        steps = [step for step, _ in pending]
        pending.clear()
        rate = progress.update(steps[-1], values[-1])
        result.losses.extend(zip(steps, values))
        if logger is not None and runtime.is_main:
            for step, value in zip(steps, values):
                logger.log_metrics({"train/loss": value}, step=step)
            logger.log_metrics({"train/lr": scheduler.get_last_lr()[0], "train/images_per_s": rate},
                               step=steps[-1])

    def checkpoint(step: int) -> None:
        flush()
        if checkpoint_path is None:
            return
        rng = [capture_rng_state()]
        if runtime.distributed:
            rng = [None] * runtime.world_size
            dist.all_gather_object(rng, capture_rng_state())
        if runtime.is_main:
            save_checkpoint(checkpoint_path, {
                "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "step": step,
                "epochs_completed": step // plan.steps_per_epoch,
                # so a resumed run reports the same final-loss summary as an uninterrupted one
                "recent_losses": [[s, v] for s, v in result.losses[-RECENT_LOSSES_KEPT:]],
                "train_seconds": seconds_so_far(),
            })
        if runtime.distributed:
            dist.barrier()
        if on_checkpoint is not None:
            on_checkpoint(step, step // plan.steps_per_epoch)

    step = start_step
    objective.train()
    try:
        with SignalFlag() as signals:
            for epoch in range(start_step // plan.steps_per_epoch, epochs):
                objective.on_epoch_start(epoch)
                own = objective.epoch_sampler(epoch, images, config.batch_size, seed)
                if own is not None:
                    plan.draw_from(own)
                skip = step - epoch * plan.steps_per_epoch
                for indices in plan.local_batches(epoch, skip):
                    if step >= total_steps:
                        break
                    host_indices, indices = indices, to_device(indices, runtime.device)
                    # Images kept on the host are cut there, by the host indices, and the batch travels.
                    batch = to_device(images[host_indices], runtime.device) if images.is_cpu else images[indices]
                    with torch.autocast(runtime.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = module(batch, labels[indices], indices)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if config.grad_clip_norm is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip_norm)
                    objective.before_optimizer_step()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    objective.after_optimizer_step(step, total_steps)
                    step += 1
                    pending.append((step, loss.detach()))
                    if step % config.log_every_steps == 0:
                        flush()
                    if _signal_received(signals, runtime):
                        checkpoint(step)
                        raise TrainingInterrupted(signals.received or 15)
                    if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                        checkpoint(step)
                checkpoint(step)
                progress.end_epoch(epoch, epochs, step, result.losses[-1][1] if result.losses else float("nan"))
    finally:
        progress.close()
    result.seconds = seconds_so_far()
    return result


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU from pinned memory without blocking, since a copy from pageable
    memory waits for everything queued on the GPU."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


DEVICE_SHARE_FOR_IMAGES = 0.5  # of the device's free memory; the rest for the model, activations and views


def training_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The uint8 training images where batches are cut from: moved to the GPU once when they take at most
    half of its free memory (no DataLoader, no per-step copy), else left on the host, each batch copied as it
    is cut (with a warning; the batch, not the whole set, is pinned: a batch cut from pinned images is not)."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes <= DEVICE_SHARE_FOR_IMAGES * free:
        return images.to(device)
    warnings.warn(f"the training images ({images.nbytes / 2**30:.1f} GiB) exceed half of {device}'s free memory "
                  f"({free / 2**30:.1f} GiB): they stay on the host and each batch is copied", stacklevel=2)
    return images


def _onednn_channels_last_bug(objective: nn.Module, device: torch.device) -> bool:
    """oneDNN in torch 2.14.1 corrupts the heap (glibc aborts the process) in the backward pass of a
    channels_last 1x1 stride-2 convolution with 2-6 input channels on CPU (reproduced on an AVX2 EPYC;
    1, 7 and >= 8 channels, stride 1 and contiguous tensors are fine). Such nets, like the tests' width-4
    students, train in the contiguous layout instead, with a warning."""
    if device.type != "cpu":
        return False
    affected = [m for m in objective.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                and m.stride != (1, 1) and 2 <= m.in_channels <= 6]
    if affected:
        warnings.warn(f"channels_last is off for this run: a 1x1 strided convolution with {affected[0].in_channels} "
                      "input channels hits a oneDNN heap-corruption bug on CPU", stacklevel=3)
    return bool(affected)


def _signal_received(signals: SignalFlag, runtime: Runtime) -> bool:
    """Under DDP every rank must stop at the same step, so the flag is agreed on with an all-reduce."""
    if not runtime.distributed:
        return signals.received is not None
    flag = torch.tensor([0 if signals.received is None else 1], device=runtime.device)
    dist.all_reduce(flag)
    return bool(flag.item())
