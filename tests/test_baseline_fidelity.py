"""The baselines as the official code runs them, pinned to values read from that code, not from ours:
LabelRelaxation-CVPR21 code/train_target.py (the Proxy-Anchor term's proxies at 100x the lr; the source
embedding L2-normalised, `--source-norm 1`; CRD on the pooled features, with other-class negatives from
its datasets' `cls_negative`) and RepDistiller (RKD's classification weights)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline import losses
from pipeline.config import load_params, validate_params
from pipeline.data import ImageSet
from pipeline.data.loading import load_images
from pipeline.models.heads import global_pool
from pipeline.profiles import profile_params
from pipeline.train import recipes
from pipeline.train.loop import build_optimizer
from recipe_support import replica

ROOT = Path(__file__).resolve().parents[1]
# code/train_target.py: {'params': ProxyAnchor_criterion.parameters(), 'lr': float(args.lr) * 100}
OFFICIAL_PROXY_LR_RATIO = 100
# RepDistiller distiller_zoo/RKD.py: RKDLoss(w_d=25, w_a=50); scripts/run_cifar_distill.sh: rkd -a 0 -b 1
REPDISTILLER_RKD = (25, 50, 1)
BATCH = 32  # images; the objectives see both views of each (64 rows)


@pytest.fixture(scope="module")
def setting():
    """The tiny profile with every baseline in the metric grid (Proxy-Anchor teacher) and CRD without its
    Proxy-Anchor term in the self-supervised grid; 200 digits; the two teachers untrained. Embedding
    widths differ from the pooled widths (student 8 -> 6, teacher 16 -> 12), so a mix-up shows."""
    raw = yaml.safe_load((ROOT / "tests/assets/tiny_params.yaml").read_text())
    raw["students"]["small"]["model"]["embedding_dim"] = 6
    raw["teachers"]["proxy_anchor"]["model"]["embedding_dim"] = 12
    raw["losses"].update(
        rkd={"name": "rkd"}, pkt={"name": "pkt"}, darkrank={"name": "darkrank"}, fitnet={"name": "fitnet"},
        attention={"name": "attention"}, crd={"name": "crd", "params": {"num_negatives": 64}},
        crd_ssl={"name": "crd", "proxy_anchor_weight": 0, "params": {"num_negatives": 64}},
    )
    raw["transfer"]["self_supervised"]["grid"]["loss"] = ["relaxed", "crd_ssl"]
    raw["transfer"]["metric_learning"]["grid"]["loss"] = ["relaxed", "rkd", "pkt", "darkrank", "fitnet", "attention", "crd"]
    params = validate_params(raw)
    images = load_images(params.data, "train")
    images = dataclasses.replace(images, images=images.images[:200], labels=images.labels[:200])
    teachers = {name: recipes.teacher_objective(params, name, images)[0].model.eval() for name in params.teachers}
    return params, images, teachers


def transfer(setting, loss: str, teacher: str = "proxy_anchor"):
    params, images, teachers = setting
    return recipes.transfer_objective(params, replica(params, teacher, "small", loss), teachers[teacher], images)[0]


def one_batch(setting, objective) -> torch.Tensor:
    _, images, _ = setting
    torch.manual_seed(0)
    return objective(images.images[:BATCH], images.labels[:BATCH], torch.arange(BATCH))


@pytest.mark.parametrize("loss", ["fitnet", "attention", "crd"])
def test_proxy_anchor_term_moves_its_proxies_100x_further_than_the_embedding_head_in_the_first_adamw_step(
    setting, loss
):
    """AdamW's first step moves each parameter by about lr_group * sign(grad), so the ratio of the
    proxies' step to the embedding head's is the ratio of their learning rates."""
    objective = transfer(setting, loss)
    config = setting[0].transfer.metric_learning.train
    assert config.optimizer.name == "adamw"
    optimizer = build_optimizer(objective.parameter_groups(), config)
    proxies, head = objective.auxiliary.proxies, objective.student.head.linear.weight
    before = proxies.detach().clone(), head.detach().clone()
    one_batch(setting, objective).backward()
    optimizer.step()
    proxy_step = (proxies.detach() - before[0]).abs().median()
    head_step = (head.detach() - before[1]).abs().median()
    assert head_step.item() == pytest.approx(config.optimizer.lr, rel=0.01)
    assert (proxy_step / head_step).item() == pytest.approx(OFFICIAL_PROXY_LR_RATIO, rel=0.01)


def captured_inputs(objective) -> dict[str, torch.Tensor]:
    """What the transfer loss receives, and the teacher's feature maps of the same views."""
    captured: dict[str, torch.Tensor] = {}
    objective.criterion.register_forward_pre_hook(
        lambda module, args: captured.update(student=args[0], teacher=args[1]))
    objective.teacher.backbone.register_forward_hook(lambda module, args, out: captured.update(teacher_maps=out))
    return captured


