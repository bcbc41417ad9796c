"""The report over seeds: per-setting tables, paired comparisons, a figure and the summary's numbers.

Why: one run per method cannot say which transfer method is better here, since the methods differ by
about the seed-to-seed noise. The Metric Learning Reality Check (Musgrave, Belongie, Lim, ECCV 2020)
asks for every number to be reported over repeated runs with its spread, and for methods to be compared
under one protocol; this module turns each setting's per-seed metrics files into exactly that, using
`pipeline.stats` for the numbers (mean, sample sd, Student-t 95% CI of the mean, paired differences and
their verdicts).

Input, per setting (one section of the report): an ordered list of rows, each
``SeedRow(label, method or None, {seed: metrics dict}, key=None, group=None)`` (a plain 3-tuple works
too); the metrics dicts are the flat evaluation files (rates as fractions in [0, 1]). ``method`` names the
transfer method of a student row and is None for reference rows (raw pixels, the teacher). Methods are
compared within a group, where each may appear in one row only: a setting with several students gives
each student's rows its own group (the student's name).

Pairing: relaxed - baseline is taken over the seeds both rows have (the paired difference needs matched
seeds); the cell gives that n and the text names the seeds left unpaired.

No spread: one seed, or several seeds with identical values, has no interval. The text says so ("1
seed, no interval", "n=5, no spread, no interval"), never a zero-width interval, the verdict is "not
separated", and the summary leaves the ``sd``/``ci_low``/``ci_high`` keys out (writing 0 would read as a
measured zero spread, NaN is not valid JSON for every reader, and `dvc metrics show` lists only numbers).

No torch and no mlflow: the report stage must start fast; matplotlib's object API (no pyplot) draws the
figure on the Agg canvas.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import metrics as registry
from pipeline.metrics import Metric
from pipeline.stats import (  # _seed_order: the order stats itself gives seeds in
    INTERVAL_LEGEND,
    VERDICT_CODE,
    NOT_SEPARATED,
    Interval,
    PairedDifference,
    Verdict,
    _seed_order,
    format_interval,
    holm,
    p_value,
    paired_difference,
    summarize,
    verdict,
    verdict_at,
)

SCALE = {"pct": 100.0, "ms": 1.0}  # metric formats summarised over seeds, with their display scale
NO_SPREAD_NOTE = "a cell without interval had one seed or no spread over its seeds"
ONE_SEED_NOTE = ("One seed: plain numbers, no intervals, and no difference below is separated (a verdict "
                 "needs seeds).")


class SeedRow(NamedTuple):
    """One model of a setting over seeds; `key` names it in the summary (default: a slug of `label`).

    Methods are compared within a `group`: a setting with several students gives each student its group.
    """

    label: str
    method: str | None
    per_seed: Mapping[Hashable, Mapping[str, Any]]
    key: str | None = None
    group: str | None = None  # rows compared with each other (e.g. one student); None: the whole setting


@dataclass(frozen=True)
class Comparison:
    """reference - baseline on one metric over their common seeds (`difference` None if they share none)."""

    reference: str
    baseline: str
    metric: str
    group: str | None
    difference: PairedDifference | None
    only_reference: tuple[Hashable, ...]
    only_baseline: tuple[Hashable, ...]
    # The paired t-test's p and, over every comparison of one `compare` call (the family: one section of
    # the report, i.e. one teacher's grid in one setting), Holm's adjusted p and the verdict it gives.
    p: float | None = None
    p_holm: float | None = None
    verdict_holm: Verdict = NOT_SEPARATED


def default_columns(rows: Sequence[SeedRow]) -> list[Metric]:
    """The registered metrics the rows report that are shown over seeds, in the registry's order."""
    return registry.columns(_reported(_rows(rows)), over_seeds=True)


def _one_seed(rows: Sequence[SeedRow]) -> bool:
    return all(len(row.per_seed) <= 1 for row in rows)


def metric_interval(row: SeedRow, metric: str) -> Interval | None:
    """The metric over the seeds of `row` that report it (n says how many); None if none does.

    An interval of zero width (every seed equal) is returned without sd and CI: there is no spread to show.
    """
    values = _values(row, metric)
    if not values:
        return None
    return _spread_or_none(summarize(values, what=f"{row.label} {metric}"))


