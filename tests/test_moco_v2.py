"""MoCo v2 as its authors ran it (He et al. CVPR 2020; Chen et al. 2020; facebookresearch/moco moco/builder.py and
colab/moco_cifar10_demo.ipynb): the loss once on (q from view 0, k from view 1), constant momentum, shuffle BN
(BatchNorm per split of the shuffled key batch on one process), and a saved model that is a plain EmbeddingModel."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightly.models.utils import batch_shuffle
from torch import nn

from pipeline.config import ConfigError, validate_params
from pipeline.data.loading import load_images
from pipeline.eval.protocol import evaluate
from pipeline.models.embedding_model import EmbeddingModel, save_model
from pipeline.models.loading import load_saved_model
from pipeline.models.registry import build_backbone
from pipeline.train import moco_objective, recipes
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.loop import fit
from pipeline.train.moco_objective import MoCoObjective

ROOT = Path(__file__).resolve().parents[1]


class Noise(nn.Module):
    """Two calls, two different views of the same images."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + 0.5 * torch.randn_like(images)


def tiny_model() -> EmbeddingModel:
    backbone = build_backbone("small_resnet", 1, widths=(8, 16), stem_stride=1)
    return EmbeddingModel(backbone, projection="mocov2", projection_dim=4, pooling="avg")


def v2(bn_splits: int = 1, momentum: float = 0.999, queue_size: int = 6) -> MoCoObjective:
    return MoCoObjective(tiny_model(), Noise(), queue_size=queue_size, temperature=0.2, momentum=momentum,
                         variant="v2", bn_splits=bn_splits)


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's loss from its formula: -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_j exp(q.queue_j / T)), unit q, k."""
    q = query / query.norm(dim=1, keepdim=True)
    k = key / key.norm(dim=1, keepdim=True)
    positive = (q * k).sum(dim=1, keepdim=True) / temperature
    negatives = q @ queue.T / temperature
    return (torch.logsumexp(torch.cat([positive, negatives], dim=1), dim=1) - positive[:, 0]).mean()


