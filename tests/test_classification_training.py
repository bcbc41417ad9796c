"""Classification trainers through the one loop on digits (loss falls on a fixed batch, checkpoint,
MLflow run), Hinton KD inside the objective against a hand computation, top-k against brute force."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from test_train import tracking_store  # noqa: F401  (module-scoped SQLite store in MLFLOW_TRACKING_URI)
from torch import nn

from pipeline import losses
from pipeline.infra import start_run
from pipeline.infra.runs import DEFAULT_EXPERIMENT
from pipeline.infra.store import tracking_uri
from pipeline.data import ImageSet, load_dataset
from pipeline.data.augment import build_augmentation
from pipeline.models.registry import build_backbone
from pipeline.models.classifier import Classifier
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.classification import (
    CrossEntropyObjective,
    DistillationObjective,
    classification_metrics,
)
from pipeline.train.loop import fit
from pipeline.train.stops import NonFiniteLossError
from train_support import train_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets: on a shared 2-core machine a second intra-op thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", "train")
    return dataclasses.replace(data, images=data.images[:128], labels=data.labels[:128])


def tiny_classifier(widths=(8, 16, 32)) -> Classifier:
    return Classifier(build_backbone("small_resnet", 1, widths=widths, stem_stride=1), num_classes=10)


TERMS = {  # transfer term: (loss params, transfer weight); PKT's term is ~1e-4, RepDistiller weighs it 3e4
    "relaxed_contrastive": ({}, 1.0),
    "rkd": ({}, 1.0),
    "pkt": ({}, 3e4),
    "crd": ({"feat_dim": 16, "num_negatives": 64}, 0.8),
    "hinton_kd": ({"temperature": 4.0}, 1.0),
}
TRAINERS = ["teacher", "student_alone", *TERMS]
CONFIG = train_config(
    epochs=10, batch_size=32, optimizer="sgd", lr=0.1, weight_decay=0.0, warmup_epochs=0.5, log_every_steps=5
)  # 4 steps per epoch on 128 images


@pytest.fixture(scope="module")
def trained_teacher(digits):
    """A teacher with class structure in its features (40 CE steps), so the transfer terms carry signal."""
    torch.manual_seed(0)
    objective = make_objective("teacher", digits)
    fit(objective, digits, CONFIG)
    return objective.classifier.eval()


def make_objective(trainer: str, digits, teacher: Classifier | None = None):
    augment = build_augmentation("cifar", 8, 1, digits.mean, digits.std)
    if trainer == "teacher":
        return CrossEntropyObjective(tiny_classifier(), augment)
    student = tiny_classifier(widths=(4, 8, 16))
    if trainer == "student_alone":
        return CrossEntropyObjective(student, augment)
    teacher = copy.deepcopy(teacher) if teacher is not None else tiny_classifier()
    params, weight = TERMS[trainer]
    if trainer == "crd":
        params = {
            **params,
            "student_dim": student.embedding_dim,
            "teacher_dim": teacher.embedding_dim,
            "n_data": len(digits),
        }
    return DistillationObjective(student, teacher, augment, losses.build(trainer, **params), weight)


def fixed_batch_parts(objective, digits) -> tuple[float, float]:
    """(CE, transfer term) on all 128 images under one fixed augmentation draw, on a copy of the
    objective so that no BatchNorm statistic or CRD memory of the trained one moves."""
    parts = []
    for ce_weight, transfer_weight in ((1.0, 0.0), (0.0, 1.0)):
        probe = copy.deepcopy(objective)
        if not isinstance(probe, DistillationObjective):
            if ce_weight == 0.0:
                parts.append(0.0)
                continue
        else:
            probe.ce_weight, probe.transfer_weight = ce_weight, transfer_weight
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(1234)
            parts.append(probe(digits.images, digits.labels, torch.arange(len(digits))).item())
    return parts[0], parts[1]


@pytest.mark.usefixtures("tracking_store")
@pytest.mark.parametrize("trainer", TRAINERS)
def test_classification_trainer_learns_checkpoints_and_is_tracked(trainer, digits, trained_teacher, tmp_path):
    torch.manual_seed(0)
    objective = make_objective(trainer, digits, trained_teacher)
    config = CONFIG
    objective.train()
    ce_before, term_before = fixed_batch_parts(objective, digits)
    teacher_before = (
        {k: v.clone() for k, v in objective.teacher.state_dict().items()} if trainer in TERMS else {}
    )
    with start_run(
        f"test_cls_{trainer}",
        params={"train": config.model_dump(mode="json"), "trainer": trainer},
        system_metrics=False,
    ) as run:
        result = fit(objective, digits, config, checkpoint_dir=tmp_path / "ckpt", logger=run)
    ce_after, term_after = fixed_batch_parts(objective, digits)
    # Both parts fall, each on its own: CE from ~log(10) = 2.30, the transfer term from its start.
    assert ce_after < 0.9 * ce_before, (ce_before, ce_after)
    if trainer in TERMS:
        assert term_after < term_before, (term_before, term_after)

    assert result.steps == 40 and all(math.isfinite(v) for _, v in result.losses)
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt")  # weights_only=True inside
    assert state["step"] == 40 and state["epochs_completed"] == 10
    if trainer in TERMS:  # the frozen teacher: unchanged (BN statistics included), not in the checkpoint
        assert not objective.teacher.training
        for key, value in objective.teacher.state_dict().items():
            assert torch.equal(value, teacher_before[key]), key
        assert not any(key.startswith("teacher") for key in state["objective"])
        assert any(key.startswith("student.") for key in state["objective"])

    client = MlflowClient(tracking_uri())
    runs = client.search_runs(
        [client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id],
        f"tags.`dvc.stage` = 'test_cls_{trainer}'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["trainer"] == trainer and runs[0].data.params["train.optimizer.lr"] == "0.1"
    history = sorted(client.get_metric_history(runs[0].info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 41))
    assert [m.value for m in history] == pytest.approx([v for _, v in result.losses])


class PixelsAsFeatures(nn.Module):
    """Backbone stub: the (B, C, 1, 1) input is the feature map, so features = the input numbers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def hand_classifier(weight: torch.Tensor) -> Classifier:
    model = Classifier(PixelsAsFeatures(weight.shape[1]), weight.shape[0])
    with torch.no_grad():
        model.fc.weight.copy_(weight)
        model.fc.bias.zero_()
    return model


