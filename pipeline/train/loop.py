"""The one training loop: optimiser, warm-up + cosine schedule, AMP, checkpoints, resume, signals, DDP."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.data import ImageSet
from pipeline.train.batches import BatchPlan
from pipeline.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pipeline.train.config import TrainConfig
from pipeline.train.objectives import Objective
from pipeline.train.progress import Progress
from pipeline.train.runtime import (
    NonFiniteLossError,
    Runtime,
    SignalFlag,
    TrainingInterrupted,
    resolve_runtime,
    seed_everything,
)
from pipeline.train.schedule import WarmupCosine, WarmupMultiStep


RECENT_LOSSES_KEPT = 1000  # per-step losses carried in a checkpoint (the full history is in MLflow)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class FitResult:
    steps: int
    epochs: int
    resumed_from_step: int
    losses: list[tuple[int, float]] = field(default_factory=list)


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """Each group's lr is ``config.lr * lr_scale`` (Proxy-Anchor's proxies train at 100x)."""
    param_groups = [
        {"params": g["params"], "lr": config.lr * g.get("lr_scale", 1.0)} for g in groups if g["params"]
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    objective: Objective,
    data: ImageSet,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    logger: MetricLogger | None = None,
    description: str = "train",
    on_checkpoint: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Train ``objective`` on ``data`` for ``config.epochs`` epochs (or ``config.max_steps`` steps).

    With ``checkpoint_dir``, a checkpoint is written after every epoch (and every
    ``config.checkpoint_every_steps`` steps), and an existing one is resumed from. SIGTERM / SIGINT save
    one and raise ``TrainingInterrupted``; a non-finite loss raises ``NonFiniteLossError`` without
    saving. ``on_checkpoint(step, epochs_completed)`` runs after each save (tests use it to kill the process).
    """
    runtime = resolve_runtime(config.device)
    seed_everything(config.seed + runtime.rank)
    cuda = runtime.device.type == "cuda"
    if config.channels_last:
        objective.memory_format = torch.channels_last
    objective.to(runtime.device)
    if config.channels_last:
        objective.to(memory_format=torch.channels_last)
    objective.setup(runtime.device)

    plan = BatchPlan(data.labels, config.batch_size, config.seed, config.sampler == "class_balanced",
                     config.samples_per_class, runtime.world_size, runtime.rank)
    total_steps = plan.steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epochs = math.ceil(total_steps / plan.steps_per_epoch)

    optimizer = build_optimizer(objective.parameter_groups(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        WarmupMultiStep(config.warmup_steps, config.lr_milestones, config.lr_gamma) if config.lr_milestones
        else WarmupCosine(config.warmup_steps, total_steps, config.min_lr_ratio),
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp) if cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start_step = 0
    state = load_checkpoint(checkpoint_path, runtime.device) if checkpoint_path is not None else None
    if state is not None:
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"][runtime.rank] if len(state["rng"]) > runtime.rank else state["rng"][0])
        start_step = int(state["step"])

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

    images = data.images.to(runtime.device) if cuda else data.images
    labels = data.labels.to(runtime.device)
    progress = Progress(total_steps, start_step, config.batch_size, runtime.is_main, description)
    result = FitResult(steps=total_steps, epochs=epochs, resumed_from_step=start_step)
    if state is not None:
        result.losses = [(int(s), float(v)) for s, v in state.get("recent_losses", [])]
    pending: list[tuple[int, torch.Tensor]] = []

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
                skip = step - epoch * plan.steps_per_epoch
                for indices in plan.local_batches(epoch, skip):
                    if step >= total_steps:
                        break
                    indices = indices.to(runtime.device)
                    batch = images[indices].to(runtime.device, non_blocking=True)
                    with torch.autocast(runtime.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = module(batch, labels[indices], indices)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if config.grad_clip_norm is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip_norm)
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
    return result


def _signal_received(signals: SignalFlag, runtime: Runtime) -> bool:
    """Under DDP every rank must stop at the same step, so the flag is agreed on with an all-reduce."""
    if not runtime.distributed:
        return signals.received is not None
    flag = torch.tensor([0 if signals.received is None else 1], device=runtime.device)
    dist.all_reduce(flag)
    return bool(flag.item())
