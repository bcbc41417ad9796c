"""Latency per image under ONNX Runtime on the CPU, the runtime a retrieval service would embed with: at each
batch size of `deploy.batch_sizes`, on one thread and on all the cores this process may use. Each figure is
the median over `deploy.repeats` timed runs after `WARMUP` untimed ones, divided by the batch size; the images
are test images, cycled where a batch needs more than there are.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.deploy.graph import INPUT, OUTPUT, session

WARMUP = 3


def all_cores() -> int:
    """The cores this process may run on (its CPU affinity), what `threads: 0` in `deploy.threads` means."""
    return len(os.sched_getaffinity(0))


def latency_ms(path: Path, images: torch.Tensor, batch_sizes: tuple[int, ...], threads: tuple[int, ...],
               repeats: int) -> dict[str, float]:
    """`latency_ms_b{B}_t{T}`: ms per image at batch B on T threads (T = `all_cores()` where 0 is asked)."""
    results: dict[str, float] = {}
    for asked in threads:
        count = asked or all_cores()
        opened = session(path, threads=count)
        for batch_size in batch_sizes:
            index = torch.arange(batch_size) % len(images)
            batch = images[index].numpy()
            for _ in range(WARMUP):
                opened.run([OUTPUT], {INPUT: batch})
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                opened.run([OUTPUT], {INPUT: batch})
                times.append(time.perf_counter() - started)
            results[f"latency_ms_b{batch_size}_t{asked}"] = 1000 * statistics.median(times) / batch_size
    results["all_cores"] = all_cores()
    return results
