"""Forward+backward time of each transfer loss next to one training step of the default student.

Run:  .venv/bin/python benchmarks/losses.py [--out benchmarks/results/losses.md]
Embedding losses are timed on random (n, d) student / teacher batches; FitNet and attention transfer on
the student's and a (32, 64, 128) teacher's stage maps for n 28x28 views; CRD with a 60k-sample bank.
The reference is one SGD step of the default student (CIFAR-style ResNet, one BasicBlock per stage,
stride-2 stem, widths (16, 32, 64), 64-d embedding) on n views of 1x28x28, timed in the same run, so
each loss's share of a step, loss / (step + loss), is measured on the same machine and load.
"""

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.losses import build

SIZES = (180, 512, 1024)
DIMS = (64, 512)
RKD_ANGLE_ROWS = 128  # angle-term anchor subsample for n > 180 (the full term is O(n^3) memory)


def student_model(widths: tuple[int, ...]) -> tuple[nn.Module, str]:
    """The default CPU student: the pipeline's small ResNet (one BasicBlock per stage, stride-2 stem) + 64-d head."""
    from pipeline.models.registry import build_backbone
    from pipeline.models.embedding_model import EmbeddingModel

    backbone = build_backbone("small_resnet", in_channels=1, widths=widths)
    return EmbeddingModel(backbone, embedding_dim=64), f"pipeline small_resnet {widths} + 64-d head"


def median_seconds(step: Callable[[], None], repeats: int, budget_s: float = 1.5) -> float:
    """Median over up to `repeats` timed runs after one warm-up; stops early once `budget_s` is spent,
    so the multi-second cases (CRD, RKD at n = 1024) keep the whole run short."""
    step()  # warm-up
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_step(loss: nn.Module, student: torch.Tensor, *args: object) -> Callable[[], None]:
    def step() -> None:
        student.grad = None
        loss(student, *args).backward()

    return step


def model_step_seconds(n: int, repeats: int) -> tuple[float, str]:
    model, description = student_model((16, 32, 64))
    model = model.to(memory_format=torch.channels_last)  # as the training loop runs it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(n, 1, 28, 28).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images).square().mean().backward()  # a negligible loss: isolates the model's cost
        optimizer.step()

    return median_seconds(step, repeats), description


def stage_maps(n: int, widths: tuple[int, ...]) -> list[torch.Tensor]:
    model, _ = student_model(widths)
    with torch.no_grad():
        return model.stage_features(torch.randn(n, 1, 28, 28))


def embedding_rows(n: int, d: int, repeats: int) -> list[tuple[str, float]]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(n, d, generator=generator, requires_grad=True)
    teacher = torch.randn(n, d, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    rows = max(1, min(n, RKD_ANGLE_ROWS)) if n > 180 else None
    crd = build("crd", student_dim=d, teacher_dim=d, n_data=60000)
    crd_gathered = build("crd", student_dim=d, teacher_dim=d, n_data=60000)
    crd_gathered.score_every_entry = False  # the official code's (n, K+1, feat) gather, as the reference
    cases = [
        ("relaxed_contrastive", loss_step(build("relaxed_contrastive"), student, teacher)),
        ("contrastive (labels)", loss_step(build("contrastive"), student, labels)),
        ("rkd" + (f" (angle rows {rows})" if rows else " (full angle)"), loss_step(build("rkd", angle_max_rows=rows), student, teacher)),
        ("pkt", loss_step(build("pkt"), student, teacher)),
        ("darkrank (+triplet)", loss_step(build("darkrank"), student, teacher, labels)),
        ("crd (4096 negatives)", loss_step(crd, student, teacher, torch.randint(0, 60000, (n,), generator=generator))),
        ("crd (4096 negatives, gathered rows)",
         loss_step(crd_gathered, student, teacher, torch.randint(0, 60000, (n,), generator=generator))),
    ]
    return [(name, median_seconds(step, repeats)) for name, step in cases]


def feature_rows(n: int, repeats: int) -> list[tuple[str, float]]:
    student_maps = [m.requires_grad_() for m in stage_maps(n, (16, 32, 64))]
    teacher_maps = stage_maps(n, (32, 64, 128))
    fitnet = build("fitnet", student_channels=[16, 32, 64], teacher_channels=[32, 64, 128])
    attention = build("attention")

    def run(loss: nn.Module) -> Callable[[], None]:
        def step() -> None:
            for m in student_maps:
                m.grad = None
            loss(student_maps, teacher_maps).backward()

        return step

    return [("fitnet (3 stages)", median_seconds(run(fitnet), repeats)),
            ("attention (3 stages)", median_seconds(run(attention), repeats))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/losses.md"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = [
        "# Loss forward+backward time vs. one student training step",
        "",
        "Command: `.venv/bin/python benchmarks/losses.py` "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"median of up to {args.repeats} runs after one warm-up, fewer once 1.5 s is spent).",
        f"1-minute load average when the run started: {__import__('os').getloadavg()[0]:.1f} on 2 cores.",
        f"RKD: full angle term at n = 180; angle term on {RKD_ANGLE_ROWS} random anchor rows for n = 512 and 1024.",
        "share = loss / (model step + loss); the model step is forward + backward + SGD of the default student on n views.",
        "",
    ]
    for n in SIZES:
        step_s, description = model_step_seconds(n, args.repeats)
        lines += [f"## n = {n}: student step {step_s * 1e3:.1f} ms ({description})", "",
                  "| loss | d | ms | share of step |", "|---|---|---|---|"]
        for d in DIMS:
            for name, seconds in embedding_rows(n, d, args.repeats):
                lines.append(f"| {name} | {d} | {seconds * 1e3:.1f} | {seconds / (step_s + seconds):.1%} |")
        for name, seconds in feature_rows(n, args.repeats):
            lines.append(f"| {name} | maps | {seconds * 1e3:.1f} | {seconds / (step_s + seconds):.1%} |")
        lines.append("")
        print("\n".join(lines[-(len(DIMS) * 6 + 6):]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
