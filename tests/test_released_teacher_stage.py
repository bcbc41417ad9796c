"""Released teachers end to end: a checkpoint written here with the official key names (Proxy-Anchor's
``net/resnet.py`` module, random weights) goes through the real stage commands into this project's
``outputs/teachers/NAME/model.pt``, which embeds as the official forward does and is scored like any
teacher; a missing or mismatched file is refused in one line before any compute; under ``dvc repro`` a
replaced file re-runs the teacher stage."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from fake_archives import build_cub
from faults_support import (BIN, assert_one_line_refusal, in_fork, make_repo, read_json, run_checked, stage,
                            stage_forked, warm_up)
from test_released_teachers import OfficialResnet, randomise
from pipeline.models.loading import load_saved_model
from pipeline.models.released import checkpoint_fingerprint

NAME = "source"
CHECKPOINT = "weights/cub_resnet18_128dim_Proxy_Anchor_ckpt.pth"


def released_params() -> dict:
    """Fake CUB at 32 px, a ResNet-18 Proxy-Anchor teacher loaded from CHECKPOINT, a cheap evaluation."""
    train = {"epochs": 1, "max_steps": 1, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 0.001}}
    return {
        "seed": 0, "seeds": [0],
        "data": {"name": "cub200", "root": "data", "image_size": 32, "load_size": 36, "workers": 0},
        "teachers": {NAME: {"method": "proxy_anchor", "model": {"backbone": "resnet18", "embedding_dim": 128},
                            "augmentation": "metric", "transfer_embedding": "embedding", "train": train}},
        "released_teachers": {NAME: CHECKPOINT},
        "students": {"small": {"model": {"backbone": "small_resnet", "widths": [4, 8], "embedding_dim": 8},
                               "role": "compression"}},
        "losses": {"relaxed": {"name": "relaxed_contrastive"}},
        "transfer": {"self_supervised": {"grid": {"teacher": [], "student": [], "loss": []}},
                     "self_taught": {"grid": {"teacher": [], "student": [], "loss": []}},
                     "metric_learning": {"augmentation": "metric", "views": 2, "sampler": None, "train": train,
                                         "grid": {"teacher": [NAME], "student": ["small"], "loss": ["relaxed"]}}},
        "classification": {"teachers": {}, "grid": {"teacher": [], "student": [], "method": []}},
        "evaluation": {"batch_size": 64, "tsne_points": 0, "probe": {"enabled": False}, "knn": {"enabled": False},
                       "retrieval": {"ks": [1, 2]}},
        "mlflow": {"experiment": "pipeline-test"},
    }


def write_official(path: Path, seed: int) -> OfficialResnet:
    """An official-layout ResNet-18 source (128-d) with random weights, saved as the official code saves it."""
    torch.manual_seed(seed)
    official = randomise(OfficialResnet(18, 128), torch.randn(4, 3, 32, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": official.state_dict()}, path)
    return official


def assert_embeds_like(model_path: Path, official: OfficialResnet) -> None:
    model, spec = load_saved_model(model_path)
    assert (spec.backbone, spec.embedding_dim, spec.normalize_embedding) == ("resnet18", 128, True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), official(x)[1], atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("released")
    env = make_repo(root, released_params(), with_dvc=False)
    build_cub(root / "data")
    return root, env


def simclr_teacher() -> dict:
    train = {"epochs": 1, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 0.001}}
    return {"method": "simclr", "model": {"backbone": "resnet18"}, "augmentation": "simclr", "train": train}


@pytest.mark.parametrize("entry, message", [
    ({"other": "x.pth"}, "released_teachers.other: 'other' is not in teachers (declared: source, ssl)"),
    ({"ssl": "x.pth"}, "released_teachers.ssl: the released sources are Proxy-Anchor models, so teachers.ssl needs "
                       "method proxy_anchor"),
    ({NAME: ""}, f"released_teachers.{NAME}: the released sources are Proxy-Anchor models, so teachers.{NAME} "
                 "needs method proxy_anchor and the entry a file path (got method 'proxy_anchor', path '')"),
])
def test_the_schema_refuses_a_released_entry_that_names_no_proxy_anchor_teacher(entry, message):
    from pipeline.config import ConfigError, validate_params

    raw = released_params()
    raw["teachers"]["ssl"] = simclr_teacher()
    raw["released_teachers"] = entry
    with pytest.raises(ConfigError) as info:
        validate_params(raw)
    assert str(info.value).startswith(f"params.yaml: {message}")


BAD_FILES = {"missing": "does not exist", "renamed": "unexpected key 'model.layer1.0.conv1.wieght'",
             "wrong_dim": "key 'model.embedding.weight' has shape [64, 512], expected [128, 512]",
             "not_torch": "cannot be read as a checkpoint (UnpicklingError"}


def write_bad_files(folder: Path) -> None:
    """One file per refusal case but "missing": a renamed key, a 64-row embedding, an HTML page."""
    state = write_official(folder / "renamed.pth", seed=1).state_dict()
    torch.save({"model_state_dict": {**state, "model.embedding.weight": state["model.embedding.weight"][:64]}},
               folder / "wrong_dim.pth")
    state["model.layer1.0.conv1.wieght"] = state.pop("model.layer1.0.conv1.weight")
    torch.save({"model_state_dict": state}, folder / "renamed.pth")
    (folder / "not_torch.pth").write_bytes(b"<html>Google Drive can't scan this file for viruses</html>")


@pytest.fixture(scope="module")
def refusing_repos(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """A repository per case, its released_teachers entry naming that case's file."""
    weights = tmp_path_factory.mktemp("bad_weights")
    in_fork(lambda: write_bad_files(weights))  # torch work off this process, which forks the stages below
    warm_up()
    repos = {}
    for how in BAD_FILES:
        root = tmp_path_factory.mktemp(how)
        params = released_params()
        params["released_teachers"][NAME] = f"weights/{how}.pth"
        repos[how] = root, make_repo(root, params, with_dvc=False)
        (root / "weights").symlink_to(weights)
    return repos


