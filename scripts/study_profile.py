"""Print the params.yaml of one part of the multi-seed study: `profiles/cpu_study.yaml` with only one
setting's teachers and grid (`self_supervised`, `metric_learning` or `classification`), or all of it.

Why parts: the whole study is ~200 stages, estimated at about 75 minutes on a fast 2-core machine and
three hours on one 2.8x slower (from per-stage times measured on each), and a stopped study resumes only
where its `.study/` clone survives. Each part is a
whole setting, so its report's intervals and verdicts are complete; the parts share every seed and
hyper-parameter, so they add up to the whole study.

Usage: python scripts/study_profile.py PART [PROFILE]
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from pipeline.config import ConfigError, validate_params

PARTS = ("all", "self_supervised", "metric_learning", "classification")
USAGE = f"usage: python scripts/study_profile.py PART [PROFILE]  (PART: {', '.join(PARTS)})"


def part_profile(raw: dict, part: str) -> dict:
    """`raw` with the grids (and the teachers) of every setting but `part` emptied."""
    if part not in PARTS:
        raise ConfigError(f"study part {part!r} is not one of {', '.join(PARTS)}")
    params = validate_params(raw)
    if part == "all":
        return raw
    raw = {**raw, "transfer": dict(raw["transfer"])}
    raw["teachers"] = {name: section for name, section in raw["teachers"].items()
                       if params.teachers[name].setting == part}
    for setting in ("self_supervised", "metric_learning"):
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
    path = Path(argv[1] if len(argv) == 2 else "profiles/cpu_study.yaml")
    try:
        profile = part_profile(yaml.safe_load(path.read_text()), argv[0])
    except ConfigError as error:
        raise SystemExit(f"study: {path}: {error}") from None
    sys.stdout.write(f"# {path}, study part {argv[0]} (scripts/study_profile.py)\n")
    sys.stdout.write(yaml.safe_dump(profile, sort_keys=False))


if __name__ == "__main__":
    main(sys.argv[1:])
