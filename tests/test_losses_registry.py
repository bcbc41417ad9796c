"""The loss registry: every name builds, each declares a consistent contract, and bad names or
parameters fail clearly."""

import inspect

import pytest
from torch import nn

from pipeline.losses import build, loss_class, names
from pipeline.losses.contract import FEATURES, INPUTS, RUNTIME_ARGS

REQUIRED = {
    "fitnet": {"student_channels": [2], "teacher_channels": [3]},
    "crd": {"student_dim": 3, "teacher_dim": 4, "n_data": 10},
    "proxy_anchor": {"num_classes": 3, "embedding_dim": 4},
}


def test_names_are_the_published_set():
    assert set(names()) == {
        "relaxed_contrastive", "contrastive", "rkd", "pkt", "darkrank", "fitnet", "attention", "crd",
        "hinton_kd", "proxy_anchor", "ntxent", "moco", "stml",
    }
    # The paper trains FitNet, Attention and CRD with a Proxy-Anchor term (Kim et al. 2021, Sec. 4.1).
    assert {name for name in names() if loss_class(name).proxy_anchor} == {"fitnet", "attention", "crd"}


# What each published loss reads, from the papers' definitions (not from the classes).
EXPECTED_CONTRACT = {
    # name: (role, inputs, features, runtime args)
    "relaxed_contrastive": ("transfer", ("student", "teacher"), "embedding", ()),
    "contrastive": ("supervised", ("student", "labels"), "embedding", ()),
    "rkd": ("transfer", ("student", "teacher"), "embedding", ()),
    "pkt": ("transfer", ("student", "teacher"), "embedding", ()),
    "darkrank": ("transfer", ("student", "teacher", "labels"), "embedding", ()),
    "fitnet": ("transfer", ("student", "teacher"), "stage_maps", ("student_channels", "teacher_channels")),
    "attention": ("transfer", ("student", "teacher"), "stage_maps", ()),
    # CRD on the pooled backbone features (the label-relaxation code's t_feats[-1] / s_feats[-1]), with the
    # training items' classes for its other-class negatives.
    "crd": ("transfer", ("student", "teacher", "indices"), "pooled",
            ("student_dim", "teacher_dim", "n_data", "dataset_labels")),
    "hinton_kd": ("transfer", ("student", "teacher"), "logits", ()),
    "proxy_anchor": ("teacher", ("student", "labels"), "embedding", ("num_classes", "embedding_dim")),
    "ntxent": ("teacher", (), "embedding", ()),
    "moco": ("teacher", (), "embedding", ("embedding_dim",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONTRACT))
def test_declared_contract(name):
    cls = loss_class(name)
    assert (cls.role, cls.inputs, cls.features, cls.runtime_args) == EXPECTED_CONTRACT[name]
    assert set(cls.inputs) <= set(INPUTS) and cls.features in FEATURES and set(cls.runtime_args) <= set(RUNTIME_ARGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CONTRACT))
def test_params_model_and_constructor_agree(name):
    """Every constructor argument is either a runtime arg or a typed Params field with the same default."""
    cls = loss_class(name)
    signature = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    assert set(signature) == set(cls.Params.model_fields) | set(cls.runtime_args)
    for field, info in cls.Params.model_fields.items():
        assert info.default == signature[field], field


def test_darkrank_without_its_triplet_term_reads_no_labels():
    dark = loss_class("darkrank")
    assert dark.reads_labels(dark.Params()) and not dark.reads_labels(dark.Params(triplet_weight=0.0))
    assert build("darkrank", triplet_weight=0.0).active_inputs == ("student", "teacher")


@pytest.mark.parametrize("name", sorted({"relaxed_contrastive", "contrastive", "rkd", "pkt", "darkrank", "fitnet",
                                         "attention", "crd", "hinton_kd", "proxy_anchor", "ntxent", "moco"}))
def test_every_name_builds_a_module(name):
    assert isinstance(build(name, **REQUIRED.get(name, {})), nn.Module)