@pytest.mark.parametrize("how", list(BAD_FILES))
def test_a_missing_or_mismatched_file_is_refused_in_one_line_naming_the_key(refusing_repos, how):
    """Both commands refuse it before any output or MLflow run; the stage command itself (a real process,
    not a fork) once, to see that both paths agree."""
    root, env = refusing_repos[how]
    for args in (["stages.teacher", NAME, "--fingerprint"], ["stages.teacher", NAME]):
        run = stage if (how, args[-1]) == ("renamed", NAME) else stage_forked
        assert_one_line_refusal(run(args, root, env), f"error: released_teachers.{NAME}: ", f"weights/{how}.pth",
                                BAD_FILES[how])
    assert not (root / "outputs").exists() and not (root / "mlflow.db").exists()


def test_the_stage_saves_the_released_file_as_a_teacher_that_embeds_like_the_official_forward(repo):
    root, env = repo
    official = write_official(root / CHECKPOINT, seed=0)
    fingerprinted = stage(["stages.teacher", NAME, "--fingerprint"], root, env)
    assert fingerprinted.returncode == 0, fingerprinted.stderr[-3000:]
    record = read_json(root / "outputs" / "data" / "released" / f"{NAME}.json")
    assert record == {"teacher": NAME, "checkpoint": CHECKPOINT, "backbone": "resnet18", "embedding_dim": 128,
                      **checkpoint_fingerprint(root / CHECKPOINT)}
    assert not (root / "outputs" / "teachers").exists()  # the check trains and saves nothing

    result = stage(["stages.teacher", NAME], root, env)
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = root / "outputs" / "teachers" / NAME
    assert_embeds_like(teacher / "model.pt", official)
    assert read_json(teacher / "loss.json") == []
    # Nothing trained; the label gap of what it hands its students (every teacher stage writes it) is there.
    trained = read_json(teacher / "metrics.json")
    assert trained.pop("steps") == 0
    assert set(trained) == {"label_gap", "label_gap_sigma", "label_w_same", "label_w_other", "cosine_same",
                            "cosine_other"}
    assert 0 <= trained["label_w_other"] <= trained["label_w_same"] <= 1 and trained["label_gap_sigma"] == 1.0
    assert trained["label_gap"] == pytest.approx(trained["label_w_same"] - trained["label_w_other"])
    scores = read_json(root / "outputs" / "eval" / f"teacher-{NAME}" / "metrics.json")
    assert 0.0 <= scores["recall@1"] <= 1.0 and scores["embedding_dim"] == 128


@pytest.mark.slow  # about a minute on 2 shared cores (two dvc repro runs of four stages)
def test_dvc_repro_reruns_the_teacher_when_the_released_file_is_replaced(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    env = make_repo(root, released_params())
    build_cub(root / "data")
    dvc = str(BIN / "dvc")
    first = write_official(root / CHECKPOINT, seed=0)
    run_checked([dvc, "repro", f"teacher@{NAME}"], root, env)
    assert_embeds_like(root / "outputs" / "teachers" / NAME / "model.pt", first)
    status = run_checked([dvc, "status", "--with-deps", f"teacher@{NAME}"], root, env).stdout
    assert "up to date" in status, status

    second = write_official(root / CHECKPOINT, seed=2)
    status = run_checked([dvc, "status", "--with-deps", f"teacher@{NAME}"], root, env).stdout
    assert f"released_teacher@{NAME}" in status and "modified" in status and CHECKPOINT in status, status
    rerun = run_checked([dvc, "repro", f"teacher@{NAME}"], root, env).stdout
    assert f"Running stage 'released_teacher@{NAME}'" in rerun and f"Running stage 'teacher@{NAME}'" in rerun
    assert_embeds_like(root / "outputs" / "teachers" / NAME / "model.pt", second)

    (root / CHECKPOINT).unlink()
    missing = subprocess.run([dvc, "repro", f"teacher@{NAME}"], cwd=root, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and CHECKPOINT in missing.stderr + missing.stdout
