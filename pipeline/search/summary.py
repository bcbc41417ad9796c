"""What a search leaves behind: every trial (`trials.json`), a page per search (`search.md`), and the chosen
values as a profile overlay (`profiles/<profile>_tuned.yaml`), so the study trains with them through
`python -m pipeline.profiles <profile>_tuned` and `dvc repro` never searches.

The chosen trial of a loss is its best complete one by validation MAP@R (the lower number on a tie).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params
from pipeline.integrity import write_json
from pipeline.search.space import tuned
from pipeline.search.study import OVER_BUDGET, storage, storage_url, study_name
from pipeline.setting import Setting

REPORTS = Path("reports") / "search"
PROFILES = Path("profiles")


def study_summary(params: Params, setting: Setting, loss: str) -> dict[str, Any]:
    import optuna

    study = optuna.load_study(study_name=study_name(params, setting, loss), storage=storage(storage_url(params)))
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_BUDGET)]
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "values": t.params,
             "reported": {str(step): v for step, v in sorted(t.intermediate_values.items())},
             "seconds": t.user_attrs.get("seconds")} for t in trials]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    declared = next((t for t in trials if t.number == 0), None)
    return {"setting": setting.value, "loss": loss, "study": study.study_name, "trials": rows,
            "complete": len(complete), "pruned": sum(r["state"] == "pruned" for r in rows),
            "failed": sum(r["state"] == "fail" for r in rows),
            "seconds": sum(r["seconds"] or 0.0 for r in rows),
            "declared": declared.value if declared is not None else None,
            "chosen_trial": best.number if best else None,
            "best": best.value if best else None, "chosen": best.params if best else None}


def write_outputs(params: Params, summaries: list[dict[str, Any]], benches: dict[str, dict[str, Any]],
                  profile: str | None) -> dict[str, Path]:
    """The trials summary, the page and the overlay of one search (a profile's, or the default's)."""
    folder = REPORTS / (profile or "default")
    overlay = PROFILES / f"{profile or 'default'}_tuned.yaml"
    record = {"profile": profile, "trials_per_loss": params.search.trials, "student": params.search.student,
              "validation": params.validation.model_dump(mode="json"), "settings": benches, "studies": summaries}
    write_json(folder / "trials.json", record)
    (folder / "search.md").write_text(_page(record, overlay))
    _write_overlay(overlay, summaries, profile, folder)
    return {"trials": folder / "trials.json", "page": folder / "search.md", "overlay": overlay}


def _write_overlay(path: Path, summaries: list[dict[str, Any]], profile: str | None, folder: Path) -> None:
    losses: dict[str, Any] = {}
    for found in summaries:
        if found["chosen"] is not None:
            entry = tuned(found["chosen"]).model_dump(mode="json", exclude_none=True, exclude_defaults=True)
            losses.setdefault(found["loss"], {"tuned": {}})["tuned"][found["setting"]] = entry
    head = (f"# Chosen on the validation split by `python -m pipeline.search` (trials: {folder}/trials.json, page:\n"
            f"# {folder}/search.md); written by it, not by hand. Train with them: python -m pipeline.profiles "
            f"{path.stem}\n")
    body = ({"extends": profile} if profile else {}) | {"losses": losses}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + yaml.safe_dump(body, sort_keys=False))
    tmp.replace(path)


def _page(record: dict[str, Any], overlay: Path) -> str:
    lines = [f"# Hyperparameter search: {record['profile'] or 'default'} profile", "",
             f"Every loss of each transfer grid: {record['trials_per_loss']} trials (trial 0: the declared values), "
             f"TPE sampler, median pruner, objective validation MAP@R of the "
             f"{'`' + record['student'] + '`' if record['student'] else 'first'} student of each grid. "
             f"Chosen values: `{overlay}`.", ""]
    for setting, bench in record["settings"].items():
        lines += [f"## {Setting(setting).title}", "", f"Validated on: {bench['split']}.", ""]
        lines += [f"- {note}" for note in bench["notes"]] + ([""] if bench["notes"] else [])
        lines += ["| Loss | Declared (trial 0) | Best | Chosen trial | Complete / pruned | Minutes | Chosen values |",
                  "|---|---|---|---|---|---|---|"]
        for found in (s for s in record["studies"] if s["setting"] == setting):
            chosen = ", ".join(f"{k.removeprefix('params.')} {v:.3g}" for k, v in (found["chosen"] or {}).items())
            lines.append(f"| {found['loss']} | {_pct(found['declared'])} | {_pct(found['best'])} | "
                         f"{found['chosen_trial']} | {found['complete']} / {found['pruned']} | "
                         f"{found['seconds'] / 60:.1f} | {chosen} |")
        lines.append("")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"