def test_v2_loss_is_infonce_of_view0_queries_against_view1_keys_and_the_queue():
    torch.manual_seed(0)
    objective = v2()
    with torch.no_grad():  # a key encoder unlike the query encoder, so a key from the wrong encoder shows
        for p in objective.key_encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    queue = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.6, 0.8],
                          [0, 0, 0.8, -0.6], [-1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    state = objective.criterion.queue_state()
    objective.criterion.load_queue_state({"queue": queue, "pointer": torch.zeros_like(state["pointer"])})
    images = torch.randn(4, 1, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        view0, view1 = objective.two_views(images).chunk(2)
        torch.manual_seed(7)
        loss = objective(images, torch.zeros(4), torch.arange(4))
    with torch.no_grad():  # bn_splits 1: one BatchNorm group, so the key batch's order does not matter
        q0, q1 = objective.encoder.projection(view0), objective.encoder.projection(view1)
        k0, k1 = objective.key_encoder.projection(view0), objective.key_encoder.projection(view1)
    expected = info_nce(q0, k1, queue, 0.2)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    symmetric = 0.5 * (expected + info_nce(q1, k0, queue, 0.2))
    assert abs(loss.item() - symmetric.item()) > 1e-3
    # The n keys of view 1 (not 2n) were enqueued behind the pointer; the rest of the queue is as it was.
    after = objective.criterion.queue_state()
    assert int(after["pointer"]) == 4
    torch.testing.assert_close(after["queue"][:4], k1 / k1.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after["queue"][4:], queue[4:])


def test_v2_momentum_is_constant_over_the_run():
    torch.manual_seed(0)
    objective = v2(momentum=0.9)
    for step in (0, 5, 9):  # the symmetric form's cosine schedule would move m towards 1 over these
        with torch.no_grad():
            for p in objective.encoder.parameters():
                p.add_(torch.randn_like(p))
        keys = [p.clone() for p in objective.key_encoder.parameters()]
        queries = [p.clone() for p in objective.encoder.parameters()]
        objective.after_optimizer_step(step, 10)
        for key, before, query in zip(objective.key_encoder.parameters(), keys, queries):
            torch.testing.assert_close(key, 0.9 * before + 0.1 * query)


def test_shuffle_bn_normalises_each_split_of_the_shuffled_key_batch_and_unshuffles_the_keys(monkeypatch):
    torch.manual_seed(3)
    objective = v2(bn_splits=2)
    recorded = {}

    def recording_shuffle(batch, distributed=False):
        shuffled, shuffle = batch_shuffle(batch, distributed=distributed)
        recorded["shuffle"] = shuffle
        return shuffled, shuffle

    monkeypatch.setattr(moco_objective, "batch_shuffle", recording_shuffle)
    seen = {}
    bn = objective.key_encoder.backbone.stem[1]  # clone: the stem's ReLU runs in place on its output
    bn.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0].clone(), y=output.clone()))
    objective.key_encoder.backbone.register_forward_pre_hook(lambda module, inputs: seen.update(images=inputs[0]))
    # Images at very different scales: any two of them have statistics unlike the batch's.
    view = torch.randn(4, 1, 8, 8) * torch.tensor([1.0, 2.0, 5.0, 10.0]).view(4, 1, 1, 1)
    keys = objective.keys(view)

    shuffle = recorded["shuffle"]
    assert sorted(shuffle.tolist()) == [0, 1, 2, 3] and shuffle.tolist() != [0, 1, 2, 3]
    torch.testing.assert_close(seen["images"], view[shuffle])
    # lightly's SplitBatchNorm (like the demo's) views (N, C, H, W) as (N/s, s*C, H, W): split j holds the
    # shuffled batch's positions j, j + s. By hand: each split normalised by its own mean and biased variance.
    x, expected = seen["x"], torch.empty_like(seen["x"])
    weight, bias = bn.weight.view(1, -1, 1, 1), bn.bias.view(1, -1, 1, 1)
    for split in ([0, 2], [1, 3]):
        part = x[split]
        mean = part.mean(dim=(0, 2, 3), keepdim=True)
        var = part.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        expected[split] = (part - mean) / torch.sqrt(var + bn.eps) * weight + bias
    torch.testing.assert_close(seen["y"], expected, rtol=1e-4, atol=1e-4)
    whole = nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert (whole - seen["y"]).abs().max() > 0.1  # whole-batch BatchNorm would differ

    # Unshuffled: row i is image i's key, however the batch was ordered for the key encoder.
    with torch.no_grad():
        projected = objective.key_encoder.projection(view[shuffle])  # train mode: same groups, same output
    torch.testing.assert_close(keys, projected[torch.argsort(shuffle)])


def test_split_batchnorm_gives_the_same_output_for_channels_last_input():
    torch.manual_seed(0)
    bn = MoCoObjective._SplitBatchNorm(3, 2)
    x = torch.randn(4, 3, 5, 5)
    out = bn(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, MoCoObjective._SplitBatchNorm(3, 2)(x))
    assert out.is_contiguous(memory_format=torch.channels_last)


def tiny_params(moco: dict, batch_size: int = 32, **train) -> dict:
    """tests/assets/tiny_params.yaml with a MoCo teacher and a cheap evaluation."""
    raw = yaml.safe_load((ROOT / "tests" / "assets" / "tiny_params.yaml").read_text())
    raw["teachers"]["moco"] = {
        "method": "moco", "model": {"backbone": "small_resnet", "widths": [8, 16]}, "projection_dim": 16,
        "augmentation": "mocov2", "temperature": 0.2, "moco": moco,
        "train": {"epochs": 1, "max_steps": 2, "batch_size": batch_size, "optimizer": {"name": "sgd", "lr": 0.06},
                  **train},
    }
    raw["evaluation"] = {"batch_size": 64, "tsne_points": 0, "probe": {"enabled": False},
                         "knn": {"enabled": True, "k": 5}, "retrieval": {"ks": [1, 2]}}
    return raw


