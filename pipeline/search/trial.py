"""One setting's search bench (its validation split, the recipe fitted to it, the teacher trained on its fit
part) and one trial on it: a student trained with one method at the trial's values and scored on validation
(MAP@R for transfer, top-1 for classification).

The bench's teacher is trained here by its own recipe on the fit part only, never on validation images or
classes, so a trial's score says how the student does where neither it nor its teacher has looked (the
Table 1 teacher has seen every train class, the validation classes included). A trial trains and is scored
exactly as the study's replica would be, on the fit part, except that its batch may hold fewer classes
(`fitted_recipe`).
"""
from __future__ import annotations

import fcntl
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import infra
from pipeline.config import Params, flatten, validate_params
from pipeline.metrics import MAP_AT_R, TOP1, mlflow_name
from pipeline.replica import OUTPUTS, Replica
from pipeline.search.space import tuned
from pipeline.search.split import ValidationSplit, validation_split
from pipeline.setting import Setting
from pipeline.stage_spec import MODEL

if TYPE_CHECKING:
    import optuna

SEARCH_OUTPUTS = OUTPUTS / "search"


def objective_metric(setting: Setting) -> str:
    """What a trial maximises: validation MAP@R (the Reality Check's headline), top-1 for classifiers."""
    return TOP1 if setting is Setting.CLASSIFICATION else MAP_AT_R


@dataclass
class Bench:
    declared: Params  # params.yaml as read: what names the studies and what the chosen values apply to
    params: Params  # as the trials train: params.yaml with `fitted_recipe` applied
    setting: Setting
    teacher: str
    split: ValidationSplit
    folder: Path
    teacher_model: Any  # the frozen EmbeddingModel or Classifier every trial learns from
    notes: tuple[str, ...]  # what the bench changed in the recipe, in words (the search report shows them)
    teacher_score: float  # the teacher's own validation score: what its students could inherit at best
    teacher_start: Any = None  # the backbone weights the teacher started from (its pretraining's), if any

    @property
    def teacher_path(self) -> Path:
        return self.folder / "teacher" / MODEL


def fitted_recipe(params: Params, setting: Setting, teacher: str, fit_classes: int) -> tuple[Params, tuple[str, ...]]:
    """`params` with each class-balanced batch drawing at most the `fit_classes` classes there are (K images per
    class kept, so the batch shrinks): a class-disjoint split leaves fewer train classes than a P x K recipe
    may draw. Unchanged where the batches fit."""
    raw, notes = params.model_dump(mode="json"), []
    if setting is Setting.METRIC_LEARNING:
        section = raw["transfer"][setting.value]
        sampler = params.transfer.metric_learning.sampler
        if sampler is not None and sampler.classes_per_batch > fit_classes:
            section["sampler"]["classes_per_batch"] = fit_classes
            section["train"]["batch_size"] = fit_classes * sampler.samples_per_class
            notes.append(f"students draw {fit_classes} classes x {sampler.samples_per_class} images per batch "
                         f"(the study: {sampler.classes_per_batch} x {sampler.samples_per_class})")
        config = params.teachers[teacher]
        per_class = config.proxy_anchor.samples_per_class
        if per_class is not None and config.train.batch_size // per_class > fit_classes:
            raw["teachers"][teacher]["train"]["batch_size"] = fit_classes * per_class
            notes.append(f"the teacher draws {fit_classes} classes x {per_class} images per batch")
    return validate_params(raw, source="the search's recipe"), tuple(notes)


