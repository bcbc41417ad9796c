"""Paper-scale profiles are validated without being trained: DVC builds their DAG, and one step of
each recipe in them runs with tiny overrides on fake data laid out like the real dataset."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fake_archives import build_cars, build_cub, build_sop
from pipeline.config import validate_params
from pipeline.data import ImageSet
from pipeline.data.loading import load_images
from pipeline.profiles import names, profile_params, render
from pipeline.eval.protocol import evaluate
from pipeline.train import classifier_recipes, recipes
from pipeline.train.loop import fit
from pipeline.setting import TRANSFER_SETTINGS, Setting
from recipe_support import replica

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def profile(name: str) -> dict:
    """Profile `name` as `python -m pipeline.profiles NAME` composes it over the default params.yaml."""
    return profile_params(name)


@pytest.mark.parametrize("name", names())
def test_dvc_builds_the_profile_dag(name, tmp_path):
    raw = profile(name)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(render(name, raw))  # what the command writes
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True, env=env)
    listed = subprocess.run([str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    stages = set(listed.stdout.split())
    expected = {"prepare", "report"} | {f"teacher@{t}" for t in raw["teachers"]}
    grids = [(raw["transfer"][key]["grid"], "loss", prefix)
             for key, prefix in (("self_supervised", "transfer"), ("metric_learning", "metric_transfer"))]
    grids.append((raw["classification"]["grid"], "method", "classifier_student"))
    for grid, column, prefix in grids:  # every student once per seed: DVC joins the matrix item with '-'
        for t in grid.get("teacher", []):
            for s in grid["student"]:
                for loss in grid[column]:
                    expected.update(f"{prefix}@{t}-{s}-{loss}-{seed}" for seed in raw["seeds"])
    assert expected <= stages
    dag = subprocess.run([str(BIN / "dvc"), "dag", "--md"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert dag.returncode == 0, dag.stderr


METRIC_PROFILES = ("cub200", "cub200_compression", "cars196", "cars196_compression", "sop", "sop_compression")


@pytest.mark.parametrize("name", METRIC_PROFILES)
def test_dvc_builds_the_released_teacher_variant_dag(name, tmp_path):
    """The README's released-source command sets released_teachers.TEACHER: a released_teacher stage per
    file appears, every teacher stage depends on its record, and the rest of the DAG is the profile's."""
    raw = profile(name)
    (teacher,) = raw["transfer"]["metric_learning"]["grid"]["teacher"]
    raw["released_teachers"] = {teacher: f"data/weights/{teacher}_source.pth"}
    validate_params(raw)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True, env=env)
    dag = subprocess.run([str(BIN / "dvc"), "dag", "--dot", f"teacher@{teacher}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert dag.returncode == 0, dag.stderr
    assert f'"released_teacher@{teacher}" -> "teacher@{teacher}"' in dag.stdout, dag.stdout


def shrink(raw: dict, data_root: Path | None) -> dict:
    """Tiny overrides: small images, one step, small batches, no pretrained weights file, cheap evaluation."""
    raw = copy.deepcopy(raw)
    raw["data"].update(image_size=32, download=False, workers=0)
    if raw["data"].get("load_size"):
        raw["data"]["load_size"] = 36
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    for section in ("teachers", "students"):
        for entry in raw[section].values():
            entry["model"].pop("weights_path", None)
    sections = [s for s in raw["transfer"].values() if "train" in s]
    for entry in [*(t["train"] for t in raw["teachers"].values()), *(s["train"] for s in sections)]:
        entry.update(epochs=1, max_steps=1, batch_size=8)
        entry["optimizer"]["warmup_epochs"] = 0
    for teacher in raw["teachers"].values():
        teacher.get("moco", {}).update(queue_size=16)
    for section in sections:
        if section.get("sampler"):
            section["sampler"] = {"classes_per_batch": 4, "samples_per_class": 2}
    for loss in raw["losses"].values():
        if loss["name"] == "crd":  # the fake archives hold a few hundred images
            loss.setdefault("params", {})["num_negatives"] = 16
    probe = raw.get("evaluation", {}).get("probe", {}).get("enabled", True)
    raw["evaluation"] = {"batch_size": 64, "tsne_points": 0, "probe": {"enabled": probe},
                         "knn": {"enabled": True, "k": 5}, "retrieval": {"ks": [1, 2]}}
    return raw


def fake_cifar10(split: str, root=None, download: bool = False) -> ImageSet:
    """CIFAR-10's layout (uint8 3x32x32, 10 classes) without its pickled batches."""
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    count = 200 if split == "train" else 40
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet("cifar10", images, torch.arange(count) % 10, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def one_step_of_every_recipe(params, tmp_path: Path, every_loss: bool = False) -> dict:
    """Train each teacher and each grid student for one step and evaluate one student: the first student with
    every loss of the grid when `every_loss` (the others, whose code path only their widths change, and
    every student otherwise, with the first loss)."""
    results = {}
    for setting in TRANSFER_SETTINGS:
        section = params.transfer.of(setting)
        grid = section.grid
        if not grid.teacher:
            continue
        teacher_name = grid.teacher[0]
        teacher_cfg = params.teachers[teacher_name]
        images = load_images(params.data, "train", teacher_cfg.train_classes)
        objective, _ = recipes.teacher_objective(params, teacher_name, images)
        fit(objective, images, teacher_cfg.train, seed=params.seed, device="cpu",
            samples_per_class=recipes.teacher_sampler(params, teacher_name), checkpoint_dir=tmp_path / teacher_name)
        teacher = objective.model.eval()
        sampler = getattr(section, "sampler", None)
        for student in grid.student:
            for loss in grid.loss if every_loss and student == grid.student[0] else grid.loss[:1]:
                trained_on = setting.trained_on(images)  # as the stage hands them over
                student_objective, _ = recipes.transfer_objective(
                    params, replica(params, teacher_name, student, loss, setting), teacher, trained_on)
                result = fit(student_objective, trained_on, section.train, seed=params.seed, device="cpu",
                             samples_per_class=sampler.samples_per_class if sampler else None,
                             checkpoint_dir=tmp_path / f"{teacher_name}-{student}-{loss}")
                results[f"{teacher_name}-{student}-{loss}"] = result.losses
        test = load_images(params.data, "test")
        metrics, _ = evaluate(student_objective.model, images, test, params.evaluation, params.data.image_size, params.seed)
        results["metrics"] = metrics
    return results


BUILDERS = {"cub200": build_cub, "cars196": build_cars, "sop": build_sop}


@pytest.mark.parametrize("name", METRIC_PROFILES)
def test_metric_learning_profile_runs_one_step_on_a_fake_archive(name, tmp_path):
    """The CUB profiles run every method of the grid (on their first student) and every student; Cars and SOP
    (the same code after loading) the first student with the first method."""
    dataset = name.removesuffix("_compression")
    BUILDERS[dataset](tmp_path / "data")
    raw = shrink(profile(name), tmp_path / "data")
    grid = raw["transfer"]["metric_learning"]["grid"]
    every = dataset == "cub200"
    if not every:
        grid["student"] = grid["student"][:1]
    params = validate_params(raw)
    results = one_step_of_every_recipe(params, tmp_path, every_loss=every)
    students = [k for k in results if k != "metrics"]
    assert len(students) == len(grid["student"]) + (len(grid["loss"]) - 1 if every else 0)
    assert all(len(losses) == 1 and torch.isfinite(torch.tensor(losses[0][1])) for losses in
               (results[k] for k in students))
    assert 0.0 <= results["metrics"]["recall@1"] <= 1.0


@pytest.mark.parametrize("name", ["cub200_stml", "cars196_stml", "sop_stml"])
def test_self_taught_profile_runs_one_step_on_a_fake_archive(name, tmp_path):
    """The paper-scale STML profiles: the SimCLR model of the unlabelled images and one step of every method of
    the self-taught grid (STML with its wide head, momentum teacher and nearest-neighbour batches)."""
    BUILDERS[name.removesuffix("_stml")](tmp_path / "data")
    raw = shrink(profile(name), tmp_path / "data")
    raw["transfer"]["self_taught"]["train"]["batch_size"] = 10  # whole groups of 5 (CUB, Cars) or 2 (SOP)
    params = validate_params(raw)
    results = one_step_of_every_recipe(params, tmp_path, every_loss=True)
    assert {k for k in results if k != "metrics"} == {f"simclr_unlabelled-same-{loss}" for loss in
                                                      ("stml", "own_objective", "relaxed")}
    assert all(len(results[k]) == 1 and torch.isfinite(torch.tensor(results[k][0][1])) for k in results if k != "metrics")
    assert 0.0 <= results["metrics"]["recall@1"] <= 1.0


def test_released_teacher_variant_runs_one_step_from_an_official_checkpoint(tmp_path):
    """The README's released-source CUB run: the teacher comes from a file in the official BN-Inception
    layout (random weights here) instead of training, and a student trains one step against it."""
    from test_released_teachers import OfficialBNInception, caffe_bgr, randomise

    from pipeline.models.released import load_released

    build_cub(tmp_path / "data")
    torch.manual_seed(0)
    official = randomise(OfficialBNInception(512), caffe_bgr(torch.randn(2, 3, 32, 32)))
    torch.save({"model_state_dict": official.state_dict()}, tmp_path / "cub_bn_inception_512dim.pth")
    raw = shrink(profile("cub200"), tmp_path / "data")
    raw["released_teachers"] = {"bn_inception": str(tmp_path / "cub_bn_inception_512dim.pth")}
    params = validate_params(raw)
    teacher, _ = load_released("bn_inception", params.released_teachers["bn_inception"],
                               params.teachers["bn_inception"])
    images = load_images(params.data, "train")
    section = params.transfer.metric_learning
    objective, _ = recipes.transfer_objective(params, replica(params, "bn_inception", "same", "relaxed"), teacher, images)
    result = fit(objective, images, section.train, seed=params.seed, device="cpu",
                 samples_per_class=section.sampler.samples_per_class, checkpoint_dir=tmp_path / "student")
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[0][1]))


def test_cifar10_profile_runs_one_step_on_fake_cifar(tmp_path, monkeypatch):
    from pipeline import data

    monkeypatch.setitem(data.IN_MEMORY, "cifar10", fake_cifar10)
    raw = shrink(profile("cifar10_ssl"), None)
    raw["transfer"]["self_supervised"]["grid"]["student"] = ["small"]  # the ResNet-18 self-transfer is the same code path
    params = validate_params(raw)
    results = one_step_of_every_recipe(params, tmp_path)
    assert f"simclr-small-{params.transfer.self_supervised.grid.loss[0]}" in results and "probe_top1" in results["metrics"]


def fake_cifar100(split: str, root=None, download: bool = False) -> ImageSet:
    """CIFAR-100's layout (uint8 3x32x32, 100 classes) without its pickled batches."""
    generator = torch.Generator().manual_seed(2 if split == "train" else 3)
    count = 200 if split == "train" else 100
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet("cifar100", images, torch.arange(count) % 100, 100, (0.51, 0.49, 0.44), (0.27, 0.26, 0.28))


def test_cifar100_profile_runs_one_step_of_each_classifier_method(tmp_path, monkeypatch):
    from pipeline import data
    from pipeline.train.classification import classification_metrics

    monkeypatch.setitem(data.IN_MEMORY, "cifar100", fake_cifar100)
    raw = profile("cifar100_kd")
    for entry in [*(t["train"] for t in raw["classification"]["teachers"].values()), raw["classification"]["train"]]:
        entry.update(epochs=1, max_steps=1, batch_size=16)
    raw["classification"]["methods"]["crd"]["params"]["num_negatives"] = 32
    params = validate_params(raw)
    images = load_images(params.data, "train")
    teacher_name = params.classification.grid.teacher[0]
    objective, _ = classifier_recipes.classifier_teacher_objective(params, teacher_name, images)
    teacher_train = params.classification.teachers[teacher_name].train
    assert teacher_train.optimizer.milestones_epochs == (150, 180, 210)  # RepDistiller's schedule
    fit(objective, images, teacher_train, device="cpu")
    teacher = objective.model.eval()
    for method in params.classification.grid.method:
        chosen = replica(params, teacher_name, params.classification.grid.student[0], method, Setting.CLASSIFICATION)
        student, _ = classifier_recipes.classifier_student_objective(params, chosen, teacher, images)
        result = fit(student, images, params.classification.train, device="cpu")
        assert torch.isfinite(torch.tensor(result.losses[0][1])), method
    top = classification_metrics(student.model, images.images[:32], images.labels[:32])
    assert 0.0 <= top["top1"] <= top["top5"] <= 1.0
