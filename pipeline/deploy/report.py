"""The report's "what transfer buys" section: each student beside its teacher as deployed (`deploy.json` of the
export stages), and a Pareto figure of MAP@R against latency. Reads files only: no torch, no model.

Per (student, method) cell, the mean over its seeds of: MAP@R (the evaluation's, test split) and the share of
the teacher's it keeps; ONNX Runtime ms per image at batch 1 on one thread and at the largest batch on all
cores, and how many times faster than the teacher; the gallery index's bytes per item (exact, faiss) and how
many times smaller than the teacher's; the HNSW index's recall against the exact one; the int8 variant's
MAP@R change and speed-up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipeline.config import Params
from pipeline.metrics import MAP_AT_R
from pipeline.metrics_files import read_metrics
from pipeline.replica import replicas
from pipeline.setting import TRANSFER_SETTINGS, Setting
from pipeline.stage_spec import DEPLOY_METRICS, METRICS, deploy_dir, eval_dir, teacher_id


def _model(model_id: str) -> dict[str, float]:
    """A model's deployed costs beside its evaluation's MAP@R and Recall@1."""
    scores = read_metrics(eval_dir(model_id) / METRICS)
    return {**read_metrics(deploy_dir(model_id) / DEPLOY_METRICS), MAP_AT_R: scores[MAP_AT_R],
            "recall@1": scores["recall@1"]}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = set.intersection(*(set(r) for r in rows))
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}


def _timing_keys(params: Params) -> tuple[str, str]:
    """The two latencies the table shows: batch 1 on one thread (one query), largest batch on all cores
    (indexing a gallery); the first and last where `deploy` declares others."""
    batches, threads = params.deploy.batch_sizes, params.deploy.threads
    return (f"latency_ms_b{min(batches)}_t{threads[0]}", f"latency_ms_b{max(batches)}_t{threads[-1]}")


def _label(key: str) -> str:
    batch, threads = key.removeprefix("latency_ms_b").split("_t")
    return f"batch {batch}, {'all cores' if threads == '0' else threads + ' thread' + ('s' if threads != '1' else '')}"


def deploy_section(params: Params, out_dir: Path) -> list[str]:
    """Markdown lines of the section, one table and one figure per teacher with students."""
    single, batched = _timing_keys(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# What transfer buys", "",
             "Every trained model exported to ONNX (uint8 images in, the evaluated embedding out, preprocessing "
             "inside; checked against PyTorch on the test images) and its int8 variant, timed under ONNX "
             f"Runtime on this machine's CPU (ms per image, median of {params.deploy.repeats} runs), with its "
             "gallery index in faiss (exact; HNSW beside it) over the test images. Students: mean over seeds. "
             "\"Kept\": the student's MAP@R as a share of its teacher's; \"x faster\" and \"x smaller\": the "
             "teacher's figure over the student's. Latencies this small are noisy: compare within a table.", ""]
    for setting in TRANSFER_SETTINGS:
        grid = params.transfer.of(setting).grid
        for teacher in grid.teachers_with_models():
            teacher_row = _model(teacher_id(teacher))
            cells: dict[tuple[str, str], list[dict[str, float]]] = {}
            for replica in replicas(grid, setting, teacher, params.seeds):
                cells.setdefault((replica.student, replica.method), []).append(_model(replica.name))
            lines += [f"## {setting.title}: {teacher} teacher", "",
                      f"| Deployed model | MAP@R | Kept | Params | MFLOPs | ms ({_label(single)}) | x faster | "
                      f"ms ({_label(batched)}) | x faster | Index B/item | x smaller | HNSW recall@"
                      f"{params.deploy.index.k} | int8 MAP@R change | int8 x faster ({_label(batched)}) |",
                      "|---|" + "---:|" * 13]
            rows = [(f"teacher {teacher}", teacher_row)]
            rows += [(f"{student}, {method}", _mean(per_seed)) for (student, method), per_seed in cells.items()]
            for label, row in rows:
                lines.append("| " + " | ".join([
                    label, f"{100 * row[MAP_AT_R]:.2f}", f"{100 * row[MAP_AT_R] / teacher_row[MAP_AT_R]:.0f}%",
                    f"{row['parameters'] / 1e3:.1f}k", f"{row['flops'] / 1e6:.1f}",
                    f"{row[f'fp32.{single}']:.4f}", f"{teacher_row[f'fp32.{single}'] / row[f'fp32.{single}']:.2f}",
                    f"{row[f'fp32.{batched}']:.4f}", f"{teacher_row[f'fp32.{batched}'] / row[f'fp32.{batched}']:.2f}",
                    f"{row['index.exact_bytes_per_item']:.0f}",
                    f"{teacher_row['index.exact_bytes_per_item'] / row['index.exact_bytes_per_item']:.1f}",
                    f"{100 * row['index.hnsw_recall_at_k']:.1f}" if "index.hnsw_recall_at_k" in row else "-",
                    f"{100 * (row[f'int8.{MAP_AT_R}'] - row[f'fp32.{MAP_AT_R}']):+.2f}",
                    f"{row[f'fp32.{batched}'] / row[f'int8.{batched}']:.2f}"]) + " |")
            figure = out_dir / f"pareto_{teacher}.png"
            pareto_plot(figure, teacher_row, cells, single, f"{setting.title}: {teacher} teacher")
            lines += ["", f"![MAP@R against latency]({figure.relative_to(out_dir.parent)})", ""]
    return lines


def pareto_plot(path: Path, teacher: dict[str, float], cells: dict[tuple[str, str], list[dict[str, float]]],
                latency_key: str, title: str) -> None:
    """MAP@R against ONNX Runtime latency (log axis), one point per model and replica, methods by colour,
    students by marker, the teacher a black star; the models no other beats on both axes joined by a line."""
    figure = Figure(figsize=(6.5, 4.2))
    axis = figure.subplots()
    methods = sorted({method for _, method in cells})
    students = sorted({student for student, _ in cells})
    markers = "osD^v<>pXh"
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    points = [(teacher[f"fp32.{latency_key}"], teacher[MAP_AT_R])]
    for (student, method), per_seed in cells.items():
        xs = [row[f"fp32.{latency_key}"] for row in per_seed]
        ys = [100 * row[MAP_AT_R] for row in per_seed]
        axis.scatter(xs, ys, color=colours[method], marker=markers[students.index(student) % len(markers)],
                     s=28, alpha=0.8)
        points += [(x, y / 100) for x, y in zip(xs, ys)]
    axis.scatter([teacher[f"fp32.{latency_key}"]], [100 * teacher[MAP_AT_R]], color="black", marker="*", s=140,
                 label="teacher")
    front, best = [], -1.0
    for x, y in sorted(points):
        if y > best:
            front.append((x, 100 * y))
            best = y
    axis.plot(*zip(*front), color="grey", linewidth=0.8, linestyle="--", label="Pareto front")
    for method in methods:
        axis.scatter([], [], color=colours[method], marker="o", label=method)
    for student in students:
        axis.scatter([], [], color="grey", marker=markers[students.index(student) % len(markers)], label=student)
    axis.set_xscale("log")
    axis.set_xlabel(f"ms per image, ONNX Runtime ({_label(latency_key)})")
    axis.set_ylabel("MAP@R (%)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
