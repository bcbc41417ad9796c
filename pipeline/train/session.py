"""One training stage's run, start to finish: claim the checkpoint folder for these settings and this
code, train (resuming an interrupted run of the same), save the model, and summarise the whole training.

Under torchrun, rank 0 alone claims the checkpoint folder and writes files; the others wait for it (the
folder may be cleared for a changed fingerprint) and train beside it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pipeline.config import TrainConfig
from pipeline.data import ImageSet
from pipeline.fault_hooks import pause_at
from pipeline.integrity import write_json
from pipeline.train.fingerprint import claim_checkpoint_dir, code_fingerprint
from pipeline.train.loop import FitResult, MetricLogger, fit
from pipeline.train.objectives import Objective
from pipeline.train.runtime import resolve_runtime
from pipeline.stage_spec import LOSS_CURVE, MODEL


def train_and_save(objective: Objective, images: ImageSet, train: TrainConfig, out: Path, settings: dict[str, Any],
                   logger: MetricLogger, description: str, save: Callable[[Path], None], *, seed: int,
                   samples_per_class: int | None = None,
                   on_checkpoint: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Train into `out/checkpoints`, save `out/model.pt` through `save`, log and return the summary.
    `on_checkpoint(step, epochs)` runs after each checkpoint (the search scores its trial there).

    The checkpoint folder is tied to `settings` and to the code this process has run (`code_fingerprint`):
    after a change to either, training starts over instead of resuming someone else's run.
    """
    pause_at("loading")
    runtime = resolve_runtime("auto")  # joins torchrun's process group, if any
    if runtime.is_main:
        claim_checkpoint_dir(out / "checkpoints", {**settings, "code": code_fingerprint()})
    if runtime.distributed:
        dist.barrier()
    result = fit(objective, images, train, seed=seed, samples_per_class=samples_per_class,
                 checkpoint_dir=out / "checkpoints", logger=logger, description=description,
                 on_checkpoint=on_checkpoint)
    if runtime.is_main:
        save(out / MODEL)
        write_json(out / LOSS_CURVE, loss_curve(result.losses))
    if runtime.distributed:
        dist.barrier()  # ranks leave together (torchrun tears all down if rank 0 fails to save)
        dist.destroy_process_group()
    metrics = training_metrics(result, train.batch_size)
    logger.log_metrics(metrics, step=result.steps)
    return metrics


LOSS_CURVE_POINTS = 2000


def loss_curve(losses: list[tuple[int, float]], max_points: int = LOSS_CURVE_POINTS) -> list[dict[str, float]]:
    """Per-step training loss as DVC plot rows (``step``, ``loss``), every step up to `max_points` steps,
    else every n-th step and the last (a file in git stays small at paper scale). A resumed run holds the
    steps its checkpoint carried (the last 1000 before the resume) and every step since; MLflow's
    ``train/loss`` has them all."""
    every = max(1, -(-len(losses) // max_points))
    kept = losses[::every] + ([losses[-1]] if losses and (len(losses) - 1) % every else [])
    return [{"step": int(step), "loss": float(value)} for step, value in kept]


def training_metrics(result: FitResult, batch_size: int) -> dict[str, float]:
    """The flat summary a training stage writes: final loss (mean of the last 10 steps), steps, and the
    time and speed of the whole training, interrupted-and-resumed runs included."""
    tail = [loss for _, loss in result.losses[-10:]]
    return {
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_seconds": result.seconds,
        "images_per_second": result.steps * batch_size / result.seconds if result.seconds > 0 else 0.0,
    }
