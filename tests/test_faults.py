"""Fault injection on the real stage commands: SIGKILL, SIGTERM, a non-finite loss, concurrent runs on
one SQLite store, an unreachable MLflow server.

Every scenario trains an identical SimCLR teacher under its own name (own output folder) in one
temporary git + DVC repository, so each interrupted-then-resumed run is compared with the uninterrupted
`ref` run bit for bit: model.pt weights, step count and the final-loss metric.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from faults_support import (
    BIN,
    PHASE_ENV,
    FAULT_STEPS,
    PAUSE_ENV,
    STEPS_PER_EPOCH,
    Background,
    assert_same_weights,
    error_lines,
    fault_params,
    make_repo,
    mlflow_runs,
    pause_marker,
    read_json,
    run_checked,
    stage,
    stage_runs,
    start_stage,
)

pytestmark = pytest.mark.faults

SCENARIOS = ("ref", "killed_in_epoch", "killed_in_write", "killed_at_epoch_end", "terminated", "exploding",
             "concurrent_a", "concurrent_b")
# AdamW at lr 1e30 turns the weights to ~1e30 after step 1; step 2's loss is NaN. A checkpoint every step
# makes step 1's the last good one.
OVERRIDES = {"exploding": {"checkpoint_every_steps": 1, "optimizer": {"lr": 1e30}}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    env = make_repo(root, fault_params(*SCENARIOS, **OVERRIDES))
    return root, env


@pytest.fixture(scope="module")
def reference(repo):
    """The uninterrupted run every resumed one must equal."""
    root, env = repo
    done = stage(["stages.teacher", "ref"], root, env)
    assert done.returncode == 0, done.stderr
    out = root / "outputs/teachers/ref"
    metrics = read_json(out / "metrics.json")
    assert metrics["steps"] == FAULT_STEPS and metrics["resumed_from_step"] == 0
    return out


def teacher_out(root: Path, name: str) -> Path:
    return root / "outputs" / "teachers" / name


def checkpoint_step(folder: Path) -> int:
    return int(torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["step"])


def assert_resumed_equal(root: Path, env: dict, name: str, reference: Path, expected_resume_step: int) -> None:
    """Re-run the stage: it resumes from the expected step and ends where the uninterrupted run ended."""
    out = teacher_out(root, name)
    earlier_seconds = float(torch.load(out / "checkpoints" / "last.pt", weights_only=True)["train_seconds"])
    again = stage(["stages.teacher", name], root, env)
    assert again.returncode == 0, again.stderr
    metrics, expected = read_json(out / "metrics.json"), read_json(reference / "metrics.json")
    assert metrics["resumed_from_step"] == expected_resume_step
    # The summary describes the whole training: the interrupted session's seconds are counted too.
    batch_size = yaml.safe_load((root / "params.yaml").read_text())["teachers"][name]["train"]["batch_size"]
    assert earlier_seconds > 0 and metrics["train_seconds"] > earlier_seconds
    assert metrics["images_per_second"] == pytest.approx(FAULT_STEPS * batch_size / metrics["train_seconds"])
    assert metrics["steps"] == expected["steps"] == FAULT_STEPS
    # final_loss is the mean of the last 10 steps' losses; at the epoch-end kill 5 of them precede the resume.
    assert metrics["final_loss"] == expected["final_loss"]
    assert_same_weights(out / "model.pt", reference / "model.pt")
    assert checkpoint_step(out) == FAULT_STEPS
    assert not list((out / "checkpoints").glob("*.tmp*")), "a stale temporary checkpoint was left behind"


@pytest.mark.parametrize("name, pause, resume_step", [
    # During an epoch, after the step-8 checkpoint is committed (the kill lands before step 9 runs).
    ("killed_in_epoch", "8:after", 8),
    # Between writing the step-8 temporary file and renaming it: step 4's checkpoint must be the one resumed.
    ("killed_in_write", "8", 4),
    # Right after the end-of-epoch checkpoint: the resumed run starts epoch 2 at its first batch.
    ("killed_at_epoch_end", f"{STEPS_PER_EPOCH}:after", STEPS_PER_EPOCH),
])
def test_sigkill_then_rerun_resumes_to_the_uninterrupted_result(repo, reference, name, pause, resume_step):
    root, env = repo
    out = teacher_out(root, name)
    phase = "after" if pause.endswith(":after") else "before"
    running = start_stage(["stages.teacher", name], root, env, name, **{PAUSE_ENV: pause})
    running.wait_for(pause_marker(int(pause.split(":")[0]), phase))
    assert running.kill() == -signal.SIGKILL
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    leftovers = list((out / "checkpoints").glob("last.pt.tmp*"))
    if phase == "before":
        # The kill landed mid-save: the complete step-8 state sits in a temporary file. Tear it in half,
        # as a kill during torch.save would; the resumed run must not read it either way.
        assert checkpoint_step(out) == resume_step and len(leftovers) == 1
        leftovers[0].write_bytes(leftovers[0].read_bytes()[: leftovers[0].stat().st_size // 2])
    else:
        assert checkpoint_step(out) == resume_step and not leftovers
    [killed] = stage_runs(root, f"teacher@{name}")
    assert killed.info.status == "RUNNING"  # nothing ran to close it
    assert_resumed_equal(root, env, name, reference, resume_step)
    # The resumed run found the killed one's process gone and closed it.
    assert sorted(r.info.status for r in stage_runs(root, f"teacher@{name}")) == ["FINISHED", "KILLED"]


@pytest.mark.slow  # minutes on 2 cores; run with -m slow (passed in the full run of this commit)
def test_sigterm_saves_exits_143_and_dvc_does_not_record_the_stage(repo, reference):
    """SIGTERM to the stage under `dvc repro`: it checkpoints the next step and exits 143; DVC fails the
    stage, keeps it out of dvc.lock and shows it as changed; the next `dvc repro` resumes it."""
    root, env = repo
    out = teacher_out(root, "terminated")
    dvc = Background([str(BIN / "dvc"), "repro", "teacher@terminated"], root, {**env, PAUSE_ENV: "8:after"},
                     "dvc-terminated")
    dvc.wait_for(pause_marker(8, "after"), timeout=300)
    # The Python process itself, not the `$SHELL -c` wrapper DVC starts it under: bash execs a lone
    # command, but /bin/sh (dash, DVC's choice when SHELL is unset, as in CI) stays as its parent.
    stage_process = next(p for p in psutil.Process(dvc.process.pid).children(recursive=True)
                         if p.cmdline()[1:3] == ["-m", "stages.teacher"])
    stage_process.send_signal(signal.SIGTERM)  # arrives during the pause; the loop notices after step 9
    assert dvc.wait(timeout=120) != 0
    log = dvc.stderr()
    assert "interrupted by signal 15; checkpoint saved" in log and "exited with 143" in log, log
    assert checkpoint_step(out) == 9
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()

    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else {}
    assert "teacher@terminated" not in lock.get("stages", {})
    status = json.loads(run_checked([str(BIN / "dvc"), "status", "--json", "teacher@terminated"], root, env).stdout)
    assert "teacher@terminated" in status
    [killed] = stage_runs(root, "teacher@terminated")
    assert killed.info.status == "KILLED"

    run_checked([str(BIN / "dvc"), "repro", "teacher@terminated"], root, env)
    assert read_json(out / "metrics.json")["resumed_from_step"] == 9
    assert_same_weights(out / "model.pt", reference / "model.pt")
    assert "teacher@terminated" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {r.info.status for r in stage_runs(root, "teacher@terminated")} == {"KILLED", "FINISHED"}


def test_non_finite_loss_names_the_step_keeps_the_last_good_checkpoint_and_fails_the_run(repo):
    root, env = repo
    out = teacher_out(root, "exploding")
    done = stage(["stages.teacher", "exploding"], root, env)
    assert done.returncode == 1
    [line] = error_lines(done.stderr)[-1:]
    assert "non-finite loss" in line and "at step 2" in line and "last.pt" in line
    assert checkpoint_step(out) == 1  # step 1's loss was finite; nothing was saved at the NaN step
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    [run] = stage_runs(root, "teacher@exploding")
    assert run.info.status == "FAILED"


def test_concurrent_stages_on_one_sqlite_store_record_every_run_completely(repo):
    """Two training stages writing to the default mlflow.db at the same time: both FINISHED, every step's
    loss recorded, no 'database is locked' anywhere. (`dvc queue start -j 2` is the slow test below.)"""
    root, env = repo
    runs = [start_stage(["stages.teacher", name], root, env, name) for name in ("concurrent_a", "concurrent_b")]
    assert [r.wait() for r in runs] == [0, 0], [r.stderr()[-2000:] for r in runs]
    assert not any("locked" in r.stderr().lower() for r in runs)
    client, _ = mlflow_runs(root)
    for name in ("concurrent_a", "concurrent_b"):
        [run] = stage_runs(root, f"teacher@{name}")
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(1, FAULT_STEPS + 1))
        assert run.data.params[f"teachers.{name}.train.max_steps"] == str(FAULT_STEPS)


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_mlflow_server_fails_at_stage_start_before_training(repo):
    root, env = repo
    uri = f"http://127.0.0.1:{closed_port()}"
    done = stage(["stages.teacher", "ref"], root, {**env, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and uri in lines[0] and "unreachable" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # minutes on 2 cores; run with -m slow (passed in the full run of this commit)
def test_sigkill_during_evaluation_leaves_no_metrics_and_the_rerun_equals_an_uninterrupted_one(repo, reference):
    """The training stage scores its model after saving it: killed there, it leaves no evaluation metrics,
    and its re-run (resuming the finished training) scores the same model to the same numbers."""
    root, env = repo
    out = root / "outputs/eval/teacher-ref"
    args = ["stages.teacher", "ref"]
    done = stage(args, root, env)
    assert done.returncode == 0, done.stderr
    uninterrupted = read_json(out / "metrics.json")
    for name in ("metrics.json", "recall.json"):
        (out / name).unlink()
    for figure in (out / "figures").iterdir():
        figure.unlink()
    (out / "figures").rmdir()

    running = start_stage(args, root, env, "evaluate-ref")
    deadline = time.monotonic() + 300
    while not (out / "figures").exists():  # created once the metrics are computed, before they are written
        assert running.process.poll() is None, running.stderr()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running.kill()
    assert not (out / "metrics.json").exists() and not (out / "recall.json").exists()
    again = stage(args, root, env)
    assert again.returncode == 0, again.stderr
    timing = {"ms_per_image"}  # wall-clock speed, the one entry expected to vary between runs
    rerun = read_json(out / "metrics.json")
    assert rerun.keys() == uninterrupted.keys() and timing <= rerun.keys()
    assert {k: v for k, v in rerun.items() if k not in timing} == {
        k: v for k, v in uninterrupted.items() if k not in timing}


def test_tracking_store_of_a_queued_experiment_copy_is_the_repository_database(tmp_path, monkeypatch):
    """A stage whose DVC_ROOT is DVC's temporary experiment copy still writes to <repo>/mlflow.db."""
    from pipeline.infra.store import repository_root, tracking_uri

    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp1a2b3c"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    assert repository_root() == (tmp_path / "repo").resolve()
    assert tracking_uri().startswith(f"sqlite:///{(tmp_path / 'repo').resolve() / 'mlflow.db'}?")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert repository_root() == (tmp_path / "repo").resolve()


