"""Short throughput print for the GPU smoke check (scripts/gpu_smoke.sh): images/s of teacher training
(SimCLR), student training (relaxed contrastive transfer from that teacher) and feature extraction, on
CUDA when there is one, with the training loop's defaults there (bf16 AMP, channels_last, kornia on the
device). Data and teacher network are benchmarks/train_throughput.py's (Fashion-MNIST 28x28, or digits
upsampled; small ResNet 32/64/128), so the teacher row compares with its CPU table; the student is a small
ResNet 16/32/64 with a 64-d embedding. A print, not a recorded benchmark: one round, no reference.

    python benchmarks/gpu_throughput.py [--steps 20] [--batch-size 256] [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import WARMUP_STEPS, StepClock, load_data, make_model

from pipeline import losses
from pipeline.config import OptimizerConfig, TrainConfig
from pipeline.data.augment import build_augmentation
from pipeline.eval.features import extract_features
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.models.registry import build_backbone
from pipeline.train.loop import fit
from pipeline.train.objectives import SimCLRObjective, TransferObjective


def timed_fit(objective, data, batch_size: int, steps: int, device: str) -> float:
    """Images/s over `steps` steps after WARMUP_STEPS warm-up steps (per-step timestamps from fit's logger)."""
    config = TrainConfig(epochs=1, max_steps=WARMUP_STEPS + steps, batch_size=batch_size, log_every_steps=1,
                         optimizer=OptimizerConfig(name="sgd", lr=0.06, weight_decay=5e-4))
    clock = StepClock()
    with redirect_stderr(io.StringIO()):  # the progress bar
        fit(objective, data, config, device=device, logger=clock)
    return steps * batch_size / (clock.times[WARMUP_STEPS + steps] - clock.times[WARMUP_STEPS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--extract-images", type=int, default=20000)
    args = parser.parse_args()
    data = load_data()
    if len(data) < args.batch_size * (WARMUP_STEPS + args.steps):
        args.steps = max(1, len(data) // args.batch_size - WARMUP_STEPS)  # one epoch holds every step
    augment = build_augmentation("simclr", data.image_size, data.channels, data.mean, data.std)

    teacher_objective = SimCLRObjective(make_model(), augment)
    teacher_rate = timed_fit(teacher_objective, data, args.batch_size, args.steps, args.device)
    teacher = teacher_objective.model.eval()

    torch.manual_seed(0)
    student = EmbeddingModel(build_backbone("small_resnet", data.channels, widths=(16, 32, 64)), embedding_dim=64)
    transfer = TransferObjective(student, teacher, augment, losses.build("relaxed_contrastive"),
                                 teacher_embedding_kind="projection")
    student_rate = timed_fit(transfer, data, args.batch_size, args.steps, args.device)

    preprocess = build_augmentation("none", data.image_size, data.channels, data.mean, data.std)
    images = data.images[: args.extract_images]
    extract_features(student, images[:1024], batch_size=512, device=args.device, transform=preprocess)  # warm-up
    start = time.perf_counter()
    extract_features(student, images, batch_size=512, device=args.device, transform=preprocess)
    extract_rate = len(images) / (time.perf_counter() - start)  # features come back to the CPU: synchronised

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\nthroughput on {args.device} ({name}), torch {torch.__version__}, {data.name} "
          f"{data.image_size}x{data.image_size}, batch {args.batch_size}, {args.steps} timed steps after "
          f"{WARMUP_STEPS} warm-up")
    rows = [("teacher training (SimCLR, small ResNet 32/64/128, 2 views)", teacher_rate),
            ("student training (relaxed contrastive, ResNet 16/32/64, 2 views)", student_rate),
            (f"feature extraction (student, {len(images)} images, batch 512)", extract_rate)]
    for label, rate in rows:
        print(f"  {label:<66} {rate:10.0f} img/s")

if __name__ == "__main__":
    main()