def seed_table(rows: Sequence[SeedRow], columns: Sequence[Metric] | None = None, digits: int = 1) -> str:
    """Markdown table, one line per row: rates as ``mean ± sd [ci_low, ci_high] (n=N)`` in percent, or plain
    numbers where every row has one seed.

    "int" and "params" columns (dimension, parameters) are properties of the model, not measurements:
    their value is shown once when every seed agrees.
    """
    rows = _rows(rows)
    columns = default_columns(rows) if columns is None else columns
    plain = _one_seed(rows)
    lines = ["| Model | " + " | ".join(c.title for c in columns) + " |",
             "|---|" + "|".join("---:" for _ in columns) + "|"]
    for row in rows:
        lines.append(f"| {row.label} | " + " | ".join(_cell(row, c, digits, plain) for c in columns) + " |")
    return "\n".join(lines)


def compare(rows: Sequence[SeedRow], reference: str, baselines: Sequence[str],
            metrics: Sequence[str] | None = None) -> list[Comparison]:
    """reference - baseline, paired by seed, in each group of rows, for each baseline then each metric.

    Pairing removes the seed effect both methods share (same data order and initialisation), so only the
    seeds both rows have count. A method that is not in a group, or is in two of its rows, is an error
    naming it: the report never guesses which row was meant.
    """
    rows = _rows(rows)
    metrics = _compared(rows) if metrics is None else metrics
    out = []
    for group in dict.fromkeys(row.group for row in rows if row.method is not None):
        members = [row for row in rows if row.group == group]
        by_method = _rows_by_method(members, [reference, *baselines], group)
        for baseline, metric in ((b, m) for b in baselines for m in metrics):
            a, b = (_values(by_method[name], metric) for name in (reference, baseline))
            common = set(a) & set(b)
            difference = None
            if common:
                higher = registry.metric(metric).better != "lower"
                d = paired_difference({s: a[s] for s in common}, {s: b[s] for s in common},
                                      higher_is_better=higher)
                interval = _spread_or_none(d.interval)
                difference = replace(d, interval=interval, verdict=verdict(interval, higher))
            out.append(Comparison(reference, baseline, metric, group, difference,
                                  tuple(_seed_order(set(a) - set(b))), tuple(_seed_order(set(b) - set(a))),
                                  p=None if difference is None else p_value(difference.interval)))
    adjusted = holm([c.p for c in out])
    return [replace(c, p_holm=p, verdict_holm=verdict_at(p, c.difference.interval.mean,
                                                         c.difference.higher_is_better) if c.difference else NOT_SEPARATED)
            for c, p in zip(out, adjusted)]


def comparison_table(comparisons: Sequence[Comparison], digits: int = 1, plain: bool = False) -> str:
    """Markdown table of paired differences: a line per (group and) baseline, a cell per metric and verdict.

    Cells are percentage points; below the table, the seeds that could not be paired, if any.
    """
    if not comparisons:
        return ""
    metrics = list(dict.fromkeys(c.metric for c in comparisons))
    lines_of = list(dict.fromkeys((c.group, c.baseline) for c in comparisons))
    cell = {(c.group, c.baseline, c.metric): c for c in comparisons}
    reference = comparisons[0].reference
    lines = [f"| {reference} − baseline | " + " | ".join(_title(m) for m in metrics) + " |",
             "|---|" + "|".join("---:" for _ in metrics) + "|"]
    notes: dict[str, list[str]] = {}  # text of the unpaired seeds -> the metrics it applies to
    for group, baseline in lines_of:
        name = baseline if group is None else f"{group}: {baseline}"
        texts = []
        for metric in metrics:
            c = cell.get((group, baseline, metric))
            texts.append("-" if c is None else _difference_text(c, digits, plain))
            unpaired = () if c is None else ((c.only_reference, reference), (c.only_baseline, baseline))
            sides = [f"seeds {list(seeds)} only for {method}" for seeds, method in unpaired if seeds]
            if sides:
                notes.setdefault(f"{name} vs {reference}: " + "; ".join(sides), []).append(_title(metric))
        lines.append(f"| {name} | " + " | ".join(texts) + " |")
    notes_text = [f"- unpaired, left out ({', '.join(ms)}): {text}" for text, ms in notes.items()]
    return "\n".join(lines + ([""] + notes_text if notes_text else []))


