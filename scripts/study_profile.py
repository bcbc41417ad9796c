"""Print the params.yaml of one part of the multi-seed study: the `cpu_study` profile (profiles/cpu_study.yaml
composed over the default params.yaml, as `python -m pipeline.profiles cpu_study` composes it) with only one
setting's teachers and grid (`self_supervised`, `metric_learning`, `self_taught` or `classification`), or all
of it. The self-taught part also trains the labelled reference its report shows (`pipeline.report.
labelled_references`: the Proxy-Anchor teacher of the same classes), which the metric-learning part trains too.
The default is this checkout's params.yaml, or git's HEAD:params.yaml when params.yaml has been composed
from a profile (the study runs in its own clone of HEAD, so it never stacks on the profile in use here).

Why parts: the whole study is ~200 stages, estimated at about 75 minutes on a fast 2-core machine and
three hours on one 2.8x slower (from per-stage times measured on each), and a stopped study resumes only
where its `.study/` clone survives. Each part is a
whole setting, so its report's intervals and verdicts are complete; the parts share every seed and
hyper-parameter, so they add up to the whole study.

Usage: python scripts/study_profile.py PART [PROFILE]   (PROFILE: a name in profiles/, cpu_study by default)
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from pipeline.config import ConfigError, validate_params
from pipeline.profiles import compose, composed_profile, read_default
from pipeline.report import labelled_reference_teachers
from pipeline.setting import TRANSFER_SETTINGS, Setting

REPO = Path(__file__).resolve().parents[1]
PARTS = ("all", "self_supervised", "metric_learning", "self_taught", "classification")
USAGE = f"usage: python scripts/study_profile.py PART [PROFILE]  (PART: {', '.join(PARTS)})"


def part_profile(raw: dict, part: str) -> dict:
    """`raw` with the grids (and the teachers) of every setting but `part` emptied."""
    if part not in PARTS:
        raise ConfigError(f"study part {part!r} is not one of {', '.join(PARTS)}")
    params = validate_params(raw)
    if part == "all":
        return raw
    raw = {**raw, "transfer": dict(raw["transfer"])}
    kept = set()
    if part != "classification":
        setting = Setting(part)
        kept = {*params.transfer.of(setting).grid.teacher,
                *(name for teacher in params.transfer.of(setting).grid.teacher
                  for name in labelled_reference_teachers(params, setting, teacher))}
    raw["teachers"] = {name: section for name, section in raw["teachers"].items() if name in kept}
    for setting in (s.value for s in TRANSFER_SETTINGS):
        if setting != part:
            raw["transfer"][setting] = {"grid": {"teacher": [], "student": [], "loss": []}}
    if part != "classification":
        # Kept but for its teachers and grid: the report stage depends on `classification.methods` by name.
        raw["classification"] = {**raw["classification"], "teachers": {},
                                 "grid": {"teacher": [], "student": [], "method": []}}
    validate_params(raw)  # a part must be a profile of its own
    return raw


def main(argv: list[str]) -> None:
    if not 1 <= len(argv) <= 2:
        raise SystemExit(USAGE)
    name = argv[1] if len(argv) == 2 else "cpu_study"
    try:
        default = read_default(REPO, from_default=composed_profile(REPO / "params.yaml") is not None)
        profile = part_profile(compose(name, default, REPO), argv[0])
    except ConfigError as error:
        raise SystemExit(f"study: {error}") from None
    sys.stdout.write(f"# profile: {name} (study part {argv[0]}, composed by scripts/study_profile.py)\n")
    sys.stdout.write(yaml.safe_dump(profile, sort_keys=False))


if __name__ == "__main__":
    main(sys.argv[1:])