def test_hinton_kd_objective_matches_hand_computation_with_t_squared():
    """Two classes, T = 4, two images with features x1 = (4 ln 3, 0), x2 = (0, 0), labels (0, 1).
    Student fc = 0 -> student logits (0, 0) for both; teacher fc = identity -> teacher logits = x.
      softmax(s/T) = (1/2, 1/2) for both; softmax(t/T): image 1 (3/4, 1/4) [t/T = (ln 3, 0)], image 2 (1/2, 1/2).
      KL_1 = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812; KL_2 = 0.
      KD = T^2 * (KL_1 + KL_2) / 2 = 16 * 0.065406 = 1.046496 (without T^2 it would be 0.065406).
      CE = (ln 2 + ln 2) / 2 = 0.693147.
      loss = 0.1 * CE + 0.9 * KD = 0.069315 + 0.941846 = 1.011161 (RepDistiller's KD weights).
    Gradient w.r.t. the student bias (= sum over images of dloss/dlogits):
      CE: image 1 (1/2 - 1, 1/2)/2 = (-1/4, 1/4), image 2 (1/4, -1/4) -> (0, 0);
      KD: T^2 * (1/T) * (p_s - p_t) / B = 4 * (-1/4, 1/4) / 2 = (-1/2, 1/2) for image 1, 0 for image 2;
      total 0.9 * (-1/2, 1/2) = (-0.45, 0.45).
    """
    student = hand_classifier(torch.zeros(2, 2))
    teacher = hand_classifier(torch.eye(2))
    objective = DistillationObjective(
        student,
        teacher,
        nn.Identity(),
        losses.build("hinton_kd", temperature=4.0),
        transfer_weight=0.9,
        ce_weight=0.1,
    )
    images = torch.tensor([[4 * math.log(3), 0.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    loss = objective(images, torch.tensor([0, 1]), torch.arange(2))
    assert loss.item() == pytest.approx(1.011161, abs=1e-5)
    loss.backward()
    torch.testing.assert_close(student.fc.bias.grad, torch.tensor([-0.45, 0.45]))


def test_non_finite_distillation_loss_stops_the_loop(digits):
    torch.manual_seed(0)
    objective = make_objective("hinton_kd", digits)
    with torch.no_grad():
        objective.teacher.fc.bias.fill_(math.nan)  # NaN teacher logits -> NaN KD term
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        fit(objective, digits, train_config(epochs=1, batch_size=64, lr=0.05, log_every_steps=1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"transfer_loss": losses.build("fitnet", student_channels=[2], teacher_channels=[2])}, "not a classification"),
        ({"transfer_loss": losses.build("darkrank")}, "not a classification"),
        ({"transfer_weight": -1.0}, "transfer_weight"),
        ({"ce_weight": math.nan}, "ce_weight"),
    ],
)
def test_bad_distillation_arguments_raise_value_error(kwargs, message):
    arguments = {
        "transfer_loss": losses.build("pkt"),
        "transfer_weight": 1.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        DistillationObjective(tiny_classifier(), tiny_classifier(), nn.Identity(), **arguments)


def test_hinton_kd_needs_the_same_classes():
    student = Classifier(PixelsAsFeatures(3), 5)
    with pytest.raises(ValueError, match="5 classes, teacher 10"):
        DistillationObjective(
            student, tiny_classifier(), nn.Identity(), losses.build("hinton_kd"), 1.0
        )


@pytest.mark.parametrize("num_classes", [12, 4])
def test_classification_metrics_match_brute_force_argmax(num_classes):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 6)).astype(np.float32)
    weight = rng.normal(size=(num_classes, 6)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=50)
    model = hand_classifier(torch.from_numpy(weight)).train()
    metrics = classification_metrics(
        model,
        torch.from_numpy(features).view(50, 6, 1, 1),
        torch.from_numpy(labels),
        batch_size=7,
        transform=lambda x: x,
    )
    logits = features @ weight.T
    assert metrics["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    if num_classes >= 10:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        assert metrics["top5"] == pytest.approx(np.mean([labels[i] in top5[i] for i in range(50)]))
    else:
        assert "top5" not in metrics
    assert model.training  # mode restored


def test_classification_metrics_refuses_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(tiny_classifier(), torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("term", list(TERMS))
def test_paper_backbones_distil_on_cuda_under_bf16_and_channels_last(term, tmp_path):
    """resnet32x4 -> resnet8x4 on random CIFAR-sized data: the terms run in float32 inside autocast,
    the teacher follows the objective to the device and stays frozen."""
    torch.manual_seed(0)
    data = ImageSet(
        "random",
        torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8),
        torch.randint(0, 100, (256,)),
        100,
        (0.5,) * 3,
        (0.25,) * 3,
    )
    student = Classifier(build_backbone("resnet8x4"), 100)
    teacher = Classifier(build_backbone("resnet32x4"), 100)
    params, weight = TERMS[term]
    if term == "crd":
        params = {**params, "student_dim": 256, "teacher_dim": 256, "n_data": len(data)}
    augment = build_augmentation("cifar", 32, 3, data.mean, data.std)
    objective = DistillationObjective(student, teacher, augment, losses.build(term, **params), weight)
    config = train_config(epochs=1, max_steps=3, batch_size=64, lr=0.05, amp="bf16", log_every_steps=1)
    result = fit(objective, data, config, device="cuda", checkpoint_dir=tmp_path)
    assert len(result.losses) == 3 and all(math.isfinite(v) for _, v in result.losses)
    assert next(objective.teacher.parameters()).is_cuda and not objective.teacher.training
