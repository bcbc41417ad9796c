"""The results report: the paper's Table 1 shape, built only from the metrics files of one run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.eval.plots import recall_at_k_plot

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (metrics key, column title, format)
    ("probe_top1", "Probe top-1", "pct"),
    ("knn_top1", "kNN top-1", "pct"),
    ("recall@1", "R@1", "pct"),
    ("recall@2", "R@2", "pct"),
    ("recall@4", "R@4", "pct"),
    ("recall@8", "R@8", "pct"),
    ("map@r", "MAP@R", "pct"),
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


def results_table(rows: Sequence[ResultRow], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    """A Markdown table: one row per model, a bold section line where the section changes."""
    shown = [c for c in columns if any(c[0] in r.metrics for r in rows)]
    lines = ["| Model | " + " | ".join(title for _, title, _ in shown) + " |",
             "|---|" + "|".join("---:" for _ in shown) + "|"]
    section = None if len({r.section for r in rows}) > 1 else rows[0].section if rows else None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** |" + "|".join("" for _ in shown) + "|")
        cells = [_cell(row.metrics.get(key), kind) for key, _, kind in shown]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(student: str, loss: str, loss_names: dict[str, str]) -> str:
    return f"{student} student, {loss} ({loss_names.get(loss, loss)})"


def build_report(params, eval_root: Path, out_dir: Path) -> tuple[str, dict[str, float]]:
    """Markdown report and a flat summary from the evaluation metrics of every model in the grids.

    Sections: one per teacher, holding raw pixels, the teacher, then each student of the grid.
    """
    loss_names = {name: loss.name for name, loss in params.losses.items()}
    sections: list[tuple[str, list[ResultRow]]] = []
    summary: dict[str, float] = {}
    for grid in (params.transfer.grid, params.transfer.metric_grid):
        if grid is None:
            continue
        for teacher in grid.teacher:
            t = params.teachers[teacher]
            if t.train_classes is None:
                title = f"{teacher} teacher ({t.method}), all classes"
            else:
                title = f"{teacher} teacher ({t.method}), trained on classes {list(t.train_classes)}, evaluated on the others"
            rows = [ResultRow(title, "raw pixels", read_metrics(eval_root / f"pixels-{teacher}" / "metrics.json")),
                    ResultRow(title, f"teacher ({t.model.backbone})",
                              read_metrics(eval_root / f"teacher-{teacher}" / "metrics.json"))]
            for student in grid.student:
                for loss in grid.loss:
                    model_id = f"{teacher}-{student}-{loss}"
                    rows.append(ResultRow(title, _label(student, loss, loss_names),
                                          read_metrics(eval_root / model_id / "metrics.json")))
            sections.append((teacher, rows))
            for row, model_id in zip(rows, [f"pixels-{teacher}", f"teacher-{teacher}"] + [
                    f"{teacher}-{s}-{l}" for s in grid.student for l in grid.loss]):
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
        parts += [f"## {rows[0].section}", "", results_table(rows), "", f"![Recall@K]({figure.relative_to(out_dir.parent)})", ""]
    classification = params.classification.grid
    if classification.student:
        rows = classification_rows(params, eval_root.parent / "classification")
        parts += ["## Classification: the loss as a distillation term beside cross-entropy", "",
                  results_table(rows, CLASSIFICATION_COLUMNS), ""]
        for row in rows:
            summary[f"classification.{row.label}.top1"] = float(row.metrics["top1"])
    return "\n".join(parts), summary


CLASSIFICATION_COLUMNS = (("top1", "Top-1", "pct"), ("top5", "Top-5", "pct"), ("parameters", "Params", "params"))


def classification_rows(params, root: Path) -> list[ResultRow]:
    """Teacher, then each (student, method) of the classification grid, in grid order."""
    grid = params.classification.grid
    rows = []
    for teacher in grid.teacher:
        title = f"{teacher} classifier teacher ({params.classification.teachers[teacher].model.backbone})"
        rows.append(ResultRow(title, f"teacher {teacher}", read_metrics(root / "teachers" / teacher / "metrics.json")))
        for student in grid.student:
            for method in grid.method:
                loss = params.classification.methods[method].loss or "cross-entropy only"
                rows.append(ResultRow(title, f"{student} student, {method} ({loss})",
                                      read_metrics(root / f"{teacher}-{student}-{method}" / "metrics.json")))
    return rows