def test_published_defaults():
    relaxed = build("relaxed_contrastive")
    p = relaxed.params
    assert (p.sigma, p.delta, p.normalize, p.student_l2) == (1.0, 1.0, "row", False)
    rkd = build("rkd")
    assert (rkd.distance_weight, rkd.angle_weight, rkd.angle_max_rows) == (1.0, 2.0, None)
    dark = build("darkrank")
    assert (dark.alpha, dark.beta, dark.list_length, dark.triplet_margin) == (3.0, 3.0, 4, 0.2)
    crd = build("crd", **REQUIRED["crd"])
    assert (crd.num_negatives, crd.temperature, crd.momentum, crd.student_memory.shape[1]) == (4096, 0.07, 0.5, 128)
    assert build("hinton_kd").temperature == 4.0
    proxy = build("proxy_anchor", **REQUIRED["proxy_anchor"])
    assert (proxy.margin, proxy.alpha) == (0.1, 32.0)


def test_unknown_name_lists_names_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown loss name 'relaxed_contrastiv'.*Did you mean 'relaxed_contrastive'"):
        build("relaxed_contrastiv")
    with pytest.raises(ValueError, match="allowed: relaxed_contrastive, contrastive"):
        build("triplet_of_doom")


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="unknown parameter.*'sigmaa'.*accepted: .*sigma"):
        build("relaxed_contrastive", sigmaa=2.0)


@pytest.mark.parametrize("value", [True, "abc", "1.0", None])
def test_wrong_types_are_refused_by_the_constructor(value):
    with pytest.raises(ValueError, match="sigma"):
        build("relaxed_contrastive", sigma=value)


def test_a_new_loss_declared_in_a_test_trains_a_student_without_editing_any_module(monkeypatch, tmp_path):
    """Register a loss with its contract, name it in params, and run one transfer step through the recipes."""
    from typing import Annotated

    import torch
    import torch.nn.functional as F
    import yaml
    from pydantic import Field

    from pipeline.config import ConfigError, validate_params
    from pipeline.contracts import check_contracts
    from pipeline.data.loading import load_images
    from pipeline.losses import registry
    from pipeline.losses.contract import Loss, LossParams
    from pipeline.train import recipes
    from recipe_support import replica
    from pipeline.train.loop import fit

    class CosineMatch(Loss):
        """scale * mean(1 - cos(student_i, teacher_i)); needs equal widths, which the test's student has."""

        class Params(LossParams):
            scale: Annotated[float, Field(gt=0)] = 1.0

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.params = self.checked_params(scale=scale)

        def forward(self, student, teacher):
            return self.params.scale * (1 - F.cosine_similarity(student, teacher, dim=1)).mean()

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("cosine_match", CosineMatch)
    raw = yaml.safe_load(open("tests/assets/tiny_params.yaml"))
    raw["students"]["small"]["model"]["embedding_dim"] = 16  # the SimCLR teacher's projection width
    raw["losses"]["cosine"] = {"name": "cosine_match", "params": {"scale": 2.0}}
    raw["transfer"]["self_supervised"]["grid"]["loss"] = ["cosine"]
    with pytest.raises(ConfigError, match=r"losses\.cosine\.params\.scale: Input should be greater than 0"):
        check_contracts(validate_params(
            {**raw, "losses": {**raw["losses"], "cosine": {"name": "cosine_match", "params": {"scale": 0}}}}))
    params = validate_params(raw)
    check_contracts(params)

    images = load_images(params.data, "train")
    teacher_objective, _ = recipes.teacher_objective(params, "simclr", images)
    fit(teacher_objective, images, params.teachers["simclr"].train, device="cpu")
    student_objective, _ = recipes.transfer_objective(params, replica(params, "simclr", "small", "cosine"),
                                                      teacher_objective.model.eval(), images)
    assert isinstance(student_objective.criterion, CosineMatch) and student_objective.criterion.params.scale == 2.0
    before = {k: v.clone() for k, v in student_objective.student.state_dict().items()}
    result = fit(student_objective, images, params.transfer.self_supervised.train, device="cpu")
    assert result.steps == 2 and all(0 < loss <= 4 for _, loss in result.losses)  # 2 * (1 - cos) lies in [0, 4]
    changed = [k for k, v in student_objective.student.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the registered loss trained nothing"
