"""The results report, built only from the metrics files of one run: every setting over seeds (mean, 95%
CI, paired differences: `pipeline.seed_report`), then every model in the paper's Table 1 shape."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline import metrics as registry
from pipeline.config import RELAXED, TEACHER_OBJECTIVE, Params, reference_loss
from pipeline.deploy.report import deploy_section
from pipeline.eval.curves import recall_at_k_plot
from pipeline.metrics import Metric
from pipeline.metrics_files import read_metrics
from pipeline.replica import Replica, replicas
from pipeline.seed_report import SeedRow, seed_section
from pipeline.setting import TRANSFER_SETTINGS, Role, Setting
from pipeline.stage_spec import (METRICS, classifier_teacher_dir, eval_dir, pixels_id, teacher_dir, teacher_id,
                                 transferred_id)


@dataclass(frozen=True)
class ResultRow:
    """One model's line in a table: `section` groups rows (one teacher and its students)."""

    section: str
    label: str
    metrics: dict[str, Any]


def _cell(value: Any, column: Metric) -> str:
    kind = column.format
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


def results_table(rows: Sequence[ResultRow], columns: Sequence[Metric] | None = None,
                  bold_best_from: int | None = None) -> str:
    """A Markdown table: one row per model, a bold section line where the section changes; its columns are
    the registered metrics the rows report (`pipeline.metrics`), or those of `columns`.

    `bold_best_from`: rows from this index on compete, and the best percentage of each column among them
    is bold (ties all bold); rows before it (raw pixels, the teacher) are references.
    """
    keys = {k for r in rows for k in r.metrics}
    shown = registry.columns(keys) if columns is None else [c for c in columns if c.key in keys]
    best: dict[str, str] = {}
    if bold_best_from is not None:
        for column in shown:
            values = [_cell(r.metrics.get(column.key), column) for r in rows[bold_best_from:]
                      if r.metrics.get(column.key) is not None]
            if column.format == "pct" and column.better and values:
                best[column.key] = (max if column.better == "higher" else min)(values, key=float)
    lines = ["| Model | " + " | ".join(c.title for c in shown) + " |",
             "|---|" + "|".join("---:" for _ in shown) + "|"]
    section = None if len({r.section for r in rows}) > 1 else rows[0].section if rows else None
    for index, row in enumerate(rows):
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** |" + "|".join("" for _ in shown) + "|")
        cells = [_cell(row.metrics.get(c.key), c) for c in shown]
        if bold_best_from is not None and index >= bold_best_from:
            cells = [f"**{cell}**" if best.get(c.key) == cell else cell for cell, c in zip(cells, shown)]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(student: str, loss: str, loss_names: dict[str, str]) -> str:
    return f"{student} student, {loss} ({loss_names.get(loss, loss)})"


def _replica(label: str, seed: int) -> str:
    return f"{label}, seed {seed}"




def _compared(methods: Sequence[str], loss_of: dict[str, str | None], reference: str = RELAXED) -> tuple[str, list[str]]:
    """The reference method (the grid's first entry of loss `reference`: the relaxed contrastive loss, STML in
    the self-taught setting) and its baselines (every other method of the grid); no baselines where the grid
    has no such entry."""
    found = [m for m in methods if loss_of.get(m) == reference]
    if not found:
        return reference, []
    return found[0], [m for m in methods if m != found[0]]


def _scores(replica: Replica) -> dict[str, Any]:
    """A replica's scores: an embedding's evaluation, a classifier's own metrics file."""
    folder = replica.folder if replica.setting is Setting.CLASSIFICATION else eval_dir(replica.name)
    return read_metrics(folder / METRICS)


def _cells(params: Params, setting: Setting, teacher: str) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(student, method) -> seed -> scores, for every replica of `teacher` in the setting's grid, in grid
    order (a missing metrics file is an error)."""
    grid = params.classification.grid if setting is Setting.CLASSIFICATION else params.transfer.of(setting).grid
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for replica in replicas(grid, setting, teacher, params.seeds):
        cells.setdefault((replica.student, replica.method), {})[replica.seed] = _scores(replica)
    return cells


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
    what the Proxy-Anchor repo scores (cosine). The transferred row also carries the relaxed loss's label
    gap on train images, from the teacher's training summary (`pipeline.eval.label_gap`)."""
    t = params.teachers[teacher]
    rows = [(label, key, read_metrics(eval_dir(key) / METRICS)) for label, key in (
        ("raw pixels", pixels_id(teacher)),
        (f"teacher ({t.model.backbone})", teacher_id(teacher)),
        (f"teacher ({t.model.backbone}), transferred: {TRANSFERRED[t.transfer_embedding]}", transferred_id(teacher)))]
    trained = read_metrics(teacher_dir(teacher) / METRICS)
    rows[2][2].update({key: trained[key] for key in ("label_gap",) if key in trained})
    return rows


