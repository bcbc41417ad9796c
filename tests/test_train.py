"""Each recipe trains through the one loop on digits: its loss falls, a checkpoint appears, MLflow has it."""

import dataclasses
import math
import os

import pytest
import torch
from mlflow import MlflowClient
from train_support import train_config

from pipeline import losses
from pipeline.infra import start_run
from pipeline.infra.runs import DEFAULT_EXPERIMENT, PARENT_TAG, RUN_GROUP_ENV, RUN_GROUP_TAG
from pipeline.data import load_dataset
from pipeline.data.augment import build_augmentation
from pipeline.models.embedding_model import EmbeddingModel
from pipeline.models.registry import build_backbone
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.loop import fit
from pipeline.train.moco_objective import MoCoObjective
from pipeline.train.objectives import ProxyAnchorObjective, SimCLRObjective, TransferObjective
from pipeline.train.schedule import WarmupCosine
from pipeline.train.stops import NonFiniteLossError


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds), reached through MLFLOW_TRACKING_URI."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", RUN_GROUP_ENV)}
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ[RUN_GROUP_ENV] = "test-train"
    yield uri
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", "train")
    return dataclasses.replace(data, images=data.images[:128], labels=data.labels[:128])


def tiny_model(**kwargs) -> EmbeddingModel:
    return EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 16, 32), stem_stride=1), **kwargs)


def make_objective(recipe: str, digits):
    # SimCLR's full recipe on 8x8 digits (crops down to 8% of 64 pixels) learns too slowly for a
    # seconds-long test; the SSL objectives train on crops + flips here.
    augment = build_augmentation("metric", 8, 1, digits.mean, digits.std)
    if recipe == "simclr":
        return SimCLRObjective(tiny_model(projection="simclr", projection_dim=16), augment, temperature=0.5)
    if recipe == "moco":
        # A BatchNorm projection head: behind MoCo v2's head (no BN) this random-init tiny net maps every
        # image to nearly the same direction (in-batch InfoNCE = log(128) at init) and needs far more
        # steps than a test has to leave that state.
        return MoCoObjective(tiny_model(projection="simclr", projection_dim=16), augment, queue_size=128)
    if recipe == "proxy_anchor":
        metric = build_augmentation("metric", 8, 1, digits.mean, digits.std)
        loss = losses.build("proxy_anchor", num_classes=10, embedding_dim=16)
        return ProxyAnchorObjective(tiny_model(embedding_dim=16), metric, loss, proxy_lr_multiplier=100.0)
    teacher = tiny_model(projection="simclr", projection_dim=16)
    augment = build_augmentation("simclr", 8, 1, digits.mean, digits.std)
    return TransferObjective(tiny_model(embedding_dim=8), teacher, augment, losses.build("relaxed_contrastive"),
                             teacher_embedding_kind="projection")


