"""STML trained by the shared loop (issue 31): the nearest-neighbour table against brute force, the momentum
teacher moved between backward and the optimiser step (the official order, checked on a hand case), no label
read, and a run interrupted mid-epoch resuming to the same weights as one that was not."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from train_support import train_config

from pipeline.data import load_dataset
from pipeline.data.augment import build_augmentation
from pipeline.losses.stml import STMLLoss
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.models.registry import build_backbone
from pipeline.train.loop import fit
from pipeline.train.stml_objective import STMLObjective

MOMENTUM = 0.9


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", "train")
    return dataclasses.replace(data, images=data.images[:128], labels=data.labels[:128]).unlabelled()


def objective_for(data, seed: int = 0) -> STMLObjective:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 16), stem_stride=1), embedding_dim=8)
        loss = STMLLoss(sigma=3.0, neighbours=4, momentum=MOMENTUM, wide_dim=12, views=2)
        return STMLObjective(student, build_augmentation("metric", 8, 1, data.mean, data.std),
                             build_augmentation("none", 8, 1, data.mean, data.std), loss, len(data))


def test_the_neighbour_table_is_the_brute_force_one_on_the_students_wide_head(digits):
    objective = objective_for(digits)
    sampler = objective.epoch_sampler(0, digits.images, 32, seed=0)
    plain = build_augmentation("none", 8, 1, digits.mean, digits.std)
    with torch.no_grad():
        objective.eval()
        g = objective.wide(objective.student.pooled_features(plain(digits.images))).double()
    distances = torch.cdist(g, g)
    expected = [sorted(range(len(g)), key=lambda j: (float(distances[i, j]), j))[:4] for i in range(len(g))]
    assert objective.neighbours.tolist() == expected
    assert all(row[0] == i for i, row in enumerate(expected))  # each image its own nearest
    batch = next(iter(sampler))
    assert len(batch) == 32 and all(batch[q:q + 4] in expected for q in range(0, 32, 4))


def test_the_teacher_moves_after_backward_and_before_the_step(digits):
    """After one step the teacher's weights are still the initial student's (they moved towards the weights
    the step started from, which they equal; the BatchNorm statistics towards those the forward pass left);
    after two, m * initial + (1 - m) * the student's weights after one step. Moved after the step instead,
    both would differ by (1 - m) x the step."""
    config = train_config(optimizer="adamw", lr=0.01, weight_decay=0.0, batch_size=32, max_steps=1)
    initial = {k: v.clone() for k, v in objective_for(digits).student.state_dict().items()}
    one = objective_for(digits)
    fit(one, digits, config)
    two = objective_for(digits)
    fit(two, digits, config.model_copy(update={"max_steps": 2}))
    after_one = one.student.state_dict()
    weights = {name for name, _ in one.student.named_parameters()}
    assert all(not torch.allclose(after_one[k], initial[k]) for k in weights if k.endswith("weight"))
    for name, value in one.teacher.state_dict().items():
        if value.is_floating_point():
            moved_to = initial[name] if name in weights else after_one[name]
            assert torch.allclose(value, MOMENTUM * initial[name] + (1 - MOMENTUM) * moved_to, rtol=0, atol=1e-6), name
    for name in weights:
        expected = MOMENTUM * initial[name] + (1 - MOMENTUM) * after_one[name]
        assert torch.allclose(two.teacher.state_dict()[name], expected, rtol=0, atol=1e-6), name


def test_labels_are_never_read(digits):
    objective = objective_for(digits)
    objective.epoch_sampler(0, digits.images, 32, seed=0)
    loss = objective(digits.images[:32], None, torch.arange(32))  # no labels at all
    assert loss.ndim == 0 and torch.isfinite(loss)


class Interrupted(Exception):
    pass


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(digits, tmp_path):
    """4 steps per epoch, 2 epochs, stopped after step 3 (mid-epoch 0); the table is rebuilt at epoch 1."""
    config = train_config(optimizer="adamw", lr=0.01, batch_size=32, epochs=2, checkpoint_every_steps=3)
    straight = objective_for(digits)
    fit(straight, digits, config, checkpoint_dir=tmp_path / "straight")

    def stop(step: int, epochs: int) -> None:
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(objective_for(digits), digits, config, checkpoint_dir=tmp_path / "resumed", on_checkpoint=stop)
    resumed = objective_for(digits)
    result = fit(resumed, digits, config, checkpoint_dir=tmp_path / "resumed")
    assert result.resumed_from_step == 3 and int(resumed.neighbours_epoch) == 1
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_sampler_that_makes_other_epochs_than_the_plan_is_refused(digits):
    """The loop counts steps by its plan; an objective's sampler must make the same number of batches."""
    from pipeline.train.batches import BatchPlan

    plan = BatchPlan(digits.labels, 32, seed=0)  # 128 images: 4 batches per epoch
    sampler = objective_for(digits).epoch_sampler(0, digits.images, 64, seed=0)  # 2 batches of 64
    with pytest.raises(ValueError, match="makes 2 batches per epoch, the plan 4"):
        plan.draw_from(sampler)
