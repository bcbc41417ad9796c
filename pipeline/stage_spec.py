"""Every DVC stage declared once: its command, the params keys it reads, its inputs and its outputs.

`python -m pipeline.stage_spec` writes dvc.yaml from this module (tests/test_stage_spec.py fails on any
difference from the committed file), and the stages, the report and the comparison take their paths and
params keys from here, so nothing re-spells them. Python rather than a YAML spec: a path is a function the
stages call with real names and this module calls with DVC's `${item.*}` references, which makes the same
function the dvc.yaml template; a YAML spec would need a templating layer of its own to do that.

The DAG: `code` writes each stage command's code manifest (pipeline/infra/code_manifest.py), `prepare`
validates params.yaml and the dataset, teachers train (or load a released checkpoint), every student replica
of a setting's grid trains from its frozen teacher and is scored in the same process, raw pixels are scored,
every trained embedding model (teachers and students) is exported to ONNX and measured deployed, classifier
distillation runs, and `report` gathers everything.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.infra import manifest_path
from pipeline.replica import OUTPUTS, Replica
from pipeline.setting import TRANSFER_SETTINGS, Setting

DVC_YAML = Path("dvc.yaml")
REPORTS = Path("reports")
MANIFESTS = manifest_path("stages.code").parent  # where the code manifests live (pipeline/infra/code_manifest.py)
DATA = OUTPUTS / "data"
DATA_SUMMARY = DATA / "summary.json"
RELEASED_RECORDS = DATA / "released"  # one record per released teacher file (released_teacher@NAME)
RUNNING_MARKERS = OUTPUTS / ".running"  # one file per stage while it runs under DVC (pipeline/wiring/common.py)
MODEL = "model.pt"
METRICS = "metrics.json"
LOSS_CURVE = "loss.json"  # per-step training loss (DVC plot data), beside each trained model.pt
RECALL_CURVE = "recall.json"  # Recall@K per K (DVC plot data), beside each evaluation's metrics.json
FIGURES = "figures"


ONNX = "model.onnx"  # the deployable graph of a trained model (pipeline/deploy/graph.py)
ONNX_INT8 = "model.int8.onnx"  # its int8 variant (pipeline/deploy/quantize.py)
DEPLOY_METRICS = "deploy.json"  # what it costs deployed (pipeline/wiring/export.py)


def deploy_dir(model_id: str) -> Path:
    """Where the export of model `model_id` (a teacher's or replica's id) writes."""
    return OUTPUTS / "deploy" / model_id


def teacher_dir(teacher: str) -> Path:
    return OUTPUTS / "teachers" / teacher


def classifier_teacher_dir(teacher: str) -> Path:
    return OUTPUTS / "classification" / "teachers" / teacher


def eval_dir(model_id: str) -> Path:
    """Where the evaluation of model `model_id` (a teacher's, pixels' or replica's id) writes."""
    return OUTPUTS / "eval" / model_id


def teacher_id(teacher: str) -> str:
    return f"teacher-{teacher}"


def transferred_id(teacher: str) -> str:
    """The teacher scored on what it hands its students (`teacher_embedding`: the L2-normalised projection
    or embedding), next to `teacher_id`, the model's own output."""
    return f"teacher-{teacher}-transferred"


def classifier_teacher_id(teacher: str) -> str:
    return f"classification-teacher-{teacher}"


def pixels_id(teacher: str) -> str:
    """Raw pixels scored on the classes `teacher`'s students are evaluated on."""
    return f"pixels-{teacher}"


@dataclass(frozen=True)
class Family:
    """A kind of stage: one DVC stage, or a `foreach` / `matrix` of them.

    `trained_on` holds the params keys that shape what the stage trains: its checkpoints' fingerprint and
    its MLflow params; `scored_with` the keys it reads only to score the result (MLflow params too). DVC
    depends on both. Keys are templates over the stage's names: {teacher}, {student}, {method}, {setting}.
    """

    name: str
    module: str
    verb: str = ""  # the command's first argument, where one module runs two families (stages.classify)
    trained_on: tuple[str, ...] = ()
    scored_with: tuple[str, ...] = ()

    def keys(self, **names: str) -> list[str]:
        return [key.format(**names) for key in (*self.trained_on, *self.scored_with)]

    def trained_keys(self, **names: str) -> list[str]:
        return [key.format(**names) for key in self.trained_on]


CODE = Family("code", "stages.code")
PREPARE = Family("prepare", "stages.prepare")
RELEASED_TEACHER = Family("released_teacher", "stages.teacher", trained_on=("teachers.{teacher}.model",))
TEACHER = Family("teacher", "stages.teacher", trained_on=("seed", "data", "teachers.{teacher}"),
                 scored_with=("evaluation",))
TRANSFER = {setting: Family(setting.stage, "stages.transfer", trained_on=(
    "seed", "data", "teachers.{teacher}", "students.{student}", "losses.{method}",
    *(f"transfer.{{setting}}.{key}" for key in
      ("augmentation", "views", "train", *(("sampler",) if setting.labels else ())))),
    scored_with=("evaluation",)) for setting in TRANSFER_SETTINGS}
# Export: the model's file is the dep; what it is scored on (its teacher's evaluation classes, the test split,
# the retrieval distance) and the deploy section are the params.
EXPORTED_WITH = ("data", "teachers.{teacher}", "evaluation.retrieval.distance", "deploy")
TEACHER_EXPORT = Family("teacher_export", "stages.export", "teacher", scored_with=EXPORTED_WITH)
EXPORT = {setting: Family(f"{setting.stage}_export", "stages.export", "student", scored_with=EXPORTED_WITH)
          for setting in TRANSFER_SETTINGS}
PIXELS = Family("evaluate_pixels", "stages.evaluate", trained_on=("seed", "data", "teachers.{teacher}"),
                scored_with=("evaluation",))
CLASSIFIER_TEACHER = Family("classifier_teacher", "stages.classify", "teacher", trained_on=(
    "seed", "data", "classification.augmentation", "classification.teachers.{teacher}"))
CLASSIFIER_STUDENT = Family(Setting.CLASSIFICATION.stage, "stages.classify", "student", trained_on=(
    *CLASSIFIER_TEACHER.trained_on, "classification.students.{student}", "classification.methods.{method}",
    "classification.train"))
STUDENTS = {**TRANSFER, Setting.CLASSIFICATION: CLASSIFIER_STUDENT}  # the family of each setting's replicas
REPORT = Family("report", "stages.report", scored_with=(
    "seed",    # the reference rows' (raw pixels, teachers) seed
    "seeds",   # which replicas of each student the report aggregates
    "data.name", "evaluation", "teachers", "students", "losses", *(s.grid_key for s in TRANSFER_SETTINGS),
    Setting.CLASSIFICATION.grid_key, "classification.methods", "classification.teachers"))
REPORT_FILES = {"results": REPORTS / "results.md", "summary": REPORTS / "summary.json",
                "headline": REPORTS / "headline.json", "figures": REPORTS / "figures", "plots": REPORTS / "plots"}


def select(raw: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The part of params (`Params.model_dump(mode="json")`) under `keys`, nested as in params.yaml."""
    picked: dict[str, Any] = {}
    for key in keys:
        *parents, last = key.split(".")
        source, target = raw, picked
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        target[last] = source[last]
    return picked


# --- dvc.yaml ------------------------------------------------------------------------------------------------

def _cached(path: Path | str, plot: tuple[str, str] | None = None) -> dict[str, Any]:
    """A metrics or plot file kept in git beside dvc.lock (`cache: false`), with its plot axes."""
    entry: dict[str, Any] = {"cache": False}
    if plot:
        entry.update(x=plot[0], y=plot[1])
    return {str(path): entry}


def _evaluation(model_id: str) -> tuple[list, list, list]:
    """The outs, metrics and plots of one model's evaluation (pipeline/eval/session.py)."""
    folder = eval_dir(model_id)
    return [str(folder / FIGURES)], [_cached(folder / METRICS)], [_cached(folder / RECALL_CURVE, ("k", "recall"))]


def _trained(folder: Path) -> tuple[list, list, list]:
    """The outs, metrics and plots of one trained model's folder (pipeline/train/session.py)."""
    return [str(folder / MODEL)], [_cached(folder / METRICS)], [_cached(folder / LOSS_CURVE, ("step", "loss"))]


def _stage(family: Family, args: str, deps: list[str], params: list | None, parts: list[tuple[list, list, list]],
           **loop: Any) -> dict[str, Any]:
    words = " ".join(word for word in (family.verb, args) if word)
    body: dict[str, Any] = {"cmd": f"python -m {family.module}{' ' + words if words else ''}",
                            "deps": [*deps, str(manifest_path(family.module))]}
    if params is not None:
        body["params"] = params
    for index, key in enumerate(("outs", "metrics", "plots")):
        entries = [entry for part in parts for entry in part[index]]
        if entries:
            body[key] = entries
    if "foreach" in loop:
        return {"foreach": loop["foreach"], "do": body}
    return {**loop, **body}


def _exported(model_id: str) -> tuple[list, list, list]:
    """The outs and metrics of one model's export (pipeline/wiring/export.py)."""
    folder = deploy_dir(model_id)
    return [str(folder / ONNX), str(folder / ONNX_INT8)], [_cached(folder / DEPLOY_METRICS)], []


def _export_stage(setting: Setting) -> dict[str, Any]:
    family, item = EXPORT[setting], Replica.placeholder(setting)
    return _stage(family, item.command_args(), [str(item.folder / MODEL)], family.keys(teacher=item.teacher),
                  [_exported(item.name)], matrix=_matrix(setting))


def _matrix(setting: Setting) -> dict[str, str]:
    """The DVC matrix of a setting's replicas: its grid's columns and `seeds`."""
    matrix = {field: f"${{{setting.grid_key}.{field}}}" for field in ("teacher", "student", setting.method_key)}
    matrix["seed"] = "${seeds}"
    return matrix


def _replica_stage(setting: Setting) -> dict[str, Any]:
    family = STUDENTS[setting]
    item = Replica.placeholder(setting)
    matrix = _matrix(setting)
    names = dict(teacher=item.teacher, student=item.student, method=item.method, setting=setting.value)
    if setting is Setting.CLASSIFICATION:
        teacher_model = classifier_teacher_dir(item.teacher) / MODEL
        parts = [_trained(item.folder)]
    else:
        teacher_model = teacher_dir(item.teacher) / MODEL
        parts = [_trained(item.folder), _evaluation(item.name)]
        # A student's evaluation folder sits beside its training folder; dvc.yaml lists training first.
        parts = [(parts[0][0] + parts[1][0], parts[0][1] + parts[1][1], parts[1][2] + parts[0][2])]
    return _stage(family, item.command_args(), [str(teacher_model)], family.keys(**names), parts, matrix=matrix)


def dvc_stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml's `stages`, in the order the pipeline runs them."""
    teacher = "${key}"
    classifier = [_trained(classifier_teacher_dir(teacher))]
    stages = {
        CODE.name: {"cmd": f"python -m {CODE.module}", "deps": ["pipeline", "stages"],
                    # kept in git with dvc.lock: a clone finds every stage's code dep in place
                    "outs": [{str(MANIFESTS): {"cache": False}}]},
        # prepare validates every section of params.yaml, so its params dep is the whole file
        PREPARE.name: _stage(PREPARE, "", [], [{"params.yaml": None}], [([], [_cached(DATA_SUMMARY)], [])]),
        RELEASED_TEACHER.name: _stage(RELEASED_TEACHER, f"{teacher} --fingerprint", ["${item}"],
                                      RELEASED_TEACHER.keys(teacher=teacher),
                                      [([_cached(RELEASED_RECORDS / f"{teacher}.json")], [], [])],
                                      foreach="${released_teachers}"),
        TEACHER.name: _stage(TEACHER, teacher, [str(DATA)], TEACHER.keys(teacher=teacher), [
            _trained(teacher_dir(teacher)), _evaluation(teacher_id(teacher)), _evaluation(transferred_id(teacher))],
            foreach="${teachers}"),
        **{TRANSFER[s].name: _replica_stage(s) for s in TRANSFER_SETTINGS},
        TEACHER_EXPORT.name: _stage(TEACHER_EXPORT, f"--teacher {teacher}", [str(teacher_dir(teacher) / MODEL)],
                                    TEACHER_EXPORT.keys(teacher=teacher), [_exported(teacher_id(teacher))],
                                    foreach="${teachers}"),
        **{EXPORT[s].name: _export_stage(s) for s in TRANSFER_SETTINGS},
        PIXELS.name: _stage(PIXELS, f"--teacher {teacher}", [], PIXELS.keys(teacher=teacher),
                            [_evaluation(pixels_id(teacher))], foreach="${teachers}"),
        CLASSIFIER_TEACHER.name: _stage(CLASSIFIER_TEACHER, f"--teacher {teacher}", [str(DATA_SUMMARY)],
                                        CLASSIFIER_TEACHER.keys(teacher=teacher), classifier,
                                        foreach="${classification.teachers}"),
        CLASSIFIER_STUDENT.name: _replica_stage(Setting.CLASSIFICATION),
        REPORT.name: _stage(REPORT, "", [str(OUTPUTS)], list(REPORT.scored_with), [(
            [_cached(REPORT_FILES[key]) for key in ("results", "figures", "plots")],
            [_cached(REPORT_FILES[key]) for key in ("summary", "headline")], [])]),
    }
    return stages


PLOTS = [  # `dvc plots show`: one line per model (the `by_model` templates in .dvc/plots colour by `model`)
    {"recall_at_k": {"template": "by_model", "x": "k", "y": {str(REPORT_FILES["plots"] / "recall_at_k.json"): "recall"},
                     "title": "Recall@K of raw pixels, teachers and students (test split; metric students on "
                              "unseen classes)"}},
    {"train_loss": {"template": "by_model_log", "x": "step", "y": {str(REPORT_FILES["plots"] / "train_loss.json"): "loss"},
                    "title": "Training loss per step of the transfer students (each method its own loss, log scale)"}},
    {"classifier_loss": {"template": "by_model_log", "x": "step",
                         "y": {str(REPORT_FILES["plots"] / "classifier_loss.json"): "loss"},
                         "title": "Training loss per step of the classifier students (cross-entropy plus the "
                                  "method's term)"}},
]

HEADER = f"""\
# GENERATED by `python -m pipeline.stage_spec` from pipeline/stage_spec.py: edit that module, not this file
# (tests/test_stage_spec.py fails on any difference). docs/pipeline.md explains the DAG.
#
# Notes that belong to DVC's side of it:
# - `matrix` over each setting's grid makes one stage per (teacher, student, method) and seed of `seeds`.
# - Each stage depends on its command's code manifest, manifests/stages.X.json (the `code` stage writes
#   them), never on code files: DVC rewrites dvc.lock after each stage, and 40-odd code deps per stage cost
#   5.3 s each. Run dvc with the project's environment active (stage commands call `python`).
# - Checkpoint folders (outputs/**/checkpoints, git-ignored) are not outs: DVC leaves them for a re-run to
#   resume from, and a clone that pulls models from a DVC remote still finds its stages up to date.
# - released_teacher@NAME records the hash of a released checkpoint under {RELEASED_RECORDS}/; every
#   teacher stage depends on {DATA}, so a replaced file re-runs them (a foreach's deps can only name a path
#   every teacher has).
# - report depends on all of {OUTPUTS}/: DVC has no optional deps, and a params.yaml without one setting
#   never creates that setting's folder.
"""


def render() -> str:
    """dvc.yaml's text."""
    def dump(value: Any) -> str:
        return yaml.safe_dump(value, sort_keys=False, width=120, default_flow_style=False)

    stages = "\n".join(dump({name: body}) for name, body in dvc_stages().items())
    return (HEADER + dump({"vars": [{"released_teachers": {}}]})  # the default where params.yaml has none
            + "stages:\n" + "".join(f"  {line}\n" if line else "\n" for line in stages.splitlines())
            + "\n" + dump({"plots": PLOTS}))


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--check"]):
        sys.exit("usage: python -m pipeline.stage_spec [--check]")
    text = render()
    if sys.argv[1:] == ["--check"]:
        same = DVC_YAML.is_file() and DVC_YAML.read_text() == text
        print(f"{DVC_YAML} is {'up to date' if same else 'out of date: run python -m pipeline.stage_spec'}")
        sys.exit(0 if same else 1)
    DVC_YAML.write_text(text)
