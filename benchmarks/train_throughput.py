"""SimCLR training throughput: this project's step against the plain-PyTorch loop of lightly's docs.

Both run in this one process on the same data, backbone (small ResNet, widths 32/64/128, stride-2
stem), projection head, batch size and image size:
- ours: ``pipeline.train.loop.fit`` with ``SimCLRObjective`` (uint8 data sliced in memory, batched
  augmentation on the whole batch in the training process, both views in one forward pass);
- reference: lightly's documented loop (torchvision dataset + ``SimCLRTransform`` in a DataLoader with
  ``num_workers=2``, one forward pass per view, ``NTXentLoss``).
It also reports the step's GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on one forward +
backward) next to the machine's fp32 matmul GFLOP/s. The measurements alternate (A B C A B C) so
load from other processes hits all alike. On a shared machine a round's rate falls whenever another
process takes a core, so the headline is each loop's best round (like ``timeit``'s minimum: the least
disturbed measurement); the median and every round are reported too.

    python benchmarks/train_throughput.py [--steps 25] [--batch-size 256] [--out benchmarks/results/train_throughput.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import OptimizerConfig, TrainConfig
from pipeline.data import ImageSet, load_dataset
from pipeline.data.augment import build_augmentation
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.models.registry import build_backbone
from pipeline.train.loop import fit
from pipeline.train.objectives import SimCLRObjective

WARMUP_STEPS = 3


def load_data() -> ImageSet:
    """Fashion-MNIST (28x28) when installed, else digits upsampled to 28x28."""
    try:
        return load_dataset("fashion_mnist", "train")
    except Exception:  # the benchmark still runs on a machine without the Debian package
        digits = load_dataset("digits", "train")
        images = F.interpolate(digits.images.float(), size=28, mode="bilinear").round().clamp(0, 255)
        return dataclasses.replace(digits, name="digits@28", images=images.to(torch.uint8))


def make_model() -> EmbeddingModel:
    torch.manual_seed(0)
    return EmbeddingModel(build_backbone("small_resnet", 1, widths=(32, 64, 128)), projection="simclr")


class StepClock:
    """A ``MetricLogger`` that timestamps the steps ``fit`` reports (``log_every_steps=1``)."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.times.setdefault(step, time.perf_counter())


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its reaped children (DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def ours(data: ImageSet, batch_size: int, steps: int, channels_last: bool) -> tuple[float, float]:
    augment = build_augmentation("simclr", data.image_size, data.channels, data.mean, data.std)
    objective = SimCLRObjective(make_model(), augment)
    config = TrainConfig(epochs=1, max_steps=WARMUP_STEPS + steps, batch_size=batch_size, log_every_steps=1,
                         optimizer=OptimizerConfig(name="sgd", lr=0.06, weight_decay=5e-4),
                         channels_last=channels_last)  # explicit: both layouts measured
    clock = StepClock()
    cpu_start = cpu_seconds()
    with redirect_stderr(io.StringIO()):
        fit(objective, data, config, logger=clock)
    cpu = cpu_seconds() - cpu_start
    elapsed = clock.times[WARMUP_STEPS + steps] - clock.times[WARMUP_STEPS]
    return steps * batch_size / elapsed, (WARMUP_STEPS + steps) * batch_size / cpu


class PILImages(Dataset):
    """What a torchvision dataset (FashionMNIST, CIFAR10) hands a transform: (PIL image, label)."""

    def __init__(self, data: ImageSet, transform) -> None:
        gray = data.channels == 1
        self.images = (data.images[:, 0] if gray else data.images.permute(0, 2, 3, 1)).numpy()
        self.mode = "L" if gray else "RGB"
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index], mode=self.mode)), self.labels[index]


