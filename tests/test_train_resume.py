"""Interruptions: a killed run resumes to bit-identical weights; SIGTERM checkpoints and exits 143."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A MoCo run (momentum encoder, queue, BatchNorm, augmentation RNG: the most state of any recipe) on
# 256 digits, batch 64: 4 steps per epoch, 3 epochs. `mode` decides what happens after a checkpoint.
TRAIN_SCRIPT = textwrap.dedent('''
    import dataclasses, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from pipeline.infra import start_run
    from pipeline.data import load_dataset
    from pipeline.data.augment import build_augmentation
    from pipeline.models.embedding_model import EmbeddingModel
    from pipeline.models.registry import build_backbone
    from train_support import train_config
    from pipeline.train.loop import fit
    from pipeline.train.moco_objective import MoCoObjective

    checkpoint_dir, mode, out = sys.argv[1:4]
    data = load_dataset("digits", "train")
    data = dataclasses.replace(data, images=data.images[:256], labels=data.labels[:256])
    torch.manual_seed(0)
    model = EmbeddingModel(build_backbone("small_resnet", 1, widths=(8, 16, 32), stem_stride=1),
                           projection="simclr", projection_dim=16)
    objective = MoCoObjective(model, build_augmentation("metric", 8, 1, data.mean, data.std), queue_size=96)
    config = train_config(epochs=3, batch_size=64, lr=0.1, warmup_epochs=0.5, log_every_steps=3)  # 4 steps per epoch

    def on_checkpoint(step, epochs_completed):
        if mode == "kill" and epochs_completed == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # the process dies; nothing gets to clean up
        if mode == "kill_later" and epochs_completed == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "sigterm" and step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between steps 4 and 5

    def train(logger=None):
        return fit(objective, data, config, checkpoint_dir=checkpoint_dir, logger=logger, on_checkpoint=on_checkpoint)

    if mode == "sigterm":
        with start_run("resume_sigterm", system_metrics=False) as run:
            train(run)
    else:
        result = train()
        torch.save({"state": objective.state_dict(), "resumed_from": result.resumed_from_step}, out)
''')


def run_training(tmp_path: Path, checkpoint_dir: Path, mode: str, env: dict | None = None):
    script = tmp_path / "train_digits.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / f"{mode}-{checkpoint_dir.name}.pt"
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), **(env or {})}
    completed = subprocess.run([sys.executable, str(script), str(checkpoint_dir), mode, str(out)],
                               cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    return completed, out


def flatten(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """State dicts may nest (the MoCo loss keeps its queue as extra state, a dict of tensors)."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_killed_run_resumes_to_bit_identical_weights(tmp_path):
    reference, reference_out = run_training(tmp_path, tmp_path / "uninterrupted", "plain")
    assert reference.returncode == 0, reference.stderr

    killed, _ = run_training(tmp_path, tmp_path / "interrupted", "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "interrupted" / "last.pt")["step"] == 4  # epoch 1 of 3 done

    resumed, resumed_out = run_training(tmp_path, tmp_path / "interrupted", "resume")
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(reference_out, weights_only=True)
    actual = torch.load(resumed_out, weights_only=True)
    assert expected["resumed_from"] == 0 and actual["resumed_from"] == 4
    expected_tensors, actual_tensors = flatten(expected["state"]), flatten(actual["state"])
    assert expected_tensors.keys() == actual_tensors.keys()
    assert any("queue" in key for key in expected_tensors)
    for key, value in expected_tensors.items():
        assert torch.equal(actual_tensors[key], value), key  # bit-identical on CPU, MoCo queue included
    assert not list((tmp_path / "interrupted").glob("*.tmp*"))  # no temporary file left behind


def test_a_damaged_last_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous_one(tmp_path):
    """Killed after epoch 2 (last.pt at step 8, previous.pt at step 4); then plausible floats over last.pt's
    tensor data, which torch still loads: the digest refuses it in one line naming it, it is set aside (not
    deleted), and the run resumes from step 4 to the uninterrupted run's weights, bit for bit."""
    from faults_support import overwrite_tensor_data

    reference, reference_out = run_training(tmp_path, tmp_path / "uninterrupted", "plain")
    assert reference.returncode == 0, reference.stderr
    checkpoints = tmp_path / "interrupted"
    killed, _ = run_training(tmp_path, checkpoints, "kill_later")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [load_checkpoint(checkpoints / name)["step"] for name in ("last.pt", "previous.pt")] == [8, 4]
    assert overwrite_tensor_data(checkpoints / "last.pt") > 0
    torch.load(checkpoints / "last.pt", weights_only=True)  # the damage parses

    resumed, resumed_out = run_training(tmp_path, checkpoints, "resume")
    assert resumed.returncode == 0, resumed.stderr
    named = [line for line in resumed.stderr.splitlines() if str(checkpoints / "last.pt") in line]
    assert len(named) == 1 and "is damaged" in named[0] and "resuming from" in named[0], resumed.stderr
    assert len(list(checkpoints.glob("last.pt.damaged-*"))) == 1
    expected = torch.load(reference_out, weights_only=True)
    actual = torch.load(resumed_out, weights_only=True)
    assert actual["resumed_from"] == 4
    resumed_tensors = flatten(actual["state"])
    for key, value in flatten(expected["state"]).items():
        assert torch.equal(resumed_tensors[key], value), key


def test_sigterm_saves_a_checkpoint_exits_143_and_marks_the_run_killed(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    completed, _ = run_training(tmp_path, tmp_path / "ckpt", "sigterm",
                                env={"MLFLOW_TRACKING_URI": uri, "PIPELINE_RUN_GROUP": "sigterm-test"})
    assert completed.returncode == 128 + signal.SIGTERM, completed.stderr
    # The signal arrived after step 4's checkpoint; the loop finished step 5, saved, and stopped.
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] == 5
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("embedding-transfer").experiment_id],
                              "tags.`dvc.stage` = 'resume_sigterm'")
    assert [r.info.status for r in runs] == ["KILLED"]
