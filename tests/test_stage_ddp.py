"""A training stage with `train.processes: 2` relaunches itself under torchrun (2 gloo processes on CPU):
one model, one metrics file, one MLflow run holding every step once, and SIGTERM to the stage
(as a cluster scheduler sends it) checkpoints and the re-run resumes under torchrun again.
"""
from __future__ import annotations

import signal

import psutil
import pytest
import torch

from faults_support import (
    FAULT_STEPS,
    PAUSE_ENV,
    Background,
    BIN,
    fault_params,
    make_repo,
    mlflow_runs,
    pause_marker,
    read_json,
    stage,
    stage_runs,
)

OVERRIDES = {name: {"processes": 2} for name in ("ddp", "ddp_terminated")}


@pytest.mark.slow  # minutes on 2 cores; run with -m slow (passed in the full run of this commit)
def test_teacher_stage_with_two_processes_trains_once_and_resumes_after_sigterm(tmp_path):
    env = make_repo(tmp_path, fault_params("ddp", "ddp_terminated", metric_grid=False, **OVERRIDES))

    done = stage(["stages.teacher", "ddp"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "outputs/teachers/ddp"
    metrics = read_json(out / "metrics.json")
    assert metrics["steps"] == FAULT_STEPS and metrics["resumed_from_step"] == 0
    assert torch.load(out / "model.pt", weights_only=True)  # a loadable model, written once by rank 0
    [run] = stage_runs(tmp_path, "teacher@ddp")  # rank 1 opened no run of its own
    assert run.info.status == "FINISHED" and run.data.params["teachers.ddp.train.processes"] == "2"
    client, _ = mlflow_runs(tmp_path)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, FAULT_STEPS + 1))  # each step logged once, by rank 0

    out = tmp_path / "outputs/teachers/ddp_terminated"
    running = Background([str(BIN / "python"), "-m", "stages.teacher", "ddp_terminated"], tmp_path,
                         {**env, PAUSE_ENV: "8:after"}, "ddp-terminated")
    running.wait_for(pause_marker(8, "after"), timeout=300)
    # The stage process was replaced by torchrun (exec), so the signal reaches torchrun, which forwards it.
    assert "torch.distributed.run" in " ".join(psutil.Process(running.process.pid).cmdline())
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=120) != 0
    assert "interrupted by signal 15; checkpoint saved" in running.stderr()
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["step"] == 9
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()

    again = stage(["stages.teacher", "ddp_terminated"], tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_json(out / "metrics.json")["resumed_from_step"] == 9
    assert sorted(r.info.status for r in stage_runs(tmp_path, "teacher@ddp_terminated")) == ["FINISHED", "KILLED"]
