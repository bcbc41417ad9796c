"""MLflow tracking: store location, fail-fast, statuses, parent runs, concurrent SQLite writers."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from pipeline.infra.run_logger import start_run
from pipeline.infra.runs import (DEFAULT_EXPERIMENT, OWNER_TAG, PARENT_TAG, RUN_GROUP_ENV, RUN_GROUP_TAG, flatten_params,
                                 owner_is_gone, process_owner)
from pipeline.infra.store import TrackingUnavailableError, tracking_uri

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def runs_of_stage(uri: str, stage: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.`dvc.stage` = '{stage}'")


def test_default_store_is_absolute_sqlite_at_dvc_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    # sqlite:/// + an absolute path = four slashes; the busy timeout makes writers wait for the lock.
    assert tracking_uri() == f"sqlite:////{str(tmp_path).lstrip('/')}/mlflow.db?timeout=60"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri() == "http://tracking.example:5000"


def test_flatten_params_gives_dvc_dotted_keys():
    nested = {"teacher": {"optim": {"lr": 0.1, "name": "sgd"}, "widths": [32, 64]}, "seed": 3}
    assert flatten_params(nested) == {
        "teacher.optim.lr": "0.1", "teacher.optim.name": "sgd", "teacher.widths": "[32, 64]", "seed": "3",
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_before_any_run(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="unreachable"):
        with start_run("never"):
            pytest.fail("the body must not run")
    assert time.monotonic() - started < 5  # no MLflow client retry loop (minutes by default)


def test_missing_sqlite_folder_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailableError, match="missing"):
        with start_run("never"):
            pass


@pytest.mark.parametrize("raised, status", [
    (None, "FINISHED"),
    (ValueError("boom"), "FAILED"),
    (KeyboardInterrupt(), "KILLED"),
    (SystemExit(143), "KILLED"),
    (SystemExit(0), "FINISHED"),
])
def test_run_status_follows_how_the_block_ends(raised, status, store, monkeypatch):
    monkeypatch.setenv(RUN_GROUP_ENV, "status-test")
    stage = f"status-{type(raised).__name__}-{getattr(raised, 'code', '')}"
    with pytest.raises(type(raised)) if raised is not None else pytest.MonkeyPatch.context():
        with start_run(stage, params={"a": {"b": 1}}, system_metrics=False) as run:
            run.log_metrics({"train/loss": 2.0}, step=1)
            if raised is not None:
                raise raised
    (tracked,) = runs_of_stage(store, stage)
    assert tracked.info.status == status
    assert tracked.data.params == {"a.b": "1"}
    assert tracked.data.metrics["train/loss"] == 2.0  # buffered metrics are flushed on every exit


def test_tags_and_system_metrics(store, monkeypatch):
    monkeypatch.setenv(RUN_GROUP_ENV, "tags-test")
    monkeypatch.setenv("DVC_EXP_NAME", "gusty-pier")
    with start_run("tagged", tags={"teacher": "simclr"}, system_metrics_interval_s=0.3):
        time.sleep(1.0)
    (tracked,) = runs_of_stage(store, "tagged")
    tags = tracked.data.tags
    assert tags["dvc.exp_name"] == "gusty-pier" and tags["teacher"] == "simclr" and tags["device"] == "cpu"
    assert len(tags["git.commit"]) == 40 or tags["git.commit"] == "unknown"
    assert any(key.startswith("system/cpu") for key in tracked.data.metrics)


WRITER = textwrap.dedent('''
    import sys
    from pipeline.infra import start_run
    name, count = sys.argv[1], int(sys.argv[2])
    for i in range(count):
        with start_run(f"{name}-{i}", params={"i": i}, system_metrics=False) as run:
            for step in range(1, 21):
                run.log_metrics({"train/loss": float(step)}, step=step)
                run.flush()  # one write transaction per metric: as much lock contention as possible
''')


def test_concurrent_writers_lose_no_runs_and_share_one_parent(tmp_path, store):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO), RUN_GROUP_ENV: "concurrent-test"}
    writers = [subprocess.Popen([sys.executable, str(script), name, "2"], env=env, cwd=REPO,
                                stderr=subprocess.PIPE, text=True) for name in ("left", "right")]
    for writer in writers:
        _, stderr = writer.communicate(timeout=240)
        assert writer.returncode == 0, stderr[-2000:]
    parents = set()
    for name in ("left", "right"):
        for i in range(2):
            (tracked,) = runs_of_stage(store, f"{name}-{i}")
            assert tracked.info.status == "FINISHED"
            history = MlflowClient(store).get_metric_history(tracked.info.run_id, "train/loss")
            assert sorted(m.step for m in history) == list(range(1, 21))
            parents.add(tracked.data.tags["mlflow.parentRunId"])
    assert len(parents) == 1  # both processes found the same parent, and only one was created
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    found = client.search_runs([experiment.experiment_id],
                               f"tags.`{RUN_GROUP_TAG}` = 'concurrent-test' and "
                               f"tags.`{PARENT_TAG}` = 'true'")
    assert [run.info.run_id for run in found] == list(parents)


FAKE_DVC = textwrap.dedent('''
    import subprocess, sys
    # Stands in for `dvc repro`: runs two "stages" through a shell, as DVC does.
    for _ in range(2):
        subprocess.run(["/bin/sh", "-c", f"{sys.executable} -c 'from pipeline.infra.runs import run_group_id; "
                        f"print(run_group_id())'"], check=True)
''')


@pytest.mark.slow  # four interpreter start-ups importing MLflow: ~10 s on 2 busy cores
def test_stages_of_one_dvc_invocation_share_a_run_group(tmp_path):
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(f"#!{sys.executable}\n{FAKE_DVC}")
    fake_dvc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != RUN_GROUP_ENV}
    env["PYTHONPATH"] = str(REPO)
    groups = []
    for _ in range(2):
        process = subprocess.Popen([str(fake_dvc)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        first, second = out.split()
        assert first == second and first.startswith(f"dvc-{process.pid}-")
        groups.append(first)
    assert groups[0] != groups[1]


HANGING_RUN = textwrap.dedent('''
    import time
    from pipeline.infra import start_run
    with start_run("orphan-stage", system_metrics=False) as run:
        assert run.run_id  # waits until the agent has created the run
        print("open", flush=True)
        time.sleep(600)
''')


def test_run_of_a_sigkilled_process_is_marked_killed_by_the_next_run_of_its_stage(store, monkeypatch):
    """SIGKILL leaves no chance to close a run; the next run of the stage closes it (and its parent), while
    a RUNNING run whose owner is alive, or on another host, is left alone."""
    env = {**os.environ, RUN_GROUP_ENV: "orphan-killed"}
    hanging = subprocess.Popen([sys.executable, "-c", HANGING_RUN], env=env, cwd=REPO, stdout=subprocess.PIPE,
                               text=True)
    assert hanging.stdout.readline().strip() == "open"
    hanging.kill()
    hanging.wait()
    [orphan] = runs_of_stage(store, "orphan-stage")
    assert orphan.info.status == "RUNNING"
    client = MlflowClient(store)
    experiment_id = orphan.info.experiment_id
    alive = client.create_run(experiment_id, tags={"dvc.stage": "orphan-stage",
                                                   OWNER_TAG: process_owner()})
    elsewhere = client.create_run(experiment_id, tags={"dvc.stage": "orphan-stage",
                                                       OWNER_TAG: "other-host:1:1"})

    monkeypatch.setenv(RUN_GROUP_ENV, "orphan-rerun")
    with start_run("orphan-stage", system_metrics=False):
        pass
    status = {run.info.run_id: run.info.status for run in runs_of_stage(store, "orphan-stage")}
    assert status.pop(orphan.info.run_id) == "KILLED"
    assert status.pop(alive.info.run_id) == "RUNNING" and status.pop(elsewhere.info.run_id) == "RUNNING"
    assert list(status.values()) == ["FINISHED"]
    assert client.get_run(orphan.data.tags["mlflow.parentRunId"]).info.status == "KILLED"


def test_a_killed_process_not_yet_reaped_is_gone():
    """A zombie keeps its pid and start time until its parent reaps it; its run is dead all the same (the
    fault suite's `dvc repro` kill left its stage's run RUNNING while the stage was an unreaped zombie)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    owner = f"{socket.gethostname()}:{child.pid}:{int(psutil.Process(child.pid).create_time())}"
    assert not owner_is_gone(owner)
    child.kill()
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE  # killed, not reaped
    assert owner_is_gone(owner)
    child.wait()
    assert owner_is_gone(owner)


