"""What a search leaves behind: every trial (`trials.json`), a page per search (`search.md`), and the chosen
values as a profile overlay (`profiles/<profile>_tuned.yaml`), so the study trains with them through
`python -m pipeline.profiles <profile>_tuned` and `dvc repro` never searches. All three cover every study of
the profile's grids that the storage holds, whichever worker or invocation ran it.

The chosen trial of a method is its best complete one by its validation score (the lower number on a tie).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params
from pipeline.integrity import write_json
from pipeline.metrics import metric
from pipeline.search.space import tuned
from pipeline.search.study import NOTES, OVER_BUDGET, TEACHER_SCORE, VALIDATED_ON, storage, storage_url, study_name
from pipeline.search.trial import objective_metric
from pipeline.setting import Setting

REPORTS = Path("reports") / "search"
PROFILES = Path("profiles")


def study_summary(params: Params, setting: Setting, method: str) -> dict[str, Any] | None:
    """The trials of `method`'s study in `setting`, its declared and best scores and chosen values; None where
    the storage holds no such study."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name(params, setting, method), storage=storage(storage_url(params)))
    except KeyError:  # Optuna's "no such study"
        return None
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_BUDGET)]
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "values": t.params,
             "reported": {str(step): v for step, v in sorted(t.intermediate_values.items())},
             "seconds": t.user_attrs.get("seconds")} for t in trials]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    declared = next((t for t in trials if t.number == 0), None)
    return {"setting": setting.value, "method": method, "study": study.study_name, "score": objective_metric(setting),
            "validated_on": study.user_attrs.get(VALIDATED_ON), "notes": study.user_attrs.get(NOTES, []),
            "teacher": study.user_attrs.get(TEACHER_SCORE),
            "trials": rows, "complete": len(complete), "pruned": sum(r["state"] == "pruned" for r in rows),
            "failed": sum(r["state"] == "fail" for r in rows), "seconds": sum(r["seconds"] or 0.0 for r in rows),
            "declared": declared.value if declared is not None else None,
            "chosen_trial": best.number if best else None,
            "best": best.value if best else None, "chosen": best.params if best else None}


def summaries(params: Params, settings: tuple[Setting, ...]) -> list[dict[str, Any]]:
    """Every study of `settings`' grids in the storage, in grid order."""
    found = [study_summary(params, setting, method) for setting in settings
             for method in getattr(params.grid(setting), setting.method_key)]
    return [s for s in found if s is not None]


def write_outputs(params: Params, studies: list[dict[str, Any]], profile: str | None) -> dict[str, Path]:
    """The trials summary, the page and the overlay of one search (a profile's, or the default's)."""
    folder = REPORTS / (profile or "default")
    overlay = PROFILES / f"{profile or 'default'}_tuned.yaml"
    record = {"profile": profile, "trials_per_method": params.search.trials, "student": params.search.student,
              "validation": params.validation.model_dump(mode="json"), "studies": studies}
    write_json(folder / "trials.json", record)
    (folder / "search.md").write_text(_page(record, overlay))
    _write_overlay(overlay, studies, profile, folder)
    return {"trials": folder / "trials.json", "page": folder / "search.md", "overlay": overlay}


def _write_overlay(path: Path, studies: list[dict[str, Any]], profile: str | None, folder: Path) -> None:
    body: dict[str, Any] = {"extends": profile} if profile else {}
    for found in studies:
        if found["chosen"] is None:
            continue
        entry = tuned(found["chosen"]).model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        setting = Setting(found["setting"])
        section = (body.setdefault("classification", {}).setdefault("methods", {})
                   if setting is Setting.CLASSIFICATION else body.setdefault("losses", {}))
        section.setdefault(found["method"], {"tuned": {}})["tuned"][setting.value] = entry
    head = (f"# Chosen on the validation split by `python -m pipeline.search` (trials: {folder}/trials.json, page:\n"
            f"# {folder}/search.md); written by it, not by hand. Train with them: python -m pipeline.profiles "
            f"{path.stem}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + yaml.safe_dump(body, sort_keys=False))
    tmp.replace(path)


def _page(record: dict[str, Any], overlay: Path) -> str:
    student = f"the `{record['student']}` student" if record["student"] else "the first student of each grid"
    lines = [f"# Hyperparameter search: {record['profile'] or 'default'} profile", "",
             f"Every method of each grid: {record['trials_per_method']} trials (trial 0: the declared values), TPE "
             f"sampler, median pruner; objective the validation score of {student} (MAP@R; top-1 for "
             f"classifiers). Chosen values: `{overlay}`.", ""]
    for setting in Setting:
        studies = [s for s in record["studies"] if s["setting"] == setting.value]
        if not studies:
            continue
        lines += [f"## {setting.title}", "", f"Validated on: {studies[0]['validated_on']}.", ""]
        lines += [f"- {note}" for note in studies[0]["notes"]] + ([""] if studies[0]["notes"] else [])
        score = metric(studies[0]["score"]).title
        if studies[0]["teacher"] is not None:
            lines += [f"The teacher, trained on the fit part: validation {score} {_pct(studies[0]['teacher'])}.", ""]
        lines += [f"| Method | Declared (trial 0) {score} | Best {score} | Chosen trial | Complete / pruned | Minutes "
                  "| Chosen values |", "|---|---|---|---|---|---|---|"]
        for found in studies:
            chosen = ", ".join(f"{k.removeprefix('params.')} {v:.3g}" for k, v in (found["chosen"] or {}).items())
            lines.append(f"| {found['method']} | {_pct(found['declared'])} | {_pct(found['best'])} | "
                         f"{found['chosen_trial']} | {found['complete']} / {found['pruned']} | "
                         f"{found['seconds'] / 60:.1f} | {chosen} |")
        lines.append("")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"
