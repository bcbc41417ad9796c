"""The view generator alone: this project's batched ops against the kornia ops they replaced, same recipe.

Both generate two SimCLR views of a uint8 batch on one device, in this one process, alternating rounds
(A B A B ...) so that load from other processes hits both alike; the headline is each side's best round
(the least disturbed), the median beside it. The reference is what `pipeline.data.augment` built before:
kornia's RandomResizedCrop (slice mode: one resize per image), RandomHorizontalFlip, ColorJitter,
RandomGrayscale and, from 64 px, RandomGaussianBlur. On CUDA each round ends with a synchronise.

    python benchmarks/augmentation.py [--rounds 5] [--device cpu|cuda] [--out benchmarks/results/augmentation.md]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.data.augment import BatchAugmentation, build_augmentation, view_recipe

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CASES = ((32, 256), (32, 512), (64, 256))  # (image side, batch): CIFAR-shaped, and 64 px where blur joins


def kornia_views(size: int) -> BatchAugmentation:
    """The SimCLR recipe on kornia's own ops, as the project built it before its batched ops."""
    import kornia.augmentation as K

    recipe = view_recipe("simclr")
    brightness, contrast, saturation, hue = recipe.jitter()
    ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=recipe.crop_scale), K.RandomHorizontalFlip(),
                            K.ColorJitter(brightness, contrast, saturation, hue, p=recipe.jitter_probability),
                            K.RandomGrayscale(p=recipe.grayscale_probability)]
    if recipe.blur_at(size):
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=recipe.blur_at(size)))
    return BatchAugmentation(ops, 3, MEAN, STD)


def rate(augment: nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Images/s of two views per image over `repeats` calls."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        augment(images)
        augment(images)
    sync()
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/augmentation.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    lines = [f"# Two SimCLR views of a uint8 batch: ours vs kornia's ops ({args.device}, {name})", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} alternating rounds of "
             f"{args.repeats} calls each; images/s (two views each), best / median.", "",
             "| image, batch | kornia's ops | ours | ratio (best) |", "|---|---:|---:|---:|"]
    for size, batch in CASES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=args.device)
        sides = {"kornia": kornia_views(size).to(args.device),
                 "ours": build_augmentation("simclr", size, 3, MEAN, STD).to(args.device)}
        rounds: dict[str, list[float]] = {key: [] for key in sides}
        for augment in sides.values():
            rate(augment, images, 1)  # warm-up
        for _ in range(args.rounds):
            for key, augment in sides.items():
                rounds[key].append(rate(augment, images, args.repeats))
        best = {key: max(values) for key, values in rounds.items()}
        cells = [f"{best[key]:,.0f} / {statistics.median(rounds[key]):,.0f}" for key in sides]
        lines.append(f"| {size}x{size}, {batch} | {cells[0]} | {cells[1]} | {best['ours'] / best['kornia']:.2f}x |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
