"""Where one model's evaluation spends its time, phase by phase, and what the layout choices buy.

The training stages score the model they saved (`pipeline.eval.session`); at CPU scale that evaluation
costs about as much as the student's training. This times, in one process and interleaved round by
round (so drift in the machine's speed hits every variant alike), the phases of `pipeline.eval.protocol`
on a saved model: test and train features in the contiguous and the channels_last layout, retrieval
metrics, linear probe, kNN and the retrieval-grid figure, at the profile's `evaluation.probe.train_samples`.

    .venv/bin/python benchmarks/evaluation.py --model outputs/students/MODEL/model.pt --teacher TEACHER \\
        --rounds 5    # writes benchmarks/results/evaluation.md

It needs the default profile's dataset and one trained model (any stage's `model.pt`).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_params  # noqa: E402
from pipeline.data import class_names  # noqa: E402
from pipeline.data.augment import build_augmentation  # noqa: E402
from pipeline.data.loading import evaluation_classes, load_images  # noqa: E402
from pipeline.eval.features import extract_features  # noqa: E402
from pipeline.eval.knn import knn_classify  # noqa: E402
from pipeline.eval.linear_probe import linear_probe  # noqa: E402
from pipeline.eval.plots import retrieval_grid_png  # noqa: E402
from pipeline.eval.protocol import subsample  # noqa: E402
from pipeline.eval.retrieval import retrieval_metrics  # noqa: E402
from pipeline.models.loading import load_saved_model  # noqa: E402


def clock(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--teacher", required=True, help="whose evaluation classes to score on")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "evaluation.md")
    args = parser.parse_args()

    params = load_params(args.params)
    evaluation = params.evaluation
    classes = evaluation_classes(params, args.teacher)
    train = load_images(params.data, "train", classes)
    test = load_images(params.data, "test", classes)
    train = subsample(train, evaluation.probe.train_samples, params.seed)
    preprocess = build_augmentation("none", params.data.image_size, test.channels, test.mean, test.std)
    contiguous, _ = load_saved_model(args.model)
    channels_last, _ = load_saved_model(args.model)
    channels_last = channels_last.to(memory_format=torch.channels_last)
    names = class_names(params.data.name, classes)
    figure = Path(tempfile.mkdtemp(prefix="eval-bench-")) / "grid.png"

    def features(model, images):
        return extract_features(model, images, batch_size=evaluation.batch_size, transform=preprocess)[0]

    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        round_times = {}
        round_times["test features, contiguous"], _ = clock(lambda: features(contiguous, test.images))
        round_times["test features, channels_last"], test_x = clock(lambda: features(channels_last, test.images))
        round_times["train features, contiguous"], _ = clock(lambda: features(contiguous, train.images))
        round_times["train features, channels_last"], train_x = clock(lambda: features(channels_last, train.images))
        round_times["retrieval metrics"], _ = clock(lambda: retrieval_metrics(
            test_x, test.labels, ks=evaluation.retrieval.ks, distance=evaluation.retrieval.distance,
            memory_budget_bytes=evaluation.retrieval.memory_budget_mb * 2**20, seed=params.seed))
        round_times["linear probe"], _ = clock(lambda: linear_probe(
            train_x, train.labels, test_x, test.labels, val_fraction=evaluation.probe.val_fraction,
            weight_decays=evaluation.probe.weight_decays, seed=params.seed))
        round_times["kNN"], _ = clock(lambda: knn_classify(train_x, train.labels, test_x, test.labels,
                                                           k=evaluation.knn.k, temperature=evaluation.knn.temperature))
        round_times["retrieval grid (Pillow)"], _ = clock(lambda: retrieval_grid_png(
            figure, test.images, test_x, test.labels, n_queries=8, k=5, distance=evaluation.retrieval.distance,
            class_names=names))
        for name, seconds in round_times.items():
            times.setdefault(name, []).append(seconds)

    median = {name: statistics.median(values) for name, values in times.items()}
    scored = [n for n in median if "contiguous" not in n]
    lines = [
        f"# One model's evaluation, phase by phase ({args.model}, {len(test)} test and {len(train)} train images)",
        "",
        f"`{' '.join(sys.argv)}`; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; medians of {args.rounds} interleaved rounds.",
        "",
        "| phase | median | |",
        "|---|---:|---:|",
    ]
    for name, seconds in median.items():
        note = ""
        if "channels_last" in name:
            note = f"{seconds / median[name.replace('channels_last', 'contiguous')]:.2f}x of contiguous"
        lines.append(f"| {name} | {seconds:.2f} s | {note} |")
    lines.append(f"| **evaluation as the stages run it** (channels_last) | **{sum(median[n] for n in scored):.2f} s** | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