@pytest.mark.parametrize("loss", ["relaxed", "rkd", "pkt", "darkrank"])
def test_every_embedding_loss_receives_the_proxy_anchor_teachers_embedding_l2_normalised(setting, loss):
    """code/train_target.py builds the source with l2_norm=args.source_norm (default 1), so every loss on
    s_emb (relaxed, RKD, PKT, DarkRank) sees unit rows: the head output of these views, normalised."""
    objective = transfer(setting, loss)
    captured = captured_inputs(objective)
    one_batch(setting, objective)
    teacher = objective.teacher
    rows = captured["teacher"]
    assert rows.shape == (objective.views * BATCH, teacher.embedding_dim)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(objective.views * BATCH))
    head_output = teacher.head(global_pool(captured["teacher_maps"], teacher.pooling))
    torch.testing.assert_close(rows, F.normalize(head_output, dim=1))


@pytest.mark.parametrize("views", [1, 2])
def test_the_metric_learning_section_sets_the_views_of_every_image_and_their_labels(setting, views):
    """code/train_target.py --view N: x = torch.cat(x) over the N views, y = torch.cat([y] * N), so a
    label-reading loss (DarkRank's triplet term) gets N rows per image, each with that image's label."""
    params, images, teachers = setting
    section = params.transfer.metric_learning.model_copy(update={"views": views})
    params = params.model_copy(update={"transfer": params.transfer.model_copy(update={"metric_learning": section})})
    objective = recipes.transfer_objective(params, replica(params, "proxy_anchor", "small", "darkrank"), teachers["proxy_anchor"],
                                           images)[0]
    captured = {}
    objective.criterion.register_forward_pre_hook(lambda module, args: captured.update(zip(("student", "teacher", "labels"), args)))
    one_batch(setting, objective)
    assert captured["student"].shape[0] == captured["teacher"].shape[0] == views * BATCH
    assert torch.equal(captured["labels"], images.labels[:BATCH].repeat(views))


def test_crd_compares_the_raw_pooled_backbone_features_and_the_proxy_anchor_term_the_embedding(setting):
    """code/train_target.py: CRD_criterion(t_feats[-1], s_feats[-1], ...) on the last pooling layer's output
    (t_dim / s_dim = num_ftrs), and ProxyAnchor_criterion(t_emb, y) on the student embedding."""
    objective = transfer(setting, "crd")
    student, teacher = objective.student, objective.teacher
    crd = objective.criterion
    assert crd.student_head.linear.in_features == student.backbone.num_features != student.embedding_dim
    assert crd.teacher_head.linear.in_features == teacher.backbone.num_features != teacher.embedding_dim
    assert objective.auxiliary.proxies.shape[1] == student.embedding_dim
    captured = captured_inputs(objective)
    one_batch(setting, objective)
    assert captured["student"].shape == (objective.views * BATCH, student.backbone.num_features)
    torch.testing.assert_close(captured["teacher"], global_pool(captured["teacher_maps"], teacher.pooling))


def test_crd_draws_other_class_negatives_in_the_metric_setting_and_reads_no_labels_in_the_self_supervised_one(
    setting
):
    _, images, _ = setting
    metric = transfer(setting, "crd").criterion
    assert torch.equal(metric.dataset_labels, images.labels)
    drawn = metric.negatives(torch.arange(len(images)))
    assert not torch.any(images.labels[drawn] == images.labels[:, None])
    ssl = transfer(setting, "crd_ssl", teacher="simclr")
    assert ssl.criterion.dataset_labels is None and ssl.auxiliary is None
    assert torch.isfinite(one_batch(setting, ssl))


@pytest.mark.parametrize("path", ["params.yaml", "profiles/cifar100_kd.yaml"])
def test_classification_rkd_has_repdistillers_weights(path):
    params = load_params(ROOT / path) if path == "params.yaml" else validate_params(profile_params(Path(path).stem))
    method = params.classification.methods["rkd"]
    term = losses.build(method.loss, **method.params)
    assert (term.distance_weight, term.angle_weight, method.transfer_weight) == REPDISTILLER_RKD