def fixed_batch_loss(objective, digits) -> float:
    """The loss on all 128 images under one fixed draw of augmentations (no update of any state).

    For MoCo the training loss depends on the queue, which training refills, so the measure is an
    independent symmetric InfoNCE with the batch's own keys as negatives (cross-entropy of q_i . k_j / T
    with target j = i), computed here by hand."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1234)
        if not isinstance(objective, MoCoObjective):
            return objective(digits.images, digits.labels, torch.arange(len(digits))).item()
        views = objective.two_views(digits.images)
        q0, q1 = torch.nn.functional.normalize(objective.encoder.projection(views), dim=1).chunk(2)
        k0, k1 = torch.nn.functional.normalize(objective.key_encoder.projection(views), dim=1).chunk(2)
        target = torch.arange(len(q0))
        ce = torch.nn.functional.cross_entropy
        return 0.5 * (ce(q0 @ k1.T / 0.2, target) + ce(q1 @ k0.T / 0.2, target)).item()


RECIPES = {  # recipe: (optimizer, lr, epochs, required ratio after/before); 2 steps per epoch at batch 64
    "simclr": ("sgd", 0.3, 10, 0.97),
    "moco": ("sgd", 0.3, 10, 0.97),
    "proxy_anchor": ("adamw", 1e-3, 10, 0.9),
    "transfer": ("sgd", 0.05, 10, 0.9),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_learns_checkpoints_and_is_tracked(recipe, digits, tracking_store, tmp_path):
    torch.manual_seed(0)
    objective = make_objective(recipe, digits)
    optimizer, lr, epochs, ratio = RECIPES[recipe]
    config = train_config(epochs=epochs, batch_size=64, optimizer=optimizer, lr=lr, weight_decay=0.0,
                          warmup_epochs=1.0, log_every_steps=5)  # 2 steps per epoch on 128 images
    objective.train()
    before = fixed_batch_loss(objective, digits)
    with start_run(f"test_{recipe}", params={"train": config.model_dump(mode="json"), "recipe": recipe},
                            system_metrics=False) as run:
        result = fit(objective, digits, config, checkpoint_dir=tmp_path / "ckpt", logger=run)
    after = fixed_batch_loss(objective, digits)
    assert after < ratio * before, (before, after)

    assert result.steps == 2 * epochs
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt")  # weights_only=True inside
    assert state["step"] == result.steps and state["epochs_completed"] == epochs
    assert set(state) >= {"objective", "optimizer", "scheduler", "scaler", "rng"}

    client = MlflowClient(tracking_store)
    runs = client.search_runs(
        [client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id],
        f"tags.`dvc.stage` = 'test_{recipe}'",
    )
    assert len(runs) == 1
    tracked = runs[0]
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["train.optimizer.lr"] == str(lr) and tracked.data.params["recipe"] == recipe
    assert tracked.data.params["train.batch_size"] == "64"
    history = client.get_metric_history(tracked.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, result.steps + 1))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([v for _, v in result.losses])
    assert tracked.data.tags["device"] == "cpu" and "git.commit" in tracked.data.tags
    assert tracked.data.tags[RUN_GROUP_TAG] == "test-train"
    parent = client.get_run(tracked.data.tags["mlflow.parentRunId"])
    assert parent.data.tags[PARENT_TAG] == "true"
    assert "loss_curve.png" in [a.path for a in client.list_artifacts(tracked.info.run_id)]


def test_moco_queue_and_key_encoder_follow_the_recipe(digits):
    torch.manual_seed(0)
    objective = make_objective("moco", digits)
    queue_before = objective.criterion.queue_state()["queue"].clone()
    key_before = [p.clone() for p in objective.key_encoder.parameters()]
    fit(objective, digits, train_config(epochs=1, batch_size=64, lr=0.1, log_every_steps=1))
    queue = objective.criterion.queue_state()
    # 2 steps x 128 keys (two views of 64 images) filled the 128-slot queue twice: pointer back at 0,
    # every slot holds a unit-norm key.
    assert int(queue["pointer"]) == 0 and not torch.equal(queue["queue"], queue_before)
    torch.testing.assert_close(queue["queue"].norm(dim=1), torch.ones(128))
    # After each step k = m k + (1 - m) q with m from 0.99 towards 1 (lightly's cosine schedule): the key
    # encoder moved, only a fraction of the way to the query encoder, and never by gradient.
    assert not any(p.requires_grad for p in objective.key_encoder.parameters())
    for key, start, query in zip(objective.key_encoder.parameters(), key_before, objective.encoder.parameters()):
        if not torch.equal(query, start):
            assert 0 < (key - start).abs().max() < (query - start).abs().max()


def test_proxy_anchor_warmup_trains_only_head_and_proxies_and_frozen_bn_keeps_statistics(digits):
    torch.manual_seed(0)
    metric = build_augmentation("metric", 8, 1, digits.mean, digits.std)
    loss = losses.build("proxy_anchor", num_classes=10, embedding_dim=16)
    objective = ProxyAnchorObjective(tiny_model(embedding_dim=16), metric, loss, proxy_lr_multiplier=100.0,
                                     warmup_epochs=1, freeze_batchnorm=True)
    conv_before = objective.encoder.backbone.stem[0].weight.clone()
    bn = objective.encoder.backbone.stem[1]
    bn_mean_before = bn.running_mean.clone()
    head_before = objective.encoder.head.linear.weight.clone()
    proxies_before = objective.criterion.proxies.detach().clone()
    fit(objective, digits, train_config(epochs=1, batch_size=64, optimizer="adamw", lr=1e-3))
    assert torch.equal(objective.encoder.backbone.stem[0].weight, conv_before)  # warm-up: backbone fixed
    assert not torch.equal(objective.encoder.head.linear.weight, head_before)
    assert not torch.equal(objective.criterion.proxies, proxies_before)
    assert torch.equal(bn.running_mean, bn_mean_before) and not bn.weight.requires_grad
    # AdamW's first step moves every weight by about lr (its update is lr * m/sqrt(v) = +-lr); the
    # proxies' group runs at 100x that.
    head_step = (objective.encoder.head.linear.weight - head_before).abs().max().item()
    proxy_step = (objective.criterion.proxies - proxies_before).abs().max().item()
    assert 50 < proxy_step / head_step < 150
    fit(objective, digits, train_config(epochs=2, batch_size=64, optimizer="adamw", lr=1e-3))
    assert not torch.equal(objective.encoder.backbone.stem[0].weight, conv_before)  # after warm-up it trains


def test_transfer_keeps_teacher_frozen_and_out_of_the_checkpoint(digits, tmp_path):
    torch.manual_seed(0)
    objective = make_objective("transfer", digits)
    teacher_before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    fit(objective, digits, train_config(epochs=1, batch_size=64, lr=0.05), checkpoint_dir=tmp_path)
    assert not objective.teacher.training
    for key, value in objective.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # BN statistics included: eval mode
    state = load_checkpoint(tmp_path / "last.pt")
    assert all(not key.startswith("teacher") for key in state["objective"])
    assert any(key.startswith("student.") for key in state["objective"])


class NaNAtCall(SimCLRObjective):
    """Returns NaN on the ``fail_at``-th call (1-based), a stand-in for a diverging run."""

    fail_at = 5
    calls = 0

    def forward(self, images, labels, indices):
        self.calls += 1
        loss = super().forward(images, labels, indices)
        return loss * math.nan if self.calls == self.fail_at else loss


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(digits, tmp_path):
    torch.manual_seed(0)
    augment = build_augmentation("simclr", 8, 1, digits.mean, digits.std)
    objective = NaNAtCall(tiny_model(projection="simclr", projection_dim=16), augment)
    config = train_config(epochs=5, batch_size=64, lr=0.1, checkpoint_every_steps=2, log_every_steps=3)
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        fit(objective, digits, config, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["objective"].values() if v.is_floating_point())


def test_warmup_cosine_schedule_hand_values():
    schedule = WarmupCosine(warmup_steps=2, total_steps=6, min_ratio=0.0)
    # warm-up: (s+1)/2 -> 0.5, 1; then cosine over 4 steps: 0.5*(1+cos(pi*k/4)), k=0..3
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [schedule(s) for s in range(6)] == pytest.approx(expected)
    assert WarmupCosine(0, 10, min_ratio=0.1)(10) == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "lamb"}, "name"),
    ({"amp": "fp8"}, "amp"),
    ({"epochs": 0}, "epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"lr": -1.0}, "lr"),
])
def test_bad_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_config(**kwargs)


def test_class_balanced_batches_must_split_into_classes(digits):
    with pytest.raises(ValueError, match="samples_per_class"):
        fit(make_objective("simclr", digits), digits, train_config(batch_size=10), samples_per_class=4)


def test_batch_larger_than_data_is_refused_before_training(digits):
    objective = make_objective("simclr", digits)
    with pytest.raises(ValueError, match="batch_size 256 exceeds"):
        fit(objective, digits, train_config(batch_size=256))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_path_with_amp_and_channels_last_trains_and_resumes(amp, digits, tmp_path):
    torch.manual_seed(0)
    objective = make_objective("transfer", digits)
    config = train_config(epochs=2, batch_size=64, lr=0.05, amp=amp, log_every_steps=1)
    result = fit(objective, digits, config, device="cuda", checkpoint_dir=tmp_path)
    assert all(math.isfinite(v) for _, v in result.losses)
    assert objective.student.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 4 and ("scale" in state["scaler"]) == (amp == "fp16")
    again = fit(objective, digits, config.model_copy(update={"epochs": 3}), device="cuda", checkpoint_dir=tmp_path)
    assert again.resumed_from_step == 4


@pytest.mark.slow  # torch.compile on 2 CPU cores: about 30 s
def test_train_compile_trains_the_compiled_backbone_to_finite_losses_with_plain_checkpoint_keys(tmp_path):
    """`train.compile`: the backbone is compiled in place, so the steps train, and the checkpoint's keys are
    those of an uncompiled run (a compiled run resumes an uncompiled one's checkpoint and back)."""
    import math

    from recipe_support import build, every_recipe_params, trained_teachers

    from pipeline.train.checkpoint import CHECKPOINT_NAME

    params = every_recipe_params(amp="off")
    trained = trained_teachers(params, "cpu")
    objective, train, spc = build("teacher-simclr", params, *trained[1:])
    plain_keys = set(objective.state_dict())
    result = fit(objective, trained[1], train.model_copy(update={"compile": True, "max_steps": 2}), device="cpu",
                 samples_per_class=spc, checkpoint_dir=tmp_path)
    assert all(math.isfinite(loss) for _, loss in result.losses) and len(result.losses) == 2
    assert set(load_checkpoint(tmp_path / CHECKPOINT_NAME)["objective"]) == plain_keys