def seed_figure(path: str | Path, rows: Sequence[SeedRow], metrics: Sequence[str] | None = None,
                reference: str | None = None) -> None:
    """PNG: one panel per metric, each row's mean (percent) with its 95% CI as whiskers.

    Rows without interval are drawn as hollow markers without whiskers. The PNG carries no software
    version, so the same numbers give the same bytes.
    """
    from matplotlib.figure import Figure  # deferred: only the figure needs matplotlib

    rows = _rows(rows)
    metrics = _compared(rows) if metrics is None else metrics
    figure = Figure(figsize=(4.2 * len(metrics), 0.45 * len(rows) + 1.4))
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    hollow = False
    for axis, metric in zip(axes, metrics):
        for y, row in enumerate(rows):
            s = metric_interval(row, metric)
            if s is None:
                continue
            colour = "C3" if reference is not None and row.method == reference else (
                "0.5" if row.method is None else "C0")
            if s.ci_low is None or s.ci_high is None:
                hollow = True
                axis.plot([100 * s.mean], [y], "o", mfc="white", mec=colour)
            else:
                err = [[100 * (s.mean - s.ci_low)], [100 * (s.ci_high - s.mean)]]
                axis.errorbar([100 * s.mean], [y], xerr=err, fmt="o", color=colour, capsize=3)
        axis.set_xlabel(f"{_title(metric)} (%)")
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [row.label for row in rows], fontsize=8)
    axes[0].invert_yaxis()
    note = "; hollow: no interval" if hollow else ""
    figure.suptitle(f"mean and 95% CI over seeds (Student t){note}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})


def seed_summary(setting: str, rows: Sequence[SeedRow], comparisons: Sequence[Comparison] = (),
                 columns: Sequence[Metric] | None = None) -> dict[str, float | int]:
    """Flat numeric dict for reports/summary.json, in fractions like the metrics files.

    ``<setting>.<row key>.<metric>.{mean,sd,ci_low,ci_high,n}`` for every interval column, and
    ``<setting>[.<group>].<reference>_vs_<baseline>.<metric>.{diff,sd,ci_low,ci_high,n,verdict,p,p_holm,
    verdict_holm}`` with verdict 1 better, 0 not separated, -1 worse (`stats.VERDICT_CODE`; `_holm`: after Holm's
    correction over the section's comparisons). sd/ci and p keys are absent where there is no
    interval (module docstring).
    """
    rows = _rows(rows)
    columns = default_columns(rows) if columns is None else columns
    out: dict[str, float | int] = {}
    for row in rows:
        for column in columns:
            if column.format in SCALE and (s := metric_interval(row, column.key)) is not None:
                out.update(_flat(f"{setting}.{row.key}.{column.key}", s, "mean"))
    for c in comparisons:
        if c.difference is not None:
            group = "" if c.group is None else f"{c.group}."
            prefix = f"{setting}.{group}{c.reference}_vs_{c.baseline}.{c.metric}"
            out.update(_flat(prefix, c.difference.interval, "diff"))
            out[f"{prefix}.verdict"] = VERDICT_CODE[c.difference.verdict]
            out[f"{prefix}.verdict_holm"] = VERDICT_CODE[c.verdict_holm]
            out.update({f"{prefix}.{key}": value for key, value in (("p", c.p), ("p_holm", c.p_holm))
                        if value is not None})
    return out


def seed_section(setting: str, title: str, rows: Sequence[SeedRow], *, reference: str,
                 baselines: Sequence[str], figure_path: str | Path, figure_link: str,
                 columns: Sequence[Metric] | None = None) -> tuple[str, dict[str, float | int]]:
    """One setting of the report: Markdown (table, comparisons, figure link) and its summary entries.

    Comparisons are made only when the reference method is among the rows (and `baselines` is not empty).
    Where every row has one seed, the heading says "one seed" once and the cells are plain numbers.
    """
    rows = _rows(rows)
    metrics = _compared(rows)
    plain = _one_seed(rows)
    has_reference = any(row.method == reference for row in rows)
    comparisons = compare(rows, reference, baselines, metrics) if has_reference and baselines else []
    seed_figure(figure_path, rows, metrics, reference)
    if plain:
        parts = [f"## {title} (one seed)", "", ONE_SEED_NOTE, "", seed_table(rows, columns), ""]
    else:
        parts = [f"## {title}", "", f"Cells: {INTERVAL_LEGEND}; {NO_SPREAD_NOTE}.", "", seed_table(rows, columns), ""]
    if comparisons:
        lead = (f"Differences {reference} − baseline, percentage points." if plain else
                f"Paired differences {reference} − baseline over common seeds, percentage points: "
                "better / worse only where the 95% CI excludes 0 (paired t-test p < 0.05, each comparison at "
                f"its own 5%); in parentheses the verdict after Holm's correction over the {len(comparisons)} "
                "comparisons of this section (family-wise 5%), which is the one to read.")
        parts += [lead, "", comparison_table(comparisons, plain=plain), ""]
    parts += [f"![{title}: mean and 95% CI over seeds]({figure_link})", ""]
    return "\n".join(parts), seed_summary(setting, rows, comparisons, columns)


def _rows(rows: Iterable[SeedRow | tuple]) -> list[SeedRow]:
    """SeedRows with their summary keys filled in; duplicate keys, dotted keys or groups are refused."""
    out = [SeedRow(*row) for row in rows]
    out = [row._replace(key=row.key or re.sub(r"[^A-Za-z0-9@+-]+", "_", row.label).strip("_")) for row in out]
    keys = [row.key for row in out]
    bad = sorted({k for k in keys if keys.count(k) > 1 or "." in k or not k})
    bad += sorted({g for row in out if (g := row.group) is not None and ("." in g or not g)})
    if bad:
        raise ValueError(f"seed_report: row keys must be unique; keys, groups non-empty, without '.': {bad}")
    return out


def _values(row: SeedRow, metric: str) -> dict[Hashable, Any]:
    """seed -> value of `metric`, over the seeds of `row` that report it."""
    return {s: m[metric] for s, m in row.per_seed.items() if m.get(metric) is not None}


def _rows_by_method(rows: list[SeedRow], methods: Sequence[str], group: str | None) -> dict[str, SeedRow]:
    found: dict[str, list[str]] = {m: [row.label for row in rows if row.method == m] for m in methods}
    missing = [m for m, labels in found.items() if not labels]
    repeated = {m: labels for m, labels in found.items() if len(labels) > 1}
    if missing or repeated:
        where = "" if group is None else f" of group {group!r}"
        raise ValueError(f"seed_report: each compared method needs one row{where}: missing {missing}, "
                         f"in several rows {repeated} (give each student's rows their own group)")
    return {m: next(row for row in rows if row.method == m) for m in methods}


def _spread_or_none(s: Interval) -> Interval:
    if s.sd is not None and s.sd <= 1e-12 * max(1.0, abs(s.mean)):
        return replace(s, sd=None, ci_low=None, ci_high=None)
    return s


def _interval_text(s: Interval, scale: float, digits: int, signed: bool = False) -> str:
    if s.sd is None and s.n > 1:
        return f"{s.mean * scale:{'+' if signed else ''}.{digits}f} (n={s.n}, no spread, no interval)"
    return format_interval(s, scale=scale, digits=digits, signed=signed)


def _compared(rows: Sequence[SeedRow]) -> list[str]:
    """The metrics methods are compared on (`Metric.compared`) that the rows report."""
    return registry.compared(_reported(rows))


def _reported(rows: Sequence[SeedRow]) -> set[str]:
    """Every metric key any seed of any row reports."""
    return {k for row in rows for m in row.per_seed.values() for k in m}


def _cell(row: SeedRow, column: Metric, digits: int, plain: bool = False) -> str:
    metric, kind = column.key, column.format
    if kind in SCALE:
        s = metric_interval(row, metric)
        if s is None:
            return "-"
        places = digits if kind == "pct" else 3
        return f"{s.mean * SCALE[kind]:.{places}f}" if plain else _interval_text(s, SCALE[kind], places)
    values = {m[metric] for m in row.per_seed.values() if m.get(metric) is not None}
    if not values:
        return "-"
    if len(values) > 1:
        return "varies over seeds: " + ", ".join(str(v) for v in sorted(values))
    if kind == "float":
        return f"{float(values.pop()):.3f}"
    value = int(values.pop())
    return str(value) if kind != "params" else ("-" if value == 0 else _count(value))


def _difference_text(c: Comparison, digits: int, plain: bool = False) -> str:
    if c.difference is None:
        return "no common seeds"
    if plain:
        return f"{100 * c.difference.interval.mean:+.{digits}f}"
    return (f"{_interval_text(c.difference.interval, 100.0, digits, signed=True)}, {c.difference.verdict} "
            f"(Holm: {c.verdict_holm})")


def _flat(prefix: str, s: Interval, mean_key: str) -> dict[str, float | int]:
    out: dict[str, float | int] = {f"{prefix}.{mean_key}": s.mean, f"{prefix}.n": s.n}
    if s.sd is not None and s.ci_low is not None and s.ci_high is not None:
        out.update({f"{prefix}.sd": s.sd, f"{prefix}.ci_low": s.ci_low, f"{prefix}.ci_high": s.ci_high})
    return out


def _title(key: str) -> str:
    found = registry.metric(key)
    return key if found is None else found.title


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"