def test_importing_the_infrastructure_imports_no_mlflow():
    """MLflow's import (2-4 s here) happens in the run's agent, beside the stage's work, not in the stage."""
    check = "import sys, pipeline.infra; print(sorted(m for m in sys.modules if m.startswith('mlflow')))"
    out = subprocess.run([sys.executable, "-c", check], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


ENDINGS = textwrap.dedent('''
    import os, sys
    from concurrent.futures import ThreadPoolExecutor
    import psutil
    from pipeline.infra import start_run

    def run(ending):
        try:
            with start_run(f"agent-{ending}", params={"a": {"b": 1}},
                                    system_metrics=False) as logger:
                logger.log_metrics({"train/loss": 2.0}, step=1)
                if ending == "failed":
                    raise ValueError("boom")
                if ending == "killed":
                    raise KeyboardInterrupt
        except (ValueError, KeyboardInterrupt):
            pass

    with ThreadPoolExecutor(3) as pool:  # three runs, three agents at once
        list(pool.map(run, ("finished", "failed", "killed")))
    mlflow_modules = sorted(m for m in sys.modules if m.startswith("mlflow"))
    print(mlflow_modules, len(psutil.Process().children()), os.getpid())
''')


def test_run_status_through_the_agent_process(store):
    """A stage process never imports MLflow: each run is written by an agent process, which ends with it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), RUN_GROUP_ENV: "agent-status"}
    out = subprocess.run([sys.executable, "-c", ENDINGS], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    modules, agents, pid = out.stdout.split()
    assert modules == "[]" and agents == "0"  # no MLflow module here, no agent left behind
    for ending, status in (("finished", "FINISHED"), ("failed", "FAILED"), ("killed", "KILLED")):
        (tracked,) = runs_of_stage(store, f"agent-{ending}")
        assert tracked.info.status == status
        assert tracked.data.params == {"a.b": "1"} and tracked.data.metrics["train/loss"] == 2.0
        assert tracked.data.tags[OWNER_TAG].split(":")[1] == pid  # the stage's, not its agent's


def not_a_database(tmp_path: Path) -> Path:
    """A store check_tracking_store passes (its folder is writable) and MLflow refuses when it opens it."""
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"not an SQLite database\n" * 64)
    return database


def test_a_store_failing_in_the_agent_fails_in_one_line_at_the_first_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{not_a_database(tmp_path)}")
    artifact = tmp_path / "figure.txt"
    artifact.write_text("a figure")
    reached = []
    # start_run returns before the agent has failed; the first call that waits for it raises
    with pytest.raises(TrackingUnavailableError) as failure:
        with start_run("broken-store", system_metrics=False) as run:
            reached.append("body")
            run.log_artifact(artifact)  # waits for the agent
            reached.append("after the first wait")
    assert reached == ["body"]
    message = str(failure.value)
    assert "\n" not in message and "opening the run failed" in message and "not a database" in message
    with pytest.raises(TrackingUnavailableError, match="opening the run failed"):
        with start_run("broken-store", system_metrics=False):
            pass  # a block that never waits meets the failure at its end


BROKEN_STAGE = textwrap.dedent('''
    import sys
    from pathlib import Path
    from pipeline.infra import start_run
    out = Path(sys.argv[1])
    with start_run("broken-stage", system_metrics=False) as run:
        for step in range(3):
            run.log_metrics({"train/loss": 1.0}, step=step)
        (out / "computed").write_text("")
    (out / "metrics.json").write_text("{}")  # what a stage writes after its block
''')


def test_a_stage_whose_agent_fails_writes_no_outputs_after_its_block(tmp_path):
    uri = f"sqlite:///{not_a_database(tmp_path)}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-c", BROKEN_STAGE, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 1
    assert (tmp_path / "computed").exists() and not (tmp_path / "metrics.json").exists()
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline.infra.store.TrackingUnavailableError: MLflow store sqlite:///")
    assert "opening the run failed" in last and "not a database" in last


PRESTARTED = textwrap.dedent('''
    import os, sys
    import pipeline.infra.agent
    from pipeline.infra import prestart_agent, start_run
    prestart_agent()  # as pipeline.wiring.common.run_stage does, before the stage's own start-up
    agent = pipeline.infra.agent._prestarted[1]
    print(agent.pid, flush=True)
    if sys.argv[1] == "run":
        with start_run("prestarted", system_metrics=False) as run:
            run.log_metrics({"train/loss": 1.0}, step=1)
            print(run.call_in_agent(os.getpid), flush=True)  # runs in the agent: that one
        print(agent.poll(), flush=True)  # and it ended with the run
''')


def test_a_prestarted_agent_serves_the_run_or_ends_with_a_process_that_opens_none(store):
    env = {**os.environ, "PYTHONPATH": str(REPO), RUN_GROUP_ENV: "prestarted"}
    out = subprocess.run([sys.executable, "-c", PRESTARTED, "run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    agent, served_by, ended = out.stdout.split()
    assert served_by == agent and ended == "0"
    (tracked,) = runs_of_stage(store, "prestarted")
    assert tracked.info.status == "FINISHED" and tracked.data.metrics["train/loss"] == 1.0

    out = subprocess.run([sys.executable, "-c", PRESTARTED, "exit"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    psutil.Process(int(out.stdout)).wait(timeout=30)  # gone once it read the end of its socket


def test_a_damaged_store_is_named_by_its_database_error_not_by_sqlalchemys_advice():
    """SQLAlchemy puts its autoflush advice before the database's error on a damaged mlflow.db."""
    from pipeline.infra.agent import _failure_line

    err = RuntimeError("(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush "
                       "block if this flush is occurring prematurely)\n(sqlite3.DatabaseError) database disk image "
                       "is malformed\n[SQL: INSERT INTO runs ...]")
    line = _failure_line(err, "sqlite:////data/mlflow.db", "opening the run")
    assert line == ("MLflow store sqlite:////data/mlflow.db: opening the run failed (RuntimeError: "
                    "(sqlite3.DatabaseError) database disk image is malformed)")


def test_the_agent_is_handed_functions_by_the_name_it_resolves_them_by():
    """``call_in_agent`` takes the function itself; its name is derived and resolved in one place."""
    from pipeline.infra.agent import qualified_name, resolve
    from pipeline.infra.views import publish_report

    assert resolve(qualified_name(publish_report)) is publish_report
    assert qualified_name(publish_report) == "pipeline.infra.views:publish_report"
    with pytest.raises(ValueError, match="module-level functions only"):
        qualified_name(lambda: None)