@pytest.mark.slow
def test_two_queued_experiments_run_concurrently_and_both_are_recorded(tmp_path):
    """`dvc exp run --queue` twice and `dvc queue start -j 2` (about 100 s on 2 busy cores, hence slow):
    both experiments' runs land FINISHED in the repository's mlflow.db with their full loss history."""
    env = make_repo(tmp_path, fault_params("ref", metric_grid=False))
    dvc = str(BIN / "dvc")
    for seed in (1, 2):  # the project's whole dvc.yaml, reproduced up to its teacher stages
        run_checked([dvc, "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"seed={seed}", "teacher"], tmp_path, env)
    run_checked([dvc, "queue", "start", "-j", "2"], tmp_path, env)
    deadline = time.monotonic() + 900
    while True:
        status = run_checked([dvc, "queue", "status"], tmp_path, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    logs = "".join(run_checked([dvc, "queue", "logs", f"seed{s}"], tmp_path, env).stdout for s in (1, 2))
    assert "locked" not in logs.lower()
    assert not list(tmp_path.glob(".dvc/tmp/exps/**/mlflow.db"))

    client, runs = mlflow_runs(tmp_path)
    teachers = [r for r in runs if r.data.tags.get("dvc.stage") == "teacher@ref"]
    assert sorted(r.data.tags["dvc.exp_name"] for r in teachers) == ["seed1", "seed2"]
    assert sorted(r.data.params["seed"] for r in teachers) == ["1", "2"]
    for run in teachers:
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(1, FAULT_STEPS + 1))
    shown = json.dumps(json.loads(run_checked([dvc, "exp", "show", "--json"], tmp_path, env).stdout))
    assert "seed1" in shown and "seed2" in shown


# Where a stage is killed: the phase hooks of pipeline/fault_hooks.py, and a checkpoint save for training.
KILL_PHASES = {"loading": {PHASE_ENV: "loading"}, "training": {PAUSE_ENV: "4"},
               "scoring": {PHASE_ENV: "scoring"}, "logging": {PHASE_ENV: "logging"}}
KILL_MARKERS = {"loading": "paused on entering loading", "training": pause_marker(4),
                "scoring": "paused on entering scoring", "logging": "paused on entering logging"}


@pytest.fixture(scope="module")
def finished_pipeline(tmp_path_factory):
    """The tiny pipeline of one SSL teacher and its student, reproduced to the end: DVC's run cache then
    holds every stage, so a killed stage can be restored without being started again."""
    root = tmp_path_factory.mktemp("killed")
    params = fault_params("ref", metric_grid=False)
    params["classification"].update(teachers={}, grid={"teacher": [], "student": [], "method": []})
    env = make_repo(root, params)
    run_checked([str(BIN / "dvc"), "repro"], root, env, timeout=900)
    return root, env


@pytest.mark.slow  # about 40 s a phase on 2 cores
@pytest.mark.parametrize("phase", list(KILL_PHASES))
def test_a_stage_killed_in_any_phase_leaves_no_run_running_after_the_next_repro(finished_pipeline, phase):
    """kill -9 of `dvc repro -f -s teacher@ref` (DVC, the stage and its MLflow agent) while the stage loads,
    trains, scores or logs; then `dvc repro`. DVC restores the teacher from its run cache without starting
    it, but the marker the dead stage left in outputs/ makes the report run, and the report's start closes
    the dead run: KILLED, with the reason, and nothing RUNNING."""
    root, env = finished_pipeline
    if phase == "training":  # so that it trains; otherwise it resumes its finished run and changes no file
        shutil.rmtree(root / "outputs/teachers/ref/checkpoints", ignore_errors=True)
    forced = Background([str(BIN / "dvc"), "repro", "-f", "-s", "teacher@ref"], root, {**env, **KILL_PHASES[phase]},
                        f"kill-{phase}")
    forced.wait_for(KILL_MARKERS[phase], timeout=300)
    killed = [r.info.run_id for r in stage_runs(root, "teacher@ref") if r.info.status == "RUNNING"]
    forced.kill()
    assert len(killed) == 1, f"the {phase} phase had no open run to leave behind"
    reran = run_checked([str(BIN / "dvc"), "repro"], root, env, timeout=900).stdout
    if phase != "training":  # restored from the run cache, not started: the report's start closed the run
        assert "Running stage 'teacher@ref'" not in reran and "Running stage 'report'" in reran, reran
    client, runs = mlflow_runs(root)
    assert not [(r.data.tags.get("dvc.stage"), r.info.status) for r in runs if r.info.status == "RUNNING"]
    dead = client.get_run(killed[0])
    assert dead.info.status == "KILLED" and "ended without closing its run" in dead.data.tags["pipeline.killed_reason"]
