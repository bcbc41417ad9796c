"""The results report, built only from the metrics files of one run: every setting over seeds (mean, 95%
CI, paired differences: `pipeline.seed_report`), then every model in the paper's Table 1 shape."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.config import SETTINGS, Params
from pipeline.eval.curves import recall_at_k_plot
from pipeline.outputs import (classifier_student_dir, classifier_teacher_dir, eval_dir, grid_id, pixels_id,
                              student_id, teacher_id, transferred_id)
from pipeline.seed_report import SeedRow, seed_section

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


def _replica(label: str, seed: int) -> str:
    return f"{label}, seed {seed}"


RELAXED = "relaxed_contrastive"  # the loss every other method of a grid is compared with, paired by seed


def _compared(methods: Sequence[str], loss_of: dict[str, str | None]) -> tuple[str, list[str]]:
    """The reference method (the grid's first relaxed-contrastive entry) and its baselines (every other
    method of the grid); no baselines where the grid has no relaxed entry."""
    relaxed = [m for m in methods if loss_of.get(m) == RELAXED]
    if not relaxed:
        return RELAXED, []
    return relaxed[0], [m for m in methods if m != relaxed[0]]


def _per_seed(params: Params, folder_of: Callable[[int], Path]) -> dict[int, dict[str, Any]]:
    """seed -> the metrics file of that replica, for every seed of `seeds` (a missing one is an error)."""
    return {seed: read_metrics(folder_of(seed) / "metrics.json") for seed in params.seeds}


def _mean_metrics(per_seed: dict[int, dict[str, Any]]) -> dict[str, float]:
    """The mean over seeds of every numeric metric all replicas report (the Recall@K figure's curves)."""
    keys = set.intersection(*(set(m) for m in per_seed.values()))
    return {k: sum(float(m[k]) for m in per_seed.values()) / len(per_seed) for k in sorted(keys)
            if all(isinstance(m[k], (int, float)) and not isinstance(m[k], bool) for m in per_seed.values())}


TRANSFERRED = {"projection": "L2-normalised projection", "embedding": "L2-normalised embedding",
               "backbone": "pooled features"}


def reference_rows(params: Params, teacher: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, model id, metrics) of raw pixels, the teacher's own output and the embedding it hands its
    students (`teacher_embedding`), which differ: SimCLR is scored on pooled features and transfers its
    projection; the Proxy-Anchor teacher is scored raw and transfers its normalised embedding, which is
    what the Proxy-Anchor repo scores (cosine)."""
    t = params.teachers[teacher]
    return [(label, key, read_metrics(eval_dir(key) / "metrics.json")) for label, key in (
        ("raw pixels", pixels_id(teacher)),
        (f"teacher ({t.model.backbone})", teacher_id(teacher)),
        (f"teacher ({t.model.backbone}), transferred: {TRANSFERRED[t.transfer_embedding]}", transferred_id(teacher)))]


def transfer_seed_rows(params: Params, setting: str, teacher: str) -> list[SeedRow]:
    """Raw pixels and the teacher both ways (`reference_rows`; single runs under `seed`), then every
    (student, loss) of the setting's grid over `seeds`, each student's rows a group of their own (methods
    are compared within a student)."""
    grid = params.transfer.of(setting).grid
    t = params.teachers[teacher]
    loss_names = {name: loss.name for name, loss in params.losses.items()}
    references = reference_rows(params, teacher)
    teacher_metrics = references[1][2]
    rows = [SeedRow(label, None, {params.seed: metrics}, key=key) for label, key, metrics in references]
    for student in grid.student:
        for loss in grid.loss:
            per_seed = _per_seed(params, lambda seed: eval_dir(student_id(teacher, student, loss, seed)))
            label = _label(student, loss, loss_names)
            if setting == "metric_learning":
                where = table1_setting(t.model, params.students[student].model, teacher_metrics,
                                       per_seed[params.seeds[0]])
                label = f"{student} student ({TABLE1_SHORT[where]}), {loss} ({loss_names.get(loss, loss)})"
            rows.append(SeedRow(label, loss, per_seed, key=grid_id(teacher, student, loss),
                                group=f"{teacher}-{student}"))
    return rows


def classification_seed_rows(params: Params, teacher: str) -> list[SeedRow]:
    """The classifier teacher (a single run, under `seed`), then every (student, method) over `seeds`."""
    section = params.classification
    grid = section.grid
    rows = [SeedRow(f"teacher {teacher} ({section.teachers[teacher].model.backbone})", None,
                    {params.seed: read_metrics(classifier_teacher_dir(teacher) / "metrics.json")},
                    key=f"teacher-{teacher}")]
    for student in grid.student:
        for method in grid.method:
            loss = section.methods[method].loss or "cross-entropy only"
            per_seed = _per_seed(params, lambda seed: classifier_student_dir(teacher, student, method, seed))
            rows.append(SeedRow(f"{student} student, {method} ({loss})", method, per_seed,
                                key=grid_id(teacher, student, method), group=f"{teacher}-{student}"))
    return rows


SEED_COLUMNS = (("probe_top1", "Probe top-1", "pct"), ("knn_top1", "kNN top-1", "pct"),
                ("recall@1", "R@1", "pct"), ("map@r", "MAP@R", "pct"), ("r_precision", "R-Prec", "pct"),
                ("nmi", "NMI", "pct"), ("embedding_dim", "Dim", "int"), ("parameters", "Params", "params"))


def seed_sections(params: Params, out_dir: Path) -> tuple[list[str], dict[str, float | int]]:
    """Every setting over seeds (`pipeline.seed_report`): per teacher, mean and 95% CI of each metric, the
    relaxed student minus each baseline paired by seed with its verdict, a figure, and the summary keys
    ``<setting>.<model>.<metric>.*`` and ``<setting>.<teacher>-<student>.relaxed_vs_<baseline>.<metric>.*``."""
    loss_of = {name: loss.name for name, loss in params.losses.items()}
    parts: list[str] = []
    summary: dict[str, float | int] = {}
    columns = SEED_COLUMNS if params.evaluation.nmi else tuple(  # evaluation.nmi false: no model has one
        (key, "NMI off", kind) if key == "nmi" else (key, title, kind) for key, title, kind in SEED_COLUMNS)
    for setting in SETTINGS:
        grid = params.transfer.of(setting).grid
        reference, baselines = _compared(grid.loss, loss_of)
        for teacher in grid.teachers_with_models():
            t = params.teachers[teacher]
            classes = ("all classes" if t.train_classes is None
                       else f"trained on classes {list(t.train_classes)}, evaluated on the others")
            name = "Table 1" if setting == "metric_learning" else "Self-supervised"
            title = f"{name} over seeds: {teacher} teacher ({t.method}), {classes}"
            figure = out_dir / f"seeds_{teacher}.png"
            text, numbers = seed_section(setting, title, transfer_seed_rows(params, setting, teacher),
                                         reference=reference, baselines=baselines, figure_path=figure,
                                         figure_link=str(figure.relative_to(out_dir.parent)), columns=columns)
            parts.append(text)
            summary.update(numbers)
    section = params.classification
    reference, baselines = _compared(section.grid.method, {m: c.loss for m, c in section.methods.items()})
    for teacher in section.grid.teachers_with_models():
        figure = out_dir / f"seeds_classification_{teacher}.png"
        text, numbers = seed_section("classification", f"Classification over seeds: {teacher} teacher, the loss "
                                     "as a distillation term beside cross-entropy",
                                     classification_seed_rows(params, teacher), reference=reference,
                                     baselines=baselines, figure_path=figure,
                                     figure_link=str(figure.relative_to(out_dir.parent)),
                                     columns=CLASSIFICATION_COLUMNS, metrics=("top1",))
        parts.append(text)
        summary.update(numbers)
    return parts, summary


SETTING_TITLES = {"self_supervised": "self-supervised transfer", "metric_learning": "metric-learning transfer (Table 1)",
                  "classification": "classification"}


def absent_settings(params: Params) -> list[str]:
    """The settings whose grid declares no model in params.yaml (an empty teacher, student or loss list),
    each with the grid key that says so: the report leaves them out and says so once, at its top."""
    grids = {setting: (f"transfer.{setting}.grid", params.transfer.of(setting).grid) for setting in SETTINGS}
    grids["classification"] = ("classification.grid", params.classification.grid)
    return [f"{SETTING_TITLES[setting]} (`{key}.{grid.empty_field()}` is empty)"
            for setting, (key, grid) in grids.items() if not grid.declares_models()]


def build_report(params: Params, out_dir: Path) -> tuple[str, dict[str, float | int]]:
    """Markdown report and its summary (`seed_sections`) from the metrics files of every model in the grids.

    First each setting over seeds, then every model on its own line (each replica of each student): one
    section per teacher (raw pixels, the teacher, its students), Table 1, classification.
    """
    loss_names = {name: loss.name for name, loss in params.losses.items()}
    columns = retrieval_columns(params.evaluation.retrieval.ks)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = ", ".join(str(s) for s in params.seeds)
    parts = ["# Results", "",
             f"Dataset `{params.data.name}`; retrieval distance `{params.evaluation.retrieval.distance}`; "
             "percentages on the test split, final epoch of every model (no test-set model selection). "
             "Probe and kNN are fitted on a seeded subsample of the train split "
             f"({params.evaluation.probe.train_samples or 'all'} images)."
             + ("" if params.evaluation.nmi else " NMI off (`evaluation.nmi: false`): no test set was clustered."),
             "",
             f"Seeds: every student is trained once per seed of `seeds` ({seeds}), which sets its initial "
             "weights, augmentation stream and batch order; raw pixels and the teachers are single runs under "
             f"`seed` ({params.seed}), which also fixes the evaluation protocol (probe subsample and its "
             "validation split), so every replica is scored on the same sample and methods are compared "
             "paired by seed.", ""]
    absent = absent_settings(params)
    if absent:
        parts += [f"Not in this run: {'; '.join(absent)}.", ""]
    seed_parts, summary = seed_sections(params, out_dir)
    parts += seed_parts
    parts += ["# Every model", "", "One line per model and replica; the sections above aggregate them.", ""]
    for setting in SETTINGS:
        grid = params.transfer.of(setting).grid
        for teacher in grid.teachers_with_models():
            t = params.teachers[teacher]
            if t.train_classes is None:
                title = f"{teacher} teacher ({t.method}), all classes"
            else:
                title = f"{teacher} teacher ({t.method}), trained on classes {list(t.train_classes)}, evaluated on the others"
            curves = {label: metrics for label, _, metrics in reference_rows(params, teacher)}
            rows = [ResultRow(title, label, metrics) for label, metrics in curves.items()]
            for student in grid.student:
                for loss in grid.loss:
                    per_seed = _per_seed(params, lambda seed: eval_dir(student_id(teacher, student, loss, seed)))
                    label = _label(student, loss, loss_names)
                    rows += [ResultRow(title, _replica(label, seed), m) for seed, m in per_seed.items()]
                    mean = f" (mean of {len(per_seed)} seeds)" if len(per_seed) > 1 else ""
                    curves[label + mean] = _mean_metrics(per_seed)
            figure = out_dir / f"recall_{teacher}.png"
            recall_at_k_plot(figure, curves)
            parts += [f"## {title}", "", results_table(rows, columns), "",
                      f"![Recall@K]({figure.relative_to(out_dir.parent)})", ""]
    for teacher in params.transfer.metric_learning.grid.teachers_with_models():
        parts += table1_section(params, teacher, loss_names)
    if params.classification.grid.declares_models():
        parts += ["## Classification: the loss as a distillation term beside cross-entropy", "",
                  results_table(classification_rows(params), CLASSIFICATION_COLUMNS), ""]
    return "\n".join(parts), summary


CLASSIFICATION_COLUMNS = (("top1", "Top-1", "pct"), ("top5", "Top-5", "pct"), ("parameters", "Params", "params"))


def classification_rows(params: Params) -> list[ResultRow]:
    """Teacher, then each replica of each (student, method) of the classification grid, in grid order."""
    grid = params.classification.grid
    rows = []
    for teacher in grid.teachers_with_models():
        title = f"{teacher} classifier teacher ({params.classification.teachers[teacher].model.backbone})"
        rows.append(ResultRow(title, f"teacher {teacher}", read_metrics(classifier_teacher_dir(teacher) / "metrics.json")))
        for student in grid.student:
            for method in grid.method:
                loss = params.classification.methods[method].loss or "cross-entropy only"
                for seed in params.seeds:
                    metrics = read_metrics(classifier_student_dir(teacher, student, method, seed) / "metrics.json")
                    rows.append(ResultRow(title, _replica(f"{student} student, {method} ({loss})", seed), metrics))
    return rows


# The paper's Table 1 settings, in its order: what a student is, relative to its teacher.
TABLE1_SETTINGS = {
    "self_transfer": "Self-transfer: the teacher's network and dimension",
    "dim_reduction": "Dimensionality reduction: the teacher's network, fewer dimensions",
    "compression": "Compression: a smaller network, fewer dimensions",
    "other": "Other students (not one of the paper's three settings)",
}
TABLE1_SHORT = {"self_transfer": "self-transfer", "dim_reduction": "dimensionality reduction",
                "compression": "compression", "other": "other"}
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
    each with raw pixels, the teacher and every replica of every (student, loss) of that setting, retrieval
    columns only; the best student of each column in bold."""
    grid = params.transfer.metric_learning.grid
    t = params.teachers[teacher]
    ks = params.evaluation.retrieval.ks
    columns = [c for c in retrieval_columns(ks) if c[0].startswith("recall@") or c[0] in ("map@r", "r_precision")
               or c[0] in TABLE1_KEYS]
    references = reference_rows(params, teacher)
    teacher_metrics = references[1][2]
    by_setting: dict[str, list[ResultRow]] = {}
    for student in grid.student:
        for loss in grid.loss:
            for seed in params.seeds:
                metrics = read_metrics(eval_dir(student_id(teacher, student, loss, seed)) / "metrics.json")
                setting = table1_setting(t.model, params.students[student].model, teacher_metrics, metrics)
                by_setting.setdefault(setting, []).append(
                    ResultRow(setting, _replica(_label(student, loss, loss_names), seed), metrics))
    classes = "all classes" if t.train_classes is None else f"classes {list(t.train_classes)}"
    lines = [f"## Table 1: {teacher} teacher ({t.method}, {t.model.backbone}, trained on {classes})", "",
             "Retrieval on the classes the teacher never saw, final step of every model and replica; the best "
             "student of each column in bold. One replica is no comparison: the means, intervals and paired "
             "differences over seeds are in \"Table 1 over seeds\" above.", ""]
    for setting, title in TABLE1_SETTINGS.items():
        if setting not in by_setting:
            continue
        rows = [*(ResultRow(setting, label, metrics) for label, _, metrics in references), *by_setting[setting]]
        lines += [f"### {title}", "", results_table(rows, columns, bold_best_from=len(references)), ""]
    return lines