def prepare_bench(params: Params, setting: Setting) -> Bench:
    """The bench of `setting`, its teacher trained (or resumed from its finished checkpoint where the settings
    and code match; concurrent workers of one machine wait for the first to finish it)."""
    teacher = params.grid(setting).teacher[0]
    split = validation_split(params, setting, teacher)
    fitted, notes = fitted_recipe(params, setting, teacher, int(split.fit.labels.unique().numel()))
    folder = SEARCH_OUTPUTS / params.mlflow.experiment / setting.value
    teacher_folder = folder / "teacher"
    teacher_folder.mkdir(parents=True, exist_ok=True)
    with open(teacher_folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _train_teacher(fitted, teacher, split, teacher_folder, setting)  # resumes a finished run of these settings
    if setting is Setting.CLASSIFICATION:
        from pipeline.models.classifier import load_classifier

        model, _ = load_classifier(teacher_folder / MODEL)
        model.eval().requires_grad_(False)
        start = None
    else:
        from pipeline.models.embedding_model import load_initial_backbone
        from pipeline.models.loading import load_teacher

        model, _ = load_teacher(teacher_folder / MODEL, fitted.teachers[teacher])
        start = load_initial_backbone(teacher_folder / MODEL)
    score = _score(model, split.validation, fitted, objective_metric(setting))
    return Bench(params, fitted, setting, teacher, split, folder, model, notes, score, start)


def _train_teacher(params: Params, teacher: str, split: ValidationSplit, out: Path, setting: Setting) -> None:
    from pipeline.train.session import train_and_save

    raw = params.model_dump(mode="json")
    classifier = setting is Setting.CLASSIFICATION
    config = raw["classification"]["teachers"][teacher] if classifier else raw["teachers"][teacher]
    section = {"teacher": config, "seed": params.seed, "data": raw["data"], "validation": raw["validation"],
               **({"augmentation": raw["classification"]["augmentation"]} if classifier else {})}
    stage = f"search.{setting.value}.teacher"
    with infra.start_run(stage, experiment=params.mlflow.experiment, params=flatten(section),
                         tags={"setting": setting.value, "teacher": teacher, "search": "teacher"}) as run:
        if classifier:
            from pipeline.models.classifier import save_classifier
            from pipeline.train.classifier_recipes import classifier_teacher_objective

            objective, spec = classifier_teacher_objective(params, teacher, split.fit)
            train_and_save(objective, split.fit, params.classification.teachers[teacher].train, out, section, run,
                           stage, lambda path: save_classifier(objective.model, spec, path), seed=params.seed)
        else:
            from pipeline.train.pretraining import train_teacher

            train_teacher(params, teacher, split.fit, out, section, run, stage)


def with_values(params: Params, setting: Setting, method: str, values: dict[str, float]) -> Params:
    """`params` whose entry of `method` carries `values` as what the search chose in `setting`."""
    entry = params.method(setting, method)
    chosen = entry.model_copy(update={"tuned": {**entry.tuned, setting.value: tuned(values)}})
    if setting is Setting.CLASSIFICATION:
        section = params.classification
        methods = {**section.methods, method: chosen}
        return params.model_copy(update={"classification": section.model_copy(update={"methods": methods})})
    return params.model_copy(update={"losses": {**params.losses, method: chosen}})


def run_trial(bench: Bench, method: str, values: dict[str, float], trial: optuna.Trial) -> float:
    """Train the search student with `method` at `values` and return its final validation score, reported to
    `trial` every `search.report_every_steps` steps (Optuna's pruner may stop it there: `optuna.TrialPruned`)."""
    import optuna

    from pipeline.train.fingerprint import file_sha256
    from pipeline.train.session import train_and_save

    params, setting = with_values(bench.params, bench.setting, method, values), bench.setting
    student = params.search.student or params.grid(setting).student[0]
    replica = Replica(setting, bench.teacher, student, method, params.seed)
    train = params.method(setting, method).train_in(setting, params.train_section(setting)).model_copy(
        update={"checkpoint_every_steps": params.search.report_every_steps})
    out = bench.folder / method / f"trial-{trial.number}"
    stage = f"search.{setting.value}.{method}"
    tags = {**replica.tags, "search.trial": trial.number, "search.study": trial.study.study_name}
    key = objective_metric(setting)
    scores: dict[int, float] = {}
    with infra.start_run(stage, experiment=params.mlflow.experiment, params=values, tags=tags,
                         run_name=f"{stage} trial {trial.number}") as run:
        objective, save, samples_per_class = _student(params, replica, bench)

        def report(step: int, _epochs: int) -> None:
            if step in scores:  # the epoch's end after a checkpoint at the same step
                return
            scores[step] = _score(objective.model, bench.split.validation, params, key)
            run.log_metrics({f"validation/{mlflow_name(key)}": scores[step]}, step=step)
            trial.report(scores[step], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {key} {scores[step]:.4f} at step {step}")

        settings = {"method": params.method(setting, method).model_dump(mode="json"), "setting": setting.value,
                    "teacher_sha256": file_sha256(bench.teacher_path)}
        pruned = None
        try:
            train_and_save(objective, bench.split.fit, train, out, settings, run, stage, save, seed=replica.seed,
                           samples_per_class=samples_per_class, on_checkpoint=report)
        except optuna.TrialPruned as stop:  # a finished MLflow run, not a failed one: the pruner chose to stop
            pruned = stop
        finally:
            shutil.rmtree(out, ignore_errors=True)  # the trials summary keeps what a trial found
        run.set_tags({"search.state": "pruned" if pruned else "complete"})
    if pruned is not None:
        raise pruned
    return scores[max(scores)]


def _student(params: Params, replica: Replica, bench: Bench):
    """The trial student's objective, how its model is saved, and its batches' images per class (None: random)."""
    if replica.setting is Setting.CLASSIFICATION:
        from pipeline.models.classifier import save_classifier
        from pipeline.train.classifier_recipes import classifier_student_objective

        objective, spec = classifier_student_objective(params, replica, bench.teacher_model, bench.split.fit)
        return objective, lambda path: save_classifier(objective.model, spec, path), None
    from pipeline.models.embedding_model import save_model
    from pipeline.train.recipes import transfer_objective

    objective, spec = transfer_objective(params, replica, bench.teacher_model, bench.split.fit, bench.teacher_start)
    sampler = getattr(params.transfer.of(replica.setting), "sampler", None)  # the self-supervised section has none
    return (objective, lambda path: save_model(objective.model, spec, path),
            sampler.samples_per_class if sampler else None)


def _score(model, validation, params: Params, key: str) -> float:
    if key == TOP1:
        from pipeline.train.classification import score_classifier

        return score_classifier(model, validation, params.data.image_size, params.evaluation.batch_size)[key]
    from pipeline.eval.protocol import retrieval_score

    return retrieval_score(model, validation, params.evaluation, params.data.image_size, key)