def labelled_reference_teachers(params: Params, setting: Setting, teacher: str) -> list[str]:
    """The teachers that show what labels buy next to a self-taught grid's `teacher`: every metric-learning
    (Proxy-Anchor) teacher trained on the same classes, scored on the same unseen ones."""
    if setting is not Setting.SELF_TAUGHT:
        return []
    classes = params.teachers[teacher].train_classes
    return [name for name, t in params.teachers.items()
            if t.setting is Setting.METRIC_LEARNING and t.train_classes == classes]


def labelled_references(params: Params, setting: Setting, teacher: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, model id, metrics) of each `labelled_reference_teachers` model."""
    return [(f"labelled reference: {name} teacher ({params.teachers[name].method}, trained with labels)",
             teacher_id(name), read_metrics(eval_dir(teacher_id(name)) / METRICS))
            for name in labelled_reference_teachers(params, setting, teacher)]


SECTION_NAMES = {Setting.SELF_SUPERVISED: "Self-supervised", Setting.METRIC_LEARNING: "Table 1",
                 Setting.SELF_TAUGHT: "Self-taught metric learning"}
SELF_TAUGHT_NOTE = (
    "{who} from the teacher's backbone, "
    "the self-supervised model of the same unlabelled images (STML's ImageNet start, here on the training classes "
    "themselves), and train the section's budget on; the transfer losses learn from that teacher frozen, from a "
    "random start (the 2021 recipe). No labels reach any of them; the labelled reference is trained with its "
    "classes' labels.\n")


def transfer_seed_rows(params: Params, setting: Setting, teacher: str) -> list[SeedRow]:
    """Raw pixels and the teacher both ways (`reference_rows`; single runs under `seed`), then every
    (student, loss) of the setting's grid over `seeds`, each student's rows a group of their own (methods
    are compared within a student)."""
    loss_names = {name: loss.name for name, loss in params.losses.items()}
    rows = [SeedRow(label, None, {params.seed: metrics}, key=key)
            for label, key, metrics in [*reference_rows(params, teacher), *labelled_references(params, setting, teacher)]]
    for (student, loss), per_seed in _cells(params, setting, teacher).items():
        label = _label(student, loss, loss_names)
        if setting is Setting.METRIC_LEARNING:
            label = f"{student} student ({params.students[student].role.short}), {loss} ({loss_names.get(loss, loss)})"
        rows.append(SeedRow(label, loss, per_seed, key=Replica(setting, teacher, student, loss, 0).cell,
                            group=f"{teacher}-{student}"))
    return rows


def classification_seed_rows(params: Params, teacher: str) -> list[SeedRow]:
    """The classifier teacher (a single run, under `seed`), then every (student, method) over `seeds`."""
    section = params.classification
    rows = [SeedRow(f"teacher {teacher} ({section.teachers[teacher].model.backbone})", None,
                    {params.seed: read_metrics(classifier_teacher_dir(teacher) / METRICS)},
                    key=teacher_id(teacher))]
    for (student, method), per_seed in _cells(params, Setting.CLASSIFICATION, teacher).items():
        loss = section.methods[method].loss or "cross-entropy only"
        rows.append(SeedRow(f"{student} student, {method} ({loss})", method, per_seed,
                            key=Replica(Setting.CLASSIFICATION, teacher, student, method, 0).cell,
                            group=f"{teacher}-{student}"))
    return rows


def hyperparameters_line(params: Params, setting: Setting) -> str:
    """Where the values of a setting's methods come from: the search on validation (`losses.NAME.tuned`,
    pipeline/search; its page names the split), or params.yaml as declared."""
    grid = getattr(params.grid(setting), setting.method_key)
    tuned = [name for name in grid if setting in params.method(setting, name).tuned]
    where = "chosen on the validation split by `python -m pipeline.search` (the split, trials and values: reports/search/)"
    if not tuned:
        return "Hyperparameters: as declared in params.yaml, not searched on validation.\n"
    if len(tuned) == len(grid):
        return f"Hyperparameters: every method's {where}.\n"
    return (f"Hyperparameters: {', '.join(tuned)} {where}; {', '.join(l for l in grid if l not in tuned)} as "
            "declared in params.yaml.\n")


def seed_sections(params: Params, out_dir: Path) -> tuple[list[str], dict[str, float | int]]:
    """Every setting over seeds (`pipeline.seed_report`): per teacher, mean and 95% CI of each metric, the
    relaxed student minus each baseline paired by seed with its verdict, a figure, and the summary keys
    ``<setting>.<model>.<metric>.*`` and ``<setting>.<teacher>-<student>.relaxed_vs_<baseline>.<metric>.*``."""
    loss_of = {name: loss.name for name, loss in params.losses.items()}
    parts: list[str] = []
    summary: dict[str, float | int] = {}
    for setting in TRANSFER_SETTINGS:
        grid = params.transfer.of(setting).grid
        reference, baselines = _compared(grid.loss, loss_of, reference_loss(setting))
        for teacher in grid.teachers_with_models():
            t = params.teachers[teacher]
            classes = ("all classes" if t.train_classes is None
                       else f"trained on classes {list(t.train_classes)}, evaluated on the others")
            title = f"{SECTION_NAMES[setting]} over seeds: {teacher} teacher ({t.method}), {classes}"
            figure = out_dir / f"seeds_{teacher}.png"
            text, numbers = seed_section(setting, title, transfer_seed_rows(params, setting, teacher),
                                         reference=reference, baselines=baselines, figure_path=figure,
                                         figure_link=str(figure.relative_to(out_dir.parent)))
            note = ""
            if setting is Setting.SELF_TAUGHT:
                control = [m for m in grid.loss if loss_of.get(m) == TEACHER_OBJECTIVE]
                who = "STML (Kim et al., CVPR 2022)" + (
                    f" and the SimCLR / MoCo control (`{', '.join(control)}`) start" if control else " starts")
                note = "\n" + SELF_TAUGHT_NOTE.format(who=who)
            parts.append(text + note + hyperparameters_line(params, setting) + "\n")
            summary.update(numbers)
    section = params.classification
    reference, baselines = _compared(section.grid.method, {m: c.loss for m, c in section.methods.items()})
    for teacher in section.grid.teachers_with_models():
        figure = out_dir / f"seeds_classification_{teacher}.png"
        text, numbers = seed_section(Setting.CLASSIFICATION, f"Classification over seeds: {teacher} teacher, the loss "
                                     "as a distillation term beside cross-entropy",
                                     classification_seed_rows(params, teacher), reference=reference,
                                     baselines=baselines, figure_path=figure,
                                     figure_link=str(figure.relative_to(out_dir.parent)))
        parts.append(text + hyperparameters_line(params, Setting.CLASSIFICATION) + "\n")
        summary.update(numbers)
    return parts, summary


def absent_settings(params: Params) -> list[str]:
    """The settings whose grid declares no model in params.yaml (an empty teacher, student or loss list),
    each with the grid key that says so: the report leaves them out and says so once, at its top."""
    grids = {setting: params.transfer.of(setting).grid for setting in TRANSFER_SETTINGS}
    grids[Setting.CLASSIFICATION] = params.classification.grid
    return [f"{setting.title} (`{setting.grid_key}.{grid.empty_field()}` is empty)"
            for setting, grid in grids.items() if not grid.declares_models()]


def build_report(params: Params, out_dir: Path) -> tuple[str, dict[str, float | int]]:
    """Markdown report and its summary (`seed_sections`) from the metrics files of every model in the grids.

    First each setting over seeds, then every model on its own line (each replica of each student): one
    section per teacher (raw pixels, the teacher, its students), Table 1, classification.
    """
    loss_names = {name: loss.name for name, loss in params.losses.items()}
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
    parts += deploy_section(params, out_dir)
    parts += ["# Every model", "", "One line per model and replica; the sections above aggregate them.", ""]
    for setting in TRANSFER_SETTINGS:
        grid = params.transfer.of(setting).grid
        for teacher in grid.teachers_with_models():
            t = params.teachers[teacher]
            if t.train_classes is None:
                title = f"{teacher} teacher ({t.method}), all classes"
            else:
                title = f"{teacher} teacher ({t.method}), trained on classes {list(t.train_classes)}, evaluated on the others"
            curves = {label: metrics for label, _, metrics in [*reference_rows(params, teacher),
                                                                *labelled_references(params, setting, teacher)]}
            rows = [ResultRow(title, label, metrics) for label, metrics in curves.items()]
            for (student, loss), per_seed in _cells(params, setting, teacher).items():
                label = _label(student, loss, loss_names)
                rows += [ResultRow(title, _replica(label, seed), m) for seed, m in per_seed.items()]
                mean = f" (mean of {len(per_seed)} seeds)" if len(per_seed) > 1 else ""
                curves[label + mean] = _mean_metrics(per_seed)
            figure = out_dir / f"recall_{teacher}.png"
            recall_at_k_plot(figure, curves)
            parts += [f"## {title}", "", results_table(rows), "",
                      f"![Recall@K]({figure.relative_to(out_dir.parent)})", ""]
    for teacher in params.transfer.metric_learning.grid.teachers_with_models():
        parts += table1_section(params, teacher, loss_names)
    if params.classification.grid.declares_models():
        parts += ["## Classification: the loss as a distillation term beside cross-entropy", "",
                  results_table(classification_rows(params)), ""]
    return "\n".join(parts), summary


def classification_rows(params: Params) -> list[ResultRow]:
    """Teacher, then each replica of each (student, method) of the classification grid, in grid order."""
    rows = []
    for teacher in params.classification.grid.teachers_with_models():
        title = f"{teacher} classifier teacher ({params.classification.teachers[teacher].model.backbone})"
        rows.append(ResultRow(title, f"teacher {teacher}", read_metrics(classifier_teacher_dir(teacher) / METRICS)))
        for (student, method), per_seed in _cells(params, Setting.CLASSIFICATION, teacher).items():
            loss = params.classification.methods[method].loss or "cross-entropy only"
            rows += [ResultRow(title, _replica(f"{student} student, {method} ({loss})", seed), metrics)
                     for seed, metrics in per_seed.items()]
    return rows


TABLE1_KEYS = (registry.MAP_AT_R, "r_precision", "embedding_dim", "parameters")  # with Recall@K: Table 1's columns


def table1_section(params, teacher: str, loss_names: dict[str, str]) -> list[str]:
    """Markdown lines of Table 1 for a metric-learning teacher: one block per student role present in its
    grid (`students.NAME.role`), each with raw pixels, the teacher and every replica of every (student, loss)
    of that role, retrieval columns only; the best student of each column in bold."""
    t = params.teachers[teacher]
    references = reference_rows(params, teacher)
    by_role: dict[Role, list[ResultRow]] = {}
    for (student, loss), per_seed in _cells(params, Setting.METRIC_LEARNING, teacher).items():
        role = params.students[student].role
        by_role.setdefault(role, []).extend(ResultRow(role.value, _replica(_label(student, loss, loss_names), seed), m)
                                            for seed, m in per_seed.items())
    keys = {k for rows in by_role.values() for row in rows for k in row.metrics}
    columns = [c for c in registry.columns(keys) if c.key.startswith("recall@") or c.key in TABLE1_KEYS]
    classes = "all classes" if t.train_classes is None else f"classes {list(t.train_classes)}"
    lines = [f"## Table 1: {teacher} teacher ({t.method}, {t.model.backbone}, trained on {classes})", "",
             "Retrieval on the classes the teacher never saw, final step of every model and replica; the best "
             "student of each column in bold. One replica is no comparison: the means, intervals and paired "
             "differences over seeds are in \"Table 1 over seeds\" above.", ""]
    for role in Role:
        if role not in by_role:
            continue
        rows = [*(ResultRow(role.value, label, metrics) for label, _, metrics in references), *by_role[role]]
        lines += [f"### {role.title}", "", results_table(rows, columns, bold_best_from=len(references)), ""]
    return lines