def reference(data: ImageSet, batch_size: int, steps: int) -> tuple[float, float]:
    """lightly's "SimCLR" example loop, with its 32-px settings (no blur) and one-channel normalisation."""
    transform = SimCLRTransform(input_size=data.image_size, gaussian_blur=0.0,
                                normalize={"mean": list(data.mean), "std": list(data.std)})
    loader = DataLoader(PILImages(data, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=2)
    model = make_model()
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    model.train()
    start = None
    cpu_start = cpu_seconds()
    batches = iter(loader)
    for step, ((x0, x1), _) in enumerate(batches):
        if step == WARMUP_STEPS:
            start = time.perf_counter()
        if step == WARMUP_STEPS + steps:
            break
        z0, z1 = model.projection(x0), model.projection(x1)
        loss = criterion(z0, z1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    elapsed = time.perf_counter() - start
    del batches  # shuts the workers down and reaps them, so their CPU time is counted
    gc.collect()
    cpu = cpu_seconds() - cpu_start
    return steps * batch_size / elapsed, (WARMUP_STEPS + steps) * batch_size / cpu


def step_flops(data: ImageSet, batch_size: int) -> int:
    """FLOPs of one forward + backward over the 2 x batch views (the augmentation is not counted)."""
    model = make_model().train()
    views = torch.randn(2 * batch_size, data.channels, data.image_size, data.image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model.projection(views).square().mean().backward()
    return counter.get_total_flops()


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.md"))
    args = parser.parse_args()
    data = load_data()
    rates: dict[str, list[float]] = {"ours": [], "ours_channels_last": [], "reference": []}
    per_cpu: dict[str, list[float]] = {name: [] for name in rates}
    runs = {"ours": lambda: ours(data, args.batch_size, args.steps, channels_last=False),
            "reference": lambda: reference(data, args.batch_size, args.steps),
            "ours_channels_last": lambda: ours(data, args.batch_size, args.steps, channels_last=True)}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rate, cpu_rate = run()
            rates[name].append(rate)
            per_cpu[name].append(cpu_rate)
    median = {name: statistics.median(values) for name, values in rates.items()}
    best = {name: max(values) for name, values in rates.items()}
    flops = step_flops(data, args.batch_size)
    step_gflops = flops * best["ours"] / args.batch_size / 1e9
    matmul = matmul_gflops()
    load = os.getloadavg()[0]
    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    lines = [
        "# SimCLR training throughput",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, CPU. Data: {data.name} ({len(data)} images, {data.image_size}x{data.image_size}), "
        f"batch {args.batch_size} images (2 views each), small ResNet (32, 64, 128) stride-2 stem + SimCLR head; "
        f"{args.steps} timed steps after {WARMUP_STEPS} warm-up steps, {args.rounds} alternating rounds. "
        f"1-minute load average at the end: {load:.1f} on {os.cpu_count()} cores.",
        "",
        "| loop | img/s best | img/s median | every round | ratio to reference (best / median) | img per CPU-s (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("reference", "lightly docs loop (DataLoader, 2 workers, SimCLRTransform)"),
                        ("ours", "pipeline fit + SimCLRObjective (batched augmentation), contiguous layout"),
                        ("ours_channels_last", "pipeline, channels_last (the loop's default)")):
        values = ", ".join(f"{v:.0f}" for v in rates[name])
        lines.append(f"| {label} | {best[name]:.0f} | {median[name]:.0f} | {values} | "
                     f"{best[name] / best['reference']:.2f}x / {median[name] / median['reference']:.2f}x | "
                     f"{statistics.median(per_cpu[name]):.0f} |")
    lines += [
        "",
        f"Step FLOPs (forward + backward, 2 x {args.batch_size} views): {flops / 1e9:.2f} GFLOP; "
        f"at the best rate the step runs at {step_gflops:.1f} GFLOP/s, against {matmul:.1f} GFLOP/s for a "
        f"1024x1024 fp32 matmul on this machine ({100 * step_gflops / matmul:.0f}%).",
        "",
        "Images per CPU-second count every image of a round (warm-up included) against the CPU time of the "
        "process and its DataLoader workers: unlike img/s, other processes' load does not change it, so it "
        "shows the work each loop spends per image.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