def test_v2_teacher_trains_resumes_and_saves_a_plain_model_that_loads_and_evaluates(tmp_path):
    params = validate_params(tiny_params({"variant": "v2", "queue_size": 64, "bn_splits": 2}))
    images = load_images(params.data, "train")
    objective, spec = recipes.teacher_objective(params, "moco", images)
    assert (objective.variant, objective.bn_splits, objective.momentum) == ("v2", 2, 0.999)
    fit(objective, images, params.teachers["moco"].train, seed=0, device="cpu", checkpoint_dir=tmp_path / "ckpt")

    # The checkpoint (split BatchNorm buffers, queue) loads into a freshly built objective.
    fresh, _ = recipes.teacher_objective(params, "moco", images)
    fresh.load_state_dict(load_checkpoint(tmp_path / "ckpt" / "last.pt")["objective"])
    torch.testing.assert_close(fresh.criterion.queue_state(), objective.criterion.queue_state())

    save_model(objective.model, spec, tmp_path / "model.pt")
    model, _ = load_saved_model(tmp_path / "model.pt")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    # In eval the folded model computes what the training encoder does (split statistics averaged).
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), copy.deepcopy(objective.encoder).eval()(x))
    metrics, _ = evaluate(model, images, load_images(params.data, "test"), params.evaluation,
                          params.data.image_size, params.seed)
    assert 0.0 <= metrics["recall@1"] <= 1.0


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(raw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_config_fills_per_variant_defaults_and_refuses_inconsistent_combinations():
    teachers = validate_params(tiny_params({"variant": "v2"})).teachers
    assert (teachers["moco"].moco.momentum, teachers["moco"].moco.bn_splits) == (0.999, 8)
    teachers = validate_params(tiny_params({})).teachers
    assert (teachers["moco"].moco.variant, teachers["moco"].moco.momentum, teachers["moco"].moco.bn_splits) == \
        ("symmetric", 0.99, None)
    assert "teachers.moco.moco.bn_splits:" in error_of(tiny_params({"bn_splits": 2}))
    assert "teachers.moco.moco.variant:" in error_of(tiny_params({"variant": "v3"}))
    assert "teachers.moco.train.batch_size:" in error_of(tiny_params({"variant": "v2", "bn_splits": 8}, batch_size=36))
    assert "teachers.moco.train.sync_batchnorm:" in error_of(tiny_params({"variant": "v2"}, processes=2))
    validate_params(tiny_params({"variant": "v2"}, processes=2, sync_batchnorm=False))


def test_cifar10_profile_has_the_symmetric_form_and_the_official_demos_moco_v2():
    """moco_cifar10_demo.ipynb's defaults: K 4096, m 0.99, T 0.1, bn_splits 8, asymmetric, SGD lr 0.06 at batch
    512, weight decay 5e-4, cosine without warm-up, 200 epochs, RandomResizedCrop(32) at its default scale."""
    from pipeline.profiles import profile_params

    teachers = validate_params(profile_params("cifar10_ssl")).teachers
    assert teachers["moco"].moco.variant == "symmetric"
    official = teachers["moco_v2"]
    assert official.moco.model_dump() == {"variant": "v2", "queue_size": 4096, "momentum": 0.99, "bn_splits": 8}
    assert official.temperature == 0.1 and official.augmentation.crop_scale == (0.08, 1.0)
    train = official.train
    assert (train.epochs, train.batch_size, train.optimizer.name, train.optimizer.lr, train.optimizer.momentum,
            train.optimizer.weight_decay, train.optimizer.warmup_epochs, train.optimizer.milestones_epochs) == \
        (200, 512, "sgd", 0.06, 0.9, 5e-4, 0.0, ())


def test_only_moco_imports_lightlys_model_utilities():
    """lightly.models imports all of torchvision (2.5 s of a stage's start-up, measured): a stage that
    builds any other objective (a Table 1 student, a SimCLR or Proxy-Anchor teacher) must not pay it."""
    code = ("import sys; from pipeline.train import recipes, classifier_recipes, session; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightly', 'torchvision'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
    code = "import sys; import pipeline.train.moco_objective; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True"  # the guard above measures what it claims to
