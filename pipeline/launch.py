"""Multi-process training stages: a stage whose ``train.processes`` asks for more than one process
re-executes itself under torchrun, one process per GPU (or gloo processes on CPU).

The stage command in dvc.yaml stays ``python -m stages.X``: DVC, `dvc exp run -S` and the fingerprint
of a run see one parameter, not a launcher, and the same dvc.yaml serves a laptop and an 8-GPU node.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import TrainConfig

WORKER_ENV = "LOCAL_RANK"  # torchrun sets it in every worker it starts


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that writes files and tracks the run."""
    return int(os.environ.get("RANK", "0")) == 0


def _resolve_processes(train: TrainConfig, key: str) -> int:
    """How many processes the ``train`` section at dotted ``key`` asks for. ``"auto"``: one per visible
    GPU (one on a CPU machine). Refused before any process starts, naming the key: more processes than
    visible GPUs (they would only compete for one), or a global batch that does not split evenly."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    processes = max(1, gpus) if train.processes == "auto" else train.processes
    if gpus and processes > gpus:
        raise ValueError(f"{key}.processes: {processes} processes asked for, but only {gpus} CUDA device(s) "
                         "are visible")
    if train.batch_size % processes:
        raise ValueError(f"{key}.batch_size: {train.batch_size} does not split evenly over {processes} processes "
                         f"({key}.processes = {train.processes!r})")
    return processes


def relaunch_under_torchrun(module: str, argv: list[str], train: TrainConfig, key: str) -> None:
    """Replace this process by ``torchrun --standalone --nproc-per-node N -m module argv`` when the
    ``train`` section at ``key`` asks for N > 1 processes and this is not already a worker; return otherwise.

    exec rather than a child process: a signal DVC or a cluster scheduler sends to the stage reaches
    torchrun, which forwards it to every worker, and each worker checkpoints before exiting.
    """
    if WORKER_ENV in os.environ:
        return
    processes = _resolve_processes(train, key)
    if processes <= 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc-per-node={processes}", "-m", module, *argv])
