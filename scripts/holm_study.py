"""Holm-adjusted verdicts of the committed multi-seed study, from its summary.json files alone.

The study's reports (reports/study/SETTING/) were built before the report gave Holm's correction; their
summaries hold each comparison's paired difference, sd and n, which fix the paired t-test's p. The family
is one setting's comparisons (the report's section: one teacher's grid), as in `pipeline.seed_report`.
Writes reports/study/holm.md and reports/study/holm.json. Run: .venv/bin/python scripts/holm_study.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.integrity import write_json  # noqa: E402
from pipeline.metrics import metric  # noqa: E402
from pipeline.stats import VERDICT_CODE, Interval, holm, p_value, verdict_at  # noqa: E402

STUDY = ROOT / "reports" / "study"


def main() -> None:
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    lines = ["# The multi-seed study with Holm's correction", "",
             "Recomputed by `scripts/holm_study.py` from `reports/study/*/summary.json`: each comparison's paired "
             "t-test p (from its committed difference, sd and n), and Holm's adjusted p over the comparisons of its "
             "setting (family-wise 5%). A verdict is separated where p < 0.05.", ""]
    for path in sorted(STUDY.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        keys = sorted(k[:-len(".diff")] for k in summary if k.endswith(".diff"))
        setting = path.parent.name
        ps = [p_value(Interval(n=summary[f"{k}.n"], mean=summary[f"{k}.diff"], sd=summary.get(f"{k}.sd"),
                               ci_low=None, ci_high=None)) for k in keys]
        adjusted = holm(ps)
        kept = 0
        rows = []
        for key, p, q in zip(keys, ps, adjusted):
            diff = summary[f"{key}.diff"]
            better = metric(key.rsplit(".", 1)[1]).better != "lower"
            raw, holm_verdict = verdict_at(p, diff, better), verdict_at(q, diff, better)
            kept += raw != "not separated" and holm_verdict != "not separated"
            table.setdefault(setting, {})[key] = {"diff": diff, "p": p, "p_holm": q,
                                                   "verdict": VERDICT_CODE[raw], "verdict_holm": VERDICT_CODE[holm_verdict]}
            rows.append(f"| {key.split('.', 1)[1]} | {100 * diff:+.2f} | {p:.4f} | {q:.4f} | {raw} | {holm_verdict} |")
        separated = sum(verdict_at(p, summary[f"{k}.diff"]) != "not separated" for k, p in zip(keys, ps))
        lines += [f"## {setting}: {len(keys)} comparisons; separated {separated} per comparison, {kept} after Holm", "",
                  "| comparison | difference (points) | p | p (Holm) | verdict | verdict (Holm) |",
                  "|---|---:|---:|---:|---|---|", *rows, ""]
    (STUDY / "holm.md").write_text("\n".join(lines))
    write_json(STUDY / "holm.json", table)


if __name__ == "__main__":
    main()