@pytest.mark.parametrize("teacher, loss, pooled", [
    ("simclr", None, lambda maps: maps.mean(dim=(2, 3))),
    ("simclr", "relaxed", lambda maps: maps.mean(dim=(2, 3))),
    ("simclr", "own_objective", lambda maps: maps.mean(dim=(2, 3))),
    ("proxy_anchor", None, lambda maps: maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3))),
    ("proxy_anchor", "relaxed", lambda maps: maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3))),
    ("proxy_anchor", "own_objective", lambda maps: maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3))),
])
def test_ssl_models_pool_by_average_and_metric_learning_models_by_average_plus_max(setting, teacher, loss, pooled):
    """SimCLR / MoCo (and lightly, solo-learn) pool the last map by global average; the Proxy-Anchor and
    LabelRelaxation code (net/resnet.py: max_x + avg_x of gmp / gap) by the sum of average and max."""
    params, images, teachers = setting
    model = teachers[teacher] if loss is None else transfer(setting, loss, teacher=teacher).model
    x = images.images[:BATCH].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(model.pooled_features(x), pooled(model.backbone(x)))


# The view recipes as published, not read from our code. SimCLR (Chen et al. 2020, Appendix A): crop scale
# 0.08-1, colour jitter s = 1 (0.8s brightness / contrast / saturation, 0.2s hue) at p 0.8, grayscale 0.2,
# Gaussian blur at p 0.5 with a kernel of 10% of the side on ImageNet, none on CIFAR-10, where s = 0.5.
# MoCo v2 (facebookresearch/moco main_moco.py --aug-plus): RandomResizedCrop(scale=(0.2, 1.)),
# ColorJitter(0.4, 0.4, 0.4, 0.1) at p 0.8, RandomGrayscale(p=0.2), GaussianBlur([.1, 2.]) at p 0.5.
# Proxy-Anchor (dataset/utils.py make_transform): RandomResizedCrop + RandomHorizontalFlip only.
PUBLISHED_VIEWS = {
    "simclr": {"scale": (0.08, 1.0), "jitter": (0.8, 0.8, 0.8, 0.2), "jitter_p": 0.8, "gray": 0.2, "blur": 0.5},
    "simclr_cifar": {"scale": (0.08, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8, "gray": 0.2, "blur": 0.0},
    "mocov2": {"scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8, "gray": 0.2, "blur": 0.5},
    "metric": {"scale": (0.08, 1.0), "jitter": None, "jitter_p": None, "gray": 0.0, "blur": 0.0},
}


def view_strengths(augment) -> dict:
    """The strengths of the ops a view generator holds, read off the modules themselves."""
    found = {"scale": None, "jitter": None, "jitter_p": None, "gray": 0.0, "blur": 0.0, "kernel": None}
    for op in augment.ops:
        name = type(op).__name__
        if name == "RandomResizedCrop":
            found["scale"] = tuple(op.scale)
        elif name == "ColorJitter":
            found["jitter"] = tuple(round(float(s), 6) for s in op.strengths)
            found["jitter_p"] = op.p
        elif name == "RandomGrayscale":
            found["gray"] = op.p
        elif name == "GaussianBlur":
            found["blur"], found["kernel"] = op.p, op.kernel
    return found


@pytest.mark.parametrize("recipe, size, overrides", [
    ("simclr", 224, {}),
    ("simclr", 32, {}),                                   # no blur below 64 px, as SimCLR's CIFAR runs
    ("simclr_cifar", 32, {"jitter_strength": 0.5}),       # profiles/cifar10_ssl.yaml
    ("mocov2", 224, {}),
    ("metric", 224, {}),
])
def test_each_augmentation_holds_its_published_strengths(recipe, size, overrides):
    from pipeline.data.augment import build_augmentation

    kind = recipe.removesuffix("_cifar")
    found = view_strengths(build_augmentation(kind, size, 3, [0.5] * 3, [0.5] * 3, **overrides))
    expected = dict(PUBLISHED_VIEWS[recipe])
    if size < 64:
        expected["blur"] = 0.0
    assert {k: found[k] for k in expected} == expected
    if found["blur"]:
        assert found["kernel"] == 23  # 10% of 224, odd


def test_the_cifar_profile_sets_simclrs_cifar_jitter_and_the_strengths_reach_the_views():
    """profiles/cifar10_ssl.yaml's SimCLR teacher and students at s = 0.5; MoCo v2's recipe unchanged."""
    from pipeline.train.recipes import augment_for

    params = validate_params(profile_params("cifar10_ssl"))
    images = ImageSet("cifar10", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 10,
                      (0.5,) * 3, (0.5,) * 3)
    for augmentation, recipe in ((params.teachers["simclr"].augmentation, "simclr_cifar"),
                                 (params.transfer.self_supervised.augmentation, "simclr_cifar"),
                                 (params.teachers["moco"].augmentation, "mocov2")):
        found = view_strengths(augment_for(augmentation, params.data, images))
        expected = {**PUBLISHED_VIEWS[recipe], "blur": 0.0}  # 32 px: no blur in either recipe on CIFAR
        assert {k: found[k] for k in expected} == expected, recipe
