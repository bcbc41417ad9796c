"""Where a SimCLR step's time goes on the device, in one process, and how it compares with lightly's loop.

For each workload and batch size, images/s (each image gives two views):
- network: forward + backward + SGD step of the network on ready float views already on the device (bf16
  autocast and channels_last on CUDA): the ceiling the training loop can reach;
- augmentation: this project's SimCLR view generator alone, two views of a uint8 batch on the device;
- fit: ``pipeline.train.loop.fit`` + ``SimCLRObjective``, the loop's defaults;
- lightly: lightly's documented SimCLR loop (torchvision-style dataset, ``SimCLRTransform`` in a DataLoader
  with ``cores - 4`` workers and pinned memory, one forward per view, ``NTXentLoss``), fp32 as documented;
- lightly bf16: the same loop under bf16 autocast with channels_last.
Workloads: CIFAR-10-shaped data (32x32x3 uint8, 50,000 random images: the rates do not depend on the pixels)
on the CIFAR-stem ResNet-18, and the default profile's Fashion-MNIST teacher (small ResNet 32/64/128).
Then one SOP-sized evaluation on the device: ``retrieval_metrics`` (Recall@1/10/100/1000, MAP@R, R-Precision,
k-means NMI) on 60,502 x 512 embeddings in 11,316 classes (benchmarks/sop_eval.py's generator).
Every ratio is printed, with the targets of issue 27: fit >= 80% of the network at batch 512, fit >= 2.5x
lightly's loop, the SOP-sized evaluation in <= 10 s.

    python benchmarks/gpu_throughput.py [--batches 512 1024] [--steps 20] [--rounds 2] [--quick]

``--quick`` (batch 64, 2 steps, a 6,000-item evaluation) checks that it runs, on a CPU too.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext, redirect_stderr
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sop_eval import sop_like
from train_throughput import PILImages, StepClock, load_data  # noqa: E402

from pipeline.config import OptimizerConfig, TrainConfig
from pipeline.data import ImageSet
from pipeline.data.augment import build_augmentation
from pipeline.eval.retrieval import retrieval_metrics
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.models.registry import build_backbone
from pipeline.train.loop import fit
from pipeline.train.objectives import SimCLRObjective

WARMUP_STEPS = 5
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def cifar_shaped(count: int = 50_000) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return ImageSet("cifar10-shaped", images, labels, 10, CIFAR_MEAN, CIFAR_STD)


WORKLOADS = {  # name -> (data, the network's backbone)
    "cifar10 / CIFAR-stem ResNet-18": (cifar_shaped, lambda c: build_backbone("cifar_resnet18", c)),
    "fashion_mnist / small ResNet 32-64-128": (load_data, lambda c: build_backbone("small_resnet", c)),
}


def network(data: ImageSet, backbone) -> EmbeddingModel:
    torch.manual_seed(0)
    return EmbeddingModel(backbone(data.channels), projection="simclr")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_rate(data: ImageSet, backbone, batch: int, steps: int, device: torch.device) -> float:
    """Forward + backward + SGD on ready views, the loop's precision and layout on this device."""
    from lightly.loss import NTXentLoss

    cuda = device.type == "cuda"
    model = network(data, backbone).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    views = torch.randn(2 * batch, data.channels, data.image_size, data.image_size, device=device)
    if cuda:
        views = views.contiguous(memory_format=torch.channels_last)
    criterion, optimizer = NTXentLoss(), torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16) if cuda else nullcontext():
            z = model.projection(views)
        loss = criterion(*z.float().chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def augmentation_rate(data: ImageSet, batch: int, steps: int, device: torch.device) -> float:
    augment = build_augmentation("simclr", data.image_size, data.channels, data.mean, data.std).to(device)
    images = data.images[:batch].to(device)
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            synchronize(device)
            start = time.perf_counter()
        augment(images)
        augment(images)
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def fit_rate(data: ImageSet, backbone, batch: int, steps: int, device: torch.device) -> float:
    augment = build_augmentation("simclr", data.image_size, data.channels, data.mean, data.std)
    objective = SimCLRObjective(network(data, backbone), augment)
    # Losses read back (a sync) only at the two timestamps' steps and their common divisors, not every step.
    every = math.gcd(WARMUP_STEPS, WARMUP_STEPS + steps)
    config = TrainConfig(epochs=1, max_steps=WARMUP_STEPS + steps, batch_size=batch, log_every_steps=every,
                         optimizer=OptimizerConfig(name="sgd", lr=0.06, momentum=0.9, weight_decay=5e-4))
    clock = StepClock()
    with redirect_stderr(io.StringIO()):
        fit(objective, data, config, device=str(device), logger=clock)
    return steps * batch / (clock.times[WARMUP_STEPS + steps] - clock.times[WARMUP_STEPS])


def lightly_rate(data: ImageSet, backbone, batch: int, steps: int, device: torch.device, amp: bool) -> float:
    """lightly's documented SimCLR loop (docs' "SimCLR" example) with `cores - 4` DataLoader workers."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=data.image_size, gaussian_blur=0.0,
                                normalize={"mean": list(data.mean), "std": list(data.std)})
    workers = max(0, (os.cpu_count() or 1) - 4)
    loader = torch.utils.data.DataLoader(PILImages(data, transform), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=False)
    model = network(data, backbone).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    criterion, optimizer = NTXentLoss(), torch.optim.SGD(model.parameters(), lr=0.06)
    batches = iter(loader)
    for step, ((x0, x1), _) in enumerate(batches):
        if step == WARMUP_STEPS:
            synchronize(device)
            start = time.perf_counter()
        if step == WARMUP_STEPS + steps:
            break
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        if amp:
            x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
        with torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext():
            z0, z1 = model.projection(x0), model.projection(x1)
        loss = criterion(z0.float(), z1.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    synchronize(device)
    elapsed = time.perf_counter() - start
    del batches
    return steps * batch / elapsed


def sop_evaluation_seconds(items: int, classes: int, device: torch.device) -> float:
    embeddings, labels = sop_like(items, classes, 512, seed=0)
    x, y = torch.from_numpy(embeddings).to(device), torch.from_numpy(labels).to(device)
    retrieval_metrics(x[:2000], y[:2000], ks=(1, 10), nmi=True)  # warm-up (kernels, allocator)
    synchronize(device)
    start = time.perf_counter()
    retrieval_metrics(x, y, ks=(1, 10, 100, 1000), nmi=True)  # returns Python numbers: synchronised
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="batch 64, 2 steps, one round, a small evaluation")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.steps, args.rounds = [64], 2, 1
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"throughput on {device} ({name}), torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{args.steps} timed steps after {WARMUP_STEPS}, best of {args.rounds} alternating rounds; img/s "
          "(two views each)", flush=True)
    for workload, (load, backbone) in WORKLOADS.items():
        data = load() if not args.quick else _head(load(), 64 * (WARMUP_STEPS + 3))
        for batch in args.batches:
            runs = {"network": lambda: network_rate(data, backbone, batch, args.steps, device),
                    "augmentation": lambda: augmentation_rate(data, batch, args.steps, device),
                    "fit": lambda: fit_rate(data, backbone, batch, args.steps, device),
                    "lightly": lambda: lightly_rate(data, backbone, batch, args.steps, device, amp=False),
                    "lightly bf16": lambda: lightly_rate(data, backbone, batch, args.steps, device, amp=True)}
            rounds: dict[str, list[float]] = {key: [] for key in runs}
            for _ in range(args.rounds):
                for key, run in runs.items():
                    rounds[key].append(run())
            best = {key: max(values) for key, values in rounds.items()}
            print(f"\n{workload}, batch {batch}", flush=True)
            for key, values in rounds.items():
                print(f"  {key:<14} {best[key]:10,.0f}  (median {statistics.median(values):,.0f})")
            print(f"  fit / network {best['fit'] / best['network']:.2f} (target >= 0.80 at batch 512); "
                  f"fit / lightly {best['fit'] / best['lightly']:.2f}x (target >= 2.5x); "
                  f"fit / lightly bf16 {best['fit'] / best['lightly bf16']:.2f}x; "
                  f"augmentation / network {best['augmentation'] / best['network']:.2f}", flush=True)
    items, classes = (6000, 1000) if args.quick else (60_502, 11_316)
    seconds = sop_evaluation_seconds(items, classes, device)
    print(f"\nSOP-sized evaluation ({items:,} x 512, {classes:,} classes, Recall@1/10/100/1000, MAP@R, R-Precision, "
          f"NMI) on {device}: {seconds:.1f} s (target <= 10 s at full size)")


def _head(data: ImageSet, count: int) -> ImageSet:
    return ImageSet(data.name, data.images[:count], data.labels[:count], data.num_classes, data.mean, data.std)


if __name__ == "__main__":
    main()
