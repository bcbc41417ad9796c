"""A Proxy-Anchor teacher's self-supervised start (`teachers.NAME.pretrain`, pipeline/train/pretraining.py):
the teacher and the students that share its backbone start from the pretrained weights, the others at random,
and the teacher file carries the starting weights to its students."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "assets" / "tiny_params.yaml"
PRETRAIN = {"method": "simclr", "augmentation": "simclr", "projection_dim": 16,
            "train": {"epochs": 1, "max_steps": 3, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.01}}}


def pretrained_params(**teacher) -> dict:
    """tiny_params with a pretrained Proxy-Anchor teacher, a student of its backbone (`same`) beside `small`."""
    raw = yaml.safe_load(TINY.read_text())
    raw["teachers"]["proxy_anchor"]["pretrain"] = copy.deepcopy(PRETRAIN)
    raw["teachers"]["proxy_anchor"].update(teacher)
    raw["students"]["same"] = {"model": {"backbone": "small_resnet", "widths": [8, 16], "embedding_dim": 4},
                               "role": "dim_reduction"}
    raw["losses"]["own_objective"] = {"name": "teacher_objective"}
    return raw


def validated(raw: dict):
    from pipeline.config import validate_params

    return validate_params(copy.deepcopy(raw))


def equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Log:
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.keys |= set(metrics)


@pytest.mark.parametrize(("change", "message"), [
    ({"teacher": "simclr"}, r"teachers\.simclr\.pretrain: a simclr teacher is itself self-supervised"),
    ({"weights_path": "w.pt"}, r"teachers\.proxy_anchor\.pretrain: the backbone already starts from model\.weights_path"),
    ({"processes": 2}, r"teachers\.proxy_anchor\.pretrain: a pretrained start runs in one process only"),
    ({"released": "source.pth"}, r"released_teachers\.proxy_anchor: teachers\.proxy_anchor declares pretrain, but "
                                 r"a released teacher is loaded, not trained"),
])
def test_a_pretrain_section_the_pipeline_cannot_honour_is_refused_in_one_line_naming_it(change, message):
    from pipeline.config import ConfigError

    raw = pretrained_params()
    if "teacher" in change:
        raw["teachers"]["simclr"]["pretrain"] = copy.deepcopy(PRETRAIN)
    if "weights_path" in change:
        raw["teachers"]["proxy_anchor"]["model"]["weights_path"] = change["weights_path"]
    if "released" in change:
        raw["released_teachers"] = {"proxy_anchor": change["released"]}
    if "processes" in change:
        raw["teachers"]["proxy_anchor"]["train"]["processes"] = change["processes"]
    with pytest.raises(ConfigError, match=message) as refused:
        validated(raw)
    assert "\n" not in str(refused.value).strip()


def test_the_teacher_and_the_students_of_its_backbone_start_from_the_pretraining(tmp_path):
    from pipeline.data.loading import load_images
    from pipeline.models.embedding_model import load_initial_backbone, load_model, save_model
    from pipeline.replica import Replica
    from pipeline.setting import Setting
    from pipeline.train.pretraining import PRETRAIN_FOLDER, pretrained_backbone
    from pipeline.train.recipes import teacher_objective, transfer_objective

    params = validated(pretrained_params())
    images = load_images(params.data, "train", (0, 1, 2, 3, 4))
    log = Log()
    start = pretrained_backbone(params, "proxy_anchor", images, tmp_path, {"t": 1}, log, "test")
    # The SimCLR model the pretraining saved: its backbone is the start, and it left its random init.
    simclr, spec = load_model(tmp_path / PRETRAIN_FOLDER / "model.pt")
    assert spec.projection == "simclr" and spec.embedding_dim is None
    assert equal_weights(start, simclr.backbone.state_dict())
    random_teacher, _ = teacher_objective(params, "proxy_anchor", images)
    assert not equal_weights(start, random_teacher.model.backbone.state_dict())
    assert log.keys and all(k.startswith("pretrain/") for k in log.keys)  # never the teacher's own curve

    teacher, spec = teacher_objective(params, "proxy_anchor", images, start)
    assert equal_weights(start, teacher.model.backbone.state_dict())
    # ... its embedding head from the seed, as without pretraining.
    head = {k: v for k, v in teacher.model.state_dict().items() if not k.startswith("backbone.")}
    assert head and equal_weights(head, {k: v for k, v in random_teacher.model.state_dict().items()
                                         if not k.startswith("backbone.")})
    path = tmp_path / "teacher.pt"
    save_model(teacher.model, spec, path, start)
    carried = load_initial_backbone(path)
    assert equal_weights(start, carried)
    frozen = teacher.model.eval()
    for student, method, shares in (("same", "relaxed", True), ("same", "own_objective", True),
                                    ("small", "relaxed", False)):
        replica = Replica(Setting.METRIC_LEARNING, "proxy_anchor", student, method, 0)
        objective, _ = transfer_objective(params, replica, frozen, images, carried)
        assert equal_weights(start, objective.model.backbone.state_dict()) is shares, (student, method)
    # A teacher file without the start, under a params.yaml that declares one: refused, not a silent random start.
    with pytest.raises(ValueError, match="carries no pretrained backbone"):
        transfer_objective(params, Replica(Setting.METRIC_LEARNING, "proxy_anchor", "same", "relaxed", 0), frozen,
                           images, None)


def test_without_pretrain_nothing_changes(tmp_path):
    """No `pretrain`: no start, a file without one, and every student as it was (the dump keeps no key, so the
    stages' fingerprints and dvc.lock stay those of before the option)."""
    from pipeline.data.loading import load_images
    from pipeline.models.embedding_model import load_initial_backbone, save_model
    from pipeline.replica import Replica
    from pipeline.setting import Setting
    from pipeline.train.pretraining import pretrained_backbone
    from pipeline.train.recipes import teacher_objective, transfer_objective

    raw = pretrained_params()
    del raw["teachers"]["proxy_anchor"]["pretrain"]
    params = validated(raw)
    assert "pretrain" not in params.model_dump(mode="json")["teachers"]["proxy_anchor"]
    images = load_images(params.data, "train", (0, 1, 2, 3, 4))
    assert pretrained_backbone(params, "proxy_anchor", images, tmp_path, {}, Log(), "test") is None
    assert not (tmp_path / "pretrain").exists()
    teacher, spec = teacher_objective(params, "proxy_anchor", images)
    save_model(teacher.model, spec, tmp_path / "teacher.pt")
    assert load_initial_backbone(tmp_path / "teacher.pt") is None
    replica = Replica(Setting.METRIC_LEARNING, "proxy_anchor", "same", "relaxed", 0)
    a, _ = transfer_objective(params, replica, teacher.model.eval(), images)
    b, _ = transfer_objective(params, replica, teacher.model.eval(), images, None)
    assert equal_weights(a.model.state_dict(), b.model.state_dict())
