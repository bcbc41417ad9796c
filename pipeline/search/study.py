"""One Optuna study per (setting, method), all alike: the same trial budget, TPE sampler, median pruner and
objective (validation MAP@R; top-1 for classifiers), and the method's declared values as trial 0, so the
report says whether the search found better values than the paper's on validation at all.

Workers: any number of processes, on one machine or several, run `python -m pipeline.search` against one
storage (`search.storage`: the team PostgreSQL; a SQLite file by default). The budget is shared: a worker
takes a trial only while fewer than `search.trials` are finished or running, and a trial numbered past the
budget by a race is told FAIL at once (user attribute `over_budget`) and never run. A trial left RUNNING by a
worker that died on this machine is told FAIL when the next worker starts, so it neither blocks the budget
nor counts; its number is not reused.
"""
from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from pipeline import infra
from pipeline.config import TEACHER_OBJECTIVE, Params
from pipeline.search.space import (LR, PARAMS_PREFIX, PROXY_ANCHOR_WEIGHT, TRANSFER_WEIGHT, Dimension, dimensions,
                                   suggest)
from pipeline.search.trial import SEARCH_OUTPUTS, Bench, run_trial
from pipeline.setting import Setting

if TYPE_CHECKING:
    import optuna

OWNER = "owner"  # the trial's worker (`infra.process_owner`): host, pid, start time
OVER_BUDGET = "over_budget"
VALIDATED_ON, NOTES = "validated_on", "notes"  # the study's split and recipe changes, in words (its page)
TEACHER_SCORE = "teacher_score"  # the bench teacher's own validation score (its page)


def storage_url(params: Params) -> str:
    if params.search.storage:
        return params.search.storage
    SEARCH_OUTPUTS.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(SEARCH_OUTPUTS / 'optuna.db').resolve()}"


@functools.cache
def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`. Two workers starting on a fresh database both create Optuna's schema, and
    PostgreSQL refuses the second `CREATE TYPE`: the loser retries once the winner's schema exists."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):  # the schema's race, nothing else
            time.sleep(1.0 + attempt)
    return optuna.storages.RDBStorage(url)  # a fifth failure is not a race: its error is the user's


def study_name(params: Params, setting: Setting, method: str) -> str:
    """`EXPERIMENT/SETTING/METHOD/DIGEST`: a profile (its own MLflow experiment) shares a storage with others,
    and the digest of everything a trial's score depends on in params.yaml keeps trials of other settings
    (another validation fold, teacher or budget) out of this study. Code is not in it: after a code change,
    delete the studies (or outputs/search/) to search again."""
    from pipeline.train.fingerprint import fingerprint

    raw = params.model_dump(mode="json")
    grid = params.grid(setting)
    teacher, student = grid.teacher[0], params.search.student or grid.student[0]
    if setting is Setting.CLASSIFICATION:
        section = raw["classification"]
        models = {"teacher": section["teachers"][teacher], "student": section["students"][student],
                  "recipe": {"augmentation": section["augmentation"], "train": section["train"]}}
    else:
        section = raw["transfer"][setting.value]
        models = {"teacher": raw["teachers"][teacher], "student": raw["students"][student],
                  "recipe": {k: v for k, v in section.items() if k != "grid"}}
    entry = params.method(setting, method).model_dump(mode="json")
    scored = {**models, "seed": raw["seed"], "data": raw["data"], "method": {**entry, "tuned": None},
              "validation": raw["validation"], "search": {k: v for k, v in raw["search"].items() if k != "storage"},
              "distance": raw["evaluation"]["retrieval"]["distance"]}
    return f"{params.mlflow.experiment}/{setting.value}/{method}/{fingerprint(scored)[:10]}"


def open_study(params: Params, setting: Setting, method: str, worker: int = 0) -> optuna.Study:
    import optuna

    search = params.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Each worker its own sampler seed: two TPE samplers seeded alike propose the same points.
    sampler = optuna.samplers.TPESampler(seed=params.seed * 1000 + worker, n_startup_trials=search.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=0)
    return optuna.create_study(study_name=study_name(params, setting, method), storage=storage(storage_url(params)),
                               direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True)


def method_dimensions(params: Params, setting: Setting, method: str) -> list[Dimension]:
    """What `method`'s study draws: its entry's dimensions around its setting's declared learning rate."""
    return dimensions(params.method(setting, method).in_setting(setting),
                      params.train_section(setting).optimizer.lr, params.search)


def declared_values(params: Params, setting: Setting, method: str) -> dict[str, float]:
    """The values the study would train `method` with unsearched, named as the search names them: trial 0."""
    from pipeline.contracts import effective_proxy_anchor_weight
    from pipeline.losses import loss_class

    entry = params.method(setting, method).in_setting(setting)
    loss = getattr(entry, "name", None) or getattr(entry, "loss", None)
    declared = None if loss in (None, TEACHER_OBJECTIVE) else loss_class(loss).Params(**entry.params)
    values = {}
    for dimension in method_dimensions(params, setting, method):
        if dimension.name == LR:
            values[LR] = params.method(setting, method).train_in(setting, params.train_section(setting)).optimizer.lr
        elif dimension.name == PROXY_ANCHOR_WEIGHT:
            values[PROXY_ANCHOR_WEIGHT] = effective_proxy_anchor_weight(entry)
        elif dimension.name == TRANSFER_WEIGHT:
            values[TRANSFER_WEIGHT] = entry.transfer_weight
        else:
            values[dimension.name] = float(getattr(declared, dimension.name.removeprefix(PARAMS_PREFIX)))
    return values


def fail_abandoned(study: optuna.Study) -> int:
    """Tell FAIL every trial still RUNNING whose worker died on this machine; how many there were."""
    import optuna

    abandoned = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                 if infra.owner_is_gone(str(t.user_attrs.get(OWNER, "")))]
    for found in abandoned:
        study._storage.set_trial_state_values(found._trial_id, optuna.trial.TrialState.FAIL)
    return len(abandoned)


def claim(study: optuna.Study, budget: int) -> optuna.Trial | None:
    """The next trial within the budget, or None when the budget is spent (finished or running)."""
    import optuna

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    if len(study.get_trials(deepcopy=False, states=counted)) >= budget:
        return None
    trial = study.ask()
    trial.set_user_attr(OWNER, infra.process_owner())
    earlier = [t for t in study.get_trials(deepcopy=False, states=counted) if t.number <= trial.number]
    if len(earlier) > budget:  # another worker took the last place first
        trial.set_user_attr(OVER_BUDGET, True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    return trial


def search_method(bench: Bench, method: str, worker: int = 0) -> optuna.Study:
    """Run `method`'s study on `bench` until its budget is spent (by this worker and any others)."""
    import optuna

    params, setting = bench.declared, bench.setting  # the study is the declared recipe's, as its summary finds it
    study = open_study(params, setting, method, worker)
    study.set_user_attr(VALIDATED_ON, bench.split.description)
    study.set_user_attr(NOTES, list(bench.notes))
    study.set_user_attr(TEACHER_SCORE, bench.teacher_score)
    fail_abandoned(study)
    study.enqueue_trial(declared_values(params, setting, method), skip_if_exists=True)
    found = method_dimensions(params, setting, method)
    while (trial := claim(study, params.search.trials)) is not None:
        values = suggest(trial, found)
        started = time.perf_counter()
        try:
            value = run_trial(bench, method, values, trial)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", time.perf_counter() - started)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, value)
    return study
