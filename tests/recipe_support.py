"""Every recipe of tests/assets/every_recipe_params.yaml built as the training stages build it, for a few
steps on any device: the GPU smoke check (tests/test_gpu_smoke.py) and the CPU autocast check
(tests/test_amp.py) train the same recipes through the same code path (pipeline.train.recipes /
classifier_recipes, then pipeline.train.loop.fit)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from torch import nn

PARAMS = Path(__file__).resolve().parent / "assets" / "every_recipe_params.yaml"
STEPS = 3


def every_recipe_params(amp: str = "bf16", amp_on_cpu: bool = False):
    """The params with every train section at STEPS steps, `amp`, channels_last and a loss logged per step."""
    from pipeline.config import validate_params

    raw = yaml.safe_load(PARAMS.read_text())
    sections = [*(t["train"] for t in raw["teachers"].values()), raw["transfer"]["self_supervised"]["train"],
                raw["transfer"]["metric_learning"]["train"], raw["classification"]["train"],
                *(t["train"] for t in raw["classification"]["teachers"].values())]
    for section in sections:
        section.update(max_steps=STEPS, amp=amp, amp_on_cpu=amp_on_cpu, channels_last=True, log_every_steps=1)
    return validate_params(raw)


def replica(params, teacher: str, student: str, method: str, setting=None):
    """The replica under params.yaml's `seed` of (teacher, student, method); a transfer student's setting is
    its teacher's, a classifier student's is given."""
    from pipeline.replica import Replica

    return Replica(setting or params.teachers[teacher].setting, teacher, student, method, params.seed)


def recipe_ids() -> list[str]:
    """`teacher-NAME`, `student-TEACHER-LOSS` (each grid loss), `classifier-teacher-NAME`,
    `classifier-student-METHOD`: every recipe of the params file."""
    raw = yaml.safe_load(PARAMS.read_text())
    ids = [f"teacher-{name}" for name in raw["teachers"]]
    for setting in ("self_supervised", "metric_learning"):
        grid = raw["transfer"][setting]["grid"]
        ids += [f"student-{teacher}-{loss}" for teacher in grid["teacher"] for loss in grid["loss"]]
    classification = raw["classification"]
    ids += [f"classifier-teacher-{name}" for name in classification["teachers"]]
    ids += [f"classifier-student-{method}" for method in classification["grid"]["method"]]
    return ids


def trained_teachers(params, device: str):
    """(params, the digits train split, teachers, classifier teachers), the teachers trained STEPS steps."""
    from pipeline.data.loading import load_images
    from pipeline.train import classifier_recipes, recipes
    from pipeline.train.loop import fit

    images = load_images(params.data, "train")
    teachers = {}
    for name in params.teachers:
        objective, _ = recipes.teacher_objective(params, name, images)
        fit(objective, images, params.teachers[name].train, device=device,
            samples_per_class=recipes.teacher_sampler(params, name))
        teachers[name] = copy.deepcopy(objective.model).eval()
    classifiers = {}
    for name in params.classification.teachers:
        objective, _ = classifier_recipes.classifier_teacher_objective(params, name, images)
        fit(objective, images, params.classification.teachers[name].train, device=device)
        classifiers[name] = copy.deepcopy(objective.model).eval()
    return params, images, teachers, classifiers


def build(recipe: str, params, images, teachers, classifiers):
    """(objective, train section, samples_per_class) of one recipe id, as the training stages build them."""
    from pipeline.train import classifier_recipes, recipes

    kind, _, rest = recipe.partition("-")
    if kind == "teacher":
        objective, _ = recipes.teacher_objective(params, rest, images)
        return objective, params.teachers[rest].train, recipes.teacher_sampler(params, rest)
    if kind == "student":
        teacher, _, loss = rest.partition("-")
        section = params.transfer.of(params.teachers[teacher].setting)
        objective, _ = recipes.transfer_objective(params, replica(params, teacher, "small", loss), teachers[teacher], images)
        sampler = getattr(section, "sampler", None)
        return objective, section.train, sampler.samples_per_class if sampler else None
    role, _, name = rest.partition("-")
    if role == "teacher":
        objective, _ = classifier_recipes.classifier_teacher_objective(params, name, images)
        return objective, params.classification.teachers[name].train, None
    teacher = copy.deepcopy(next(iter(classifiers.values())))
    from pipeline.setting import Setting

    chosen = replica(params, "wide", "small", name, Setting.CLASSIFICATION)
    objective, _ = classifier_recipes.classifier_student_objective(params, chosen, teacher, images)
    return objective, params.classification.train, None


class Probe:
    """Forward hooks that record where the augmentation ran and the dtype convolutions computed in."""

    def __init__(self, objective: nn.Module) -> None:
        self.augment_devices: set[str] = set()
        self.conv_dtypes: set[torch.dtype] = set()
        self.handles = [objective.augment.register_forward_hook(self._augment)]
        conv = next(m for m in objective.model.modules() if isinstance(m, nn.Conv2d))
        self.handles.append(conv.register_forward_hook(self._conv))
        self.conv = conv

    def _augment(self, module, inputs, output) -> None:
        self.augment_devices |= {inputs[0].device.type, output.device.type}

    def _conv(self, module, inputs, output) -> None:
        self.conv_dtypes.add(output.dtype)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def probed_fit(recipe: str, params, trained, device: str):
    """Train one recipe on `device` with Probe's hooks on; (objective, fit result, probe)."""
    from pipeline.train.loop import fit

    _, images, teachers, classifiers = trained
    objective, train, samples_per_class = build(recipe, params, images, teachers, classifiers)
    probe = Probe(objective)
    try:
        result = fit(objective, images, train, device=device, samples_per_class=samples_per_class)
    finally:
        probe.remove()
    return objective, result, probe
