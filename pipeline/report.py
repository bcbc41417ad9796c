"""The results report: the paper's Table 1 shape, built only from the metrics files of one run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import SETTINGS
from pipeline.eval.curves import recall_at_k_plot
from pipeline.outputs import (classifier_student_dir, classifier_teacher_dir, eval_dir, pixels_id, student_id,
                              teacher_id)

Column = tuple[str, str, str]  # (metrics key, column title, format)


def retrieval_columns(ks: Sequence[int]) -> tuple[Column, ...]:
    """The table's columns; Recall@K for the K the evaluation computed (`evaluation.retrieval.ks`)."""
    return (
        ("probe_top1", "Probe top-1", "pct"),
        ("knn_top1", "kNN top-1", "pct"),
        *((f"recall@{k}", f"R@{k}", "pct") for k in ks),
        ("map@r", "MAP@R", "pct"),
        ("r_precision", "R-Prec", "pct"),
        ("embedding_dim", "Dim", "int"),
        ("parameters", "Params", "params"),
        ("ms_per_image", "ms/img", "ms"),
    )


@dataclass(frozen=True)
class ResultRow:
    """One model's line in a table: `section` groups rows (one teacher and its students)."""

    section: str
    label: str
    metrics: dict[str, Any]


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A stage's flat metrics.json; a missing file is an error naming it (the report never guesses)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report: metrics file {path} is missing; run its stage first (dvc repro)")
    return json.loads(path.read_text())


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * float(value):.2f}"
    if kind == "int":
        return str(int(value))
    if kind == "params":
        if int(value) == 0:
            return "-"
        return f"{int(value) / 1e6:.2f}M" if int(value) >= 1e5 else f"{int(value) / 1e3:.1f}k"
    return f"{float(value):.3f}"


def results_table(rows: Sequence[ResultRow], columns: Sequence[Column], bold_best_from: int | None = None) -> str:
    """A Markdown table: one row per model, a bold section line where the section changes.

    `bold_best_from`: rows from this index on compete, and the highest percentage of each column among
    them is bold (ties all bold); rows before it (raw pixels, the teacher) are references.
    """
    shown = [c for c in columns if any(c[0] in r.metrics for r in rows)]
    best: dict[str, str] = {}
    if bold_best_from is not None:
        for key, _, kind in shown:
            values = [_cell(r.metrics.get(key), kind) for r in rows[bold_best_from:] if r.metrics.get(key) is not None]
            if kind == "pct" and values:
                best[key] = max(values, key=float)
    lines = ["| Model | " + " | ".join(title for _, title, _ in shown) + " |",
             "|---|" + "|".join("---:" for _ in shown) + "|"]
    section = None if len({r.section for r in rows}) > 1 else rows[0].section if rows else None
    for index, row in enumerate(rows):
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** |" + "|".join("" for _ in shown) + "|")
        cells = [_cell(row.metrics.get(key), kind) for key, _, kind in shown]
        if bold_best_from is not None and index >= bold_best_from:
            cells = [f"**{cell}**" if best.get(key) == cell else cell for cell, (key, _, _) in zip(cells, shown)]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(student: str, loss: str, loss_names: dict[str, str]) -> str:
    return f"{student} student, {loss} ({loss_names.get(loss, loss)})"


def build_report(params, out_dir: Path) -> tuple[str, dict[str, float]]:
    """Markdown report and a flat summary from the evaluation metrics of every model in the grids.

    Sections: one per teacher, holding raw pixels, the teacher, then each student of the grid.
    """
    loss_names = {name: loss.name for name, loss in params.losses.items()}
    columns = retrieval_columns(params.evaluation.retrieval.ks)
    sections: list[tuple[str, list[ResultRow]]] = []
    summary: dict[str, float] = {}
    for setting in SETTINGS:
        grid = params.transfer.of(setting).grid
        for teacher in grid.teacher:
            t = params.teachers[teacher]
            if t.train_classes is None:
                title = f"{teacher} teacher ({t.method}), all classes"
            else:
                title = f"{teacher} teacher ({t.method}), trained on classes {list(t.train_classes)}, evaluated on the others"
            model_ids = [pixels_id(teacher), teacher_id(teacher)] + [
                student_id(teacher, s, loss) for s in grid.student for loss in grid.loss]
            labels = ["raw pixels", f"teacher ({t.model.backbone})"] + [
                _label(s, loss, loss_names) for s in grid.student for loss in grid.loss]
            rows = [ResultRow(title, label, read_metrics(eval_dir(model_id) / "metrics.json"))
                    for label, model_id in zip(labels, model_ids)]
            sections.append((teacher, rows))
            for row, model_id in zip(rows, model_ids):
                for key in ("recall@1", "map@r", "probe_top1"):
                    if key in row.metrics:
                        summary[f"{model_id}.{key}"] = float(row.metrics[key])
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Results", "",
             f"Dataset `{params.data.name}`; retrieval distance `{params.evaluation.retrieval.distance}`; "
             "percentages on the test split, final epoch of every model (no test-set model selection). "
             "Probe and kNN are fitted on a seeded subsample of the train split "
             f"({params.evaluation.probe.train_samples or 'all'} images).", ""]
    for teacher, rows in sections:
        figure = out_dir / f"recall_{teacher}.png"
        recall_at_k_plot(figure, {row.label: row.metrics for row in rows})
        parts += [f"## {rows[0].section}", "", results_table(rows, columns), "", f"![Recall@K]({figure.relative_to(out_dir.parent)})", ""]
    for teacher in params.transfer.metric_learning.grid.teacher:
        parts += table1_section(params, teacher, loss_names)
    classification = params.classification.grid
    if classification.student:
        rows = classification_rows(params)
        parts += ["## Classification: the loss as a distillation term beside cross-entropy", "",
                  results_table(rows, CLASSIFICATION_COLUMNS), ""]
        for row in rows:
            summary[f"classification.{row.label}.top1"] = float(row.metrics["top1"])
    return "\n".join(parts), summary


