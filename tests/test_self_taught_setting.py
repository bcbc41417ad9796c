"""The self-taught setting (issue 31) in params.yaml: no labels reach it, each refusal one line naming the key;
its stages name their setting; its students start where the setting says."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, validate_params
from pipeline.contracts import check_contracts
from pipeline.replica import Replica
from pipeline.setting import Setting

TINY = Path(__file__).parent / "assets/tiny_params.yaml"


def tiny() -> dict:
    return yaml.safe_load(TINY.read_text())


def refusal(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        check_contracts(validate_params(raw))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_tiny_profile_declares_a_self_taught_grid():
    params = validate_params(tiny())
    check_contracts(params)
    assert params.transfer.self_taught.grid.loss == ("stml",)


@pytest.mark.parametrize("key, value, expected", [
    ("sampler", {"classes_per_batch": 4, "samples_per_class": 16},
     "transfer.self_taught.sampler: not allowed here: self-taught metric learning has no class labels"),
    ("labels", True, "transfer.self_taught.labels: not allowed here: self-taught metric learning trains without labels"),
])
def test_a_label_key_in_the_section_is_refused_naming_it(key, value, expected):
    raw = tiny()
    raw["transfer"]["self_taught"][key] = value
    assert expected in refusal(raw)


def test_a_loss_reading_labels_is_refused_in_the_self_taught_grid():
    raw = tiny()
    raw["losses"]["relaxed_pa"] = {"name": "relaxed_contrastive", "proxy_anchor_weight": 1.0}  # reads the classes
    raw["transfer"]["self_taught"]["grid"]["loss"] = ["stml", "relaxed_pa"]
    assert "transfer.self_taught.grid.loss: 'relaxed_pa' reads class labels" in refusal(raw)


def test_a_labelled_teacher_is_refused_in_the_self_taught_grid():
    raw = tiny()
    raw["transfer"]["self_taught"]["grid"]["teacher"] = ["proxy_anchor"]
    assert "transfer.self_taught.grid.teacher: 'proxy_anchor' is a proxy_anchor teacher" in refusal(raw)


def test_stml_outside_the_self_taught_grid_is_refused():
    raw = tiny()
    raw["transfer"]["metric_learning"]["grid"]["loss"] = ["relaxed", "stml"]
    assert "transfer.metric_learning.grid.loss: 'stml' (stml) trains a student against its own momentum" in refusal(raw)


def test_more_than_one_process_is_refused_naming_the_key():
    raw = tiny()
    raw["transfer"]["self_taught"]["train"]["processes"] = 2
    assert "transfer.self_taught.train.processes: self-taught students train in one process" in refusal(raw)


def test_its_stage_names_its_setting_and_reads_it_back():
    replica = Replica(Setting.SELF_TAUGHT, "simclr", "small", "stml", 0)
    args = replica.command_args().split()
    assert args[-2:] == ["--setting", "self_taught"]
    parsed = Replica.parse(args, "", "loss", lambda teacher: Setting.SELF_SUPERVISED)
    assert parsed == replica and parsed.stage == "self_taught@simclr-small-stml-0"
    plain = Replica(Setting.SELF_SUPERVISED, "simclr", "small", "relaxed", 0)  # the teacher's own setting: unnamed
    assert "--setting" not in plain.command_args()


def test_a_stage_whose_setting_and_teacher_disagree_is_refused():
    params = validate_params(tiny())
    with pytest.raises(ConfigError, match=r"^teachers\.proxy_anchor: a metric_learning teacher has no students in "
                                          r"the self_taught setting"):
        params.checked(Replica(Setting.SELF_TAUGHT, "proxy_anchor", "small", "stml", 0))


def test_stml_and_the_control_start_from_the_teacher_and_transfer_from_random():
    """A self-taught student of the teacher's network starts from the teacher's trained backbone (STML's
    pretrained start); a transfer loss in the same grid learns from the teacher frozen, from a random start."""
    import torch

    from pipeline.data.loading import load_images
    from pipeline.models.embedding_model import build_model
    from pipeline.models.loading import model_spec
    from pipeline.train.recipes import transfer_objective

    raw = tiny()
    raw["students"]["twin"] = {"model": {"backbone": "small_resnet", "widths": [8, 16], "embedding_dim": 8},
                               "role": "self_transfer"}
    raw["transfer"]["self_taught"]["grid"] = {"teacher": ["simclr"], "student": ["twin"],
                                              "loss": ["stml", "own_objective", "relaxed"]}
    params = validate_params(raw)
    images = load_images(params.data, "train").unlabelled()
    teacher = build_model(model_spec(params.teachers["simclr"].model, images.channels, "simclr", 16))
    started = {}
    for loss in ("stml", "own_objective", "relaxed"):
        objective, _ = transfer_objective(params, Replica(Setting.SELF_TAUGHT, "simclr", "twin", loss, 0),
                                          teacher, images)
        started[loss] = all(torch.equal(value, teacher.backbone.state_dict()[name])
                            for name, value in objective.model.backbone.state_dict().items())
    assert started == {"stml": True, "own_objective": True, "relaxed": False}


def test_a_batch_that_is_not_whole_neighbour_groups_is_refused_naming_both_keys():
    from pipeline.data.loading import load_images
    from pipeline.models.embedding_model import build_model
    from pipeline.models.loading import model_spec
    from pipeline.train.recipes import transfer_objective

    raw = tiny()
    raw["losses"]["stml"]["params"]["neighbours"] = 5  # 64 images are not whole groups of 5
    params = validate_params(raw)
    images = load_images(params.data, "train").unlabelled()
    teacher = build_model(model_spec(params.teachers["simclr"].model, images.channels, "simclr", 16))
    with pytest.raises(ValueError, match=r"^transfer\.self_taught\.train\.batch_size: 64 images .* "
                                         r"losses\.stml\.params\.neighbours = 5$"):
        transfer_objective(params, Replica(Setting.SELF_TAUGHT, "simclr", "small", "stml", 0), teacher, images)