CLASSIFICATION_COLUMNS = (("top1", "Top-1", "pct"), ("top5", "Top-5", "pct"), ("parameters", "Params", "params"))


def classification_rows(params) -> list[ResultRow]:
    """Teacher, then each (student, method) of the classification grid, in grid order."""
    grid = params.classification.grid
    rows = []
    for teacher in grid.teacher:
        title = f"{teacher} classifier teacher ({params.classification.teachers[teacher].model.backbone})"
        rows.append(ResultRow(title, f"teacher {teacher}", read_metrics(classifier_teacher_dir(teacher) / "metrics.json")))
        for student in grid.student:
            for method in grid.method:
                loss = params.classification.methods[method].loss or "cross-entropy only"
                rows.append(ResultRow(title, f"{student} student, {method} ({loss})",
                                      read_metrics(classifier_student_dir(teacher, student, method) / "metrics.json")))
    return rows


# The paper's Table 1 settings, in its order: what a student is, relative to its teacher.
TABLE1_SETTINGS = {
    "self_transfer": "Self-transfer: the teacher's network and dimension",
    "dim_reduction": "Dimensionality reduction: the teacher's network, fewer dimensions",
    "compression": "Compression: a smaller network, fewer dimensions",
    "other": "Other students (not one of the paper's three settings)",
}
TABLE1_KEYS = ("embedding_dim", "parameters")


def table1_setting(teacher_model, student_model, teacher_metrics: dict, student_metrics: dict) -> str:
    """Which Table 1 setting a student is in: the same network (backbone and widths) with the teacher's
    dimension, the same network with fewer dimensions, or fewer parameters and at most the teacher's
    dimension; dimensions and parameters as the evaluation counted them (pooled width where there is no
    embedding head; the projection head left out)."""
    same_network = (teacher_model.backbone, teacher_model.widths) == (student_model.backbone, student_model.widths)
    dim, teacher_dim = student_metrics.get("embedding_dim"), teacher_metrics.get("embedding_dim")
    if same_network and dim == teacher_dim:
        return "self_transfer"
    if same_network and dim is not None and teacher_dim is not None and dim < teacher_dim:
        return "dim_reduction"
    smaller = student_metrics.get("parameters", 0) < teacher_metrics.get("parameters", 0)
    if not same_network and smaller and dim is not None and teacher_dim is not None and dim <= teacher_dim:
        return "compression"
    return "other"


def table1_section(params, teacher: str, loss_names: dict[str, str]) -> list[str]:
    """Markdown lines of Table 1 for a metric-learning teacher: one block per setting present in its grid,
    each with raw pixels, the teacher and every (student, loss) of that setting, retrieval columns only;
    the best student of each column in bold."""
    grid = params.transfer.metric_learning.grid
    t = params.teachers[teacher]
    ks = params.evaluation.retrieval.ks
    columns = [c for c in retrieval_columns(ks) if c[0].startswith("recall@") or c[0] in ("map@r", "r_precision")
               or c[0] in TABLE1_KEYS]
    pixels = read_metrics(eval_dir(pixels_id(teacher)) / "metrics.json")
    teacher_metrics = read_metrics(eval_dir(teacher_id(teacher)) / "metrics.json")
    by_setting: dict[str, list[ResultRow]] = {}
    for student in grid.student:
        for loss in grid.loss:
            metrics = read_metrics(eval_dir(student_id(teacher, student, loss)) / "metrics.json")
            setting = table1_setting(t.model, params.students[student].model, teacher_metrics, metrics)
            by_setting.setdefault(setting, []).append(ResultRow(setting, _label(student, loss, loss_names), metrics))
    classes = "all classes" if t.train_classes is None else f"classes {list(t.train_classes)}"
    lines = [f"## Table 1: {teacher} teacher ({t.method}, {t.model.backbone}, trained on {classes})", "",
             "Retrieval on the classes the teacher never saw, final step of every model; the best student of "
             "each column in bold. The paper's Table 1 at this scale, one seed: differences of a point are noise.", ""]
    for setting, title in TABLE1_SETTINGS.items():
        if setting not in by_setting:
            continue
        rows = [ResultRow(setting, "raw pixels", pixels),
                ResultRow(setting, f"teacher ({t.model.backbone})", teacher_metrics), *by_setting[setting]]
        lines += [f"### {title}", "", results_table(rows, columns, bold_best_from=2), ""]
    return lines
