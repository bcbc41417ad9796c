"""A team tracking server: `mlflow server` with basic auth and a PostgreSQL backend store, reached
through `MLFLOW_TRACKING_URI`, with MLflow's own credentials (environment or ~/.mlflow/credentials).

Default run (about 2 s): `check_tracking_store` against a stand-in HTTP server that answers as MLflow's
auth app does (401 without or with wrong credentials, 200 with the right ones), a server that is not
MLflow, an unreachable PostgreSQL store and an unknown scheme: each refused in one line that never
shows the password.

Slow (`-m slow`, about 2 minutes on 2 cores, most of it the server's first start): a real PostgreSQL
and a real `mlflow server --app-name basic-auth`; two teacher stages train at once (credentials from the
environment and from a credentials file) and both land complete, read back through `MlflowClient`; stages
without credentials, with a wrong password, or with read-only access are refused before training and
leave no run behind.
"""
from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from faults_support import (
    FAULT_STEPS,
    assert_one_line_refusal,
    fault_params,
    make_repo,
    stage,
    start_stage,
)
from pipeline.infra.store import SERVER_CHECK_ENDPOINT, TrackingUnavailableError, check_tracking_store, redact_uri

USER, PASSWORD = "alice", "s3cret-" + secrets.token_hex(4)


class FakeMlflowAuth(BaseHTTPRequestHandler):
    """Answers /api/2.0/mlflow/experiments/search as MLflow's basic-auth app does; `not_mlflow` serves
    an HTML 404 like any other web server."""

    not_mlflow = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.not_mlflow or not self.path.startswith(SERVER_CHECK_ENDPOINT):
            return self._answer(404, "text/html", b"<html>not found</html>")
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self._answer(401, "text/plain", b"You are not authenticated.")
        self._answer(200, "application/json", json.dumps({"experiments": []}).encode())

    def _answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def fake_server(not_mlflow: bool = False):
    handler = type("Handler", (FakeMlflowAuth,), {"not_mlflow": not_mlflow})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No MLflow credential anywhere: not in the environment, and a HOME without ~/.mlflow/credentials."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def refusal(uri: str) -> str:
    with pytest.raises(TrackingUnavailableError) as refused:
        check_tracking_store(uri, timeout_s=3)
    message = str(refused.value)
    assert "\n" not in message and PASSWORD not in message, message
    return message


def test_a_server_asking_for_credentials_is_refused_without_them_and_with_a_wrong_password(no_credentials,
                                                                                          monkeypatch):
    with fake_server() as uri:
        message = refusal(uri)
        assert uri in message and "requires credentials" in message and "MLFLOW_TRACKING_USERNAME" in message
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD + "x")
        message = refusal(uri)
        assert f"refused the credentials of user '{USER}' (HTTP 401)" in message
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        check_tracking_store(uri, timeout_s=3)


def test_credentials_come_from_the_credentials_file_too(no_credentials):
    (no_credentials / ".mlflow").mkdir(parents=True)
    (no_credentials / ".mlflow/credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {USER}\nmlflow_tracking_password = {PASSWORD}\n")
    with fake_server() as uri:
        check_tracking_store(uri, timeout_s=3)


def test_a_server_that_is_not_mlflow_is_refused(no_credentials):
    with fake_server(not_mlflow=True) as uri:
        assert "does not answer as an MLflow tracking server (HTTP 404" in refusal(uri)


def test_an_unreachable_postgresql_store_is_refused_fast_without_its_password():
    pytest.importorskip("psycopg")
    uri = f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{closed_port()}/mlflow"
    started = time.monotonic()
    message = refusal(uri)
    assert message.startswith("MLflow database store postgresql://mlflow:***@127.0.0.1:") and "cannot be used" in message
    assert time.monotonic() - started < 10


def test_a_uri_with_a_scheme_mlflow_has_no_store_for_is_refused():
    assert "no tracking store for scheme 'htps'" in refusal("htps://team-server:5000")


def test_redact_uri_masks_the_password_only():
    assert redact_uri(f"http://{USER}:{PASSWORD}@host:5000/x") == f"http://{USER}:***@host:5000/x"
    assert redact_uri("http://host:5000") == "http://host:5000"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the real stack ---------------------------------------------------------------------------------------

def assert_nothing_trained(root: Path, name: str) -> None:
    out = root / "outputs/teachers" / name
    assert not (out / "checkpoints").exists() and not (out / "model.pt").exists(), f"{name} trained"


@pytest.mark.slow
def test_team_server_records_concurrent_stages_and_refuses_stages_without_valid_credentials(tmp_path,
                                                                                           monkeypatch):
    from mlflow import MlflowClient

    from team_support import mlflow_server, postgres

    names = ("team_env", "team_file", "no_credentials", "wrong_password", "read_only")
    env = make_repo(tmp_path / "repo", fault_params(*names, metric_grid=False), with_dvc=False)
    root = tmp_path / "repo"
    with postgres() as database, mlflow_server(database, tmp_path / "server") as server:
        server.create_user(USER, PASSWORD)
        server.create_user("bob", "bob-" + PASSWORD)
        (tmp_path / "empty_home").mkdir()  # no ~/.mlflow/credentials of whoever runs the tests
        team = {**env, "MLFLOW_TRACKING_URI": server.uri, "HOME": str(tmp_path / "empty_home")}
        home = tmp_path / "home"  # the second stage reads its credentials from ~/.mlflow/credentials
        (home / ".mlflow").mkdir(parents=True)
        (home / ".mlflow/credentials").write_text(
            f"[mlflow]\nmlflow_tracking_username = {USER}\nmlflow_tracking_password = {PASSWORD}\n")

        refused = {
            "no_credentials": stage(["stages.teacher", "no_credentials"], root, team),
            "wrong_password": stage(["stages.teacher", "wrong_password"], root, team,
                                    MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD="wrong-" + PASSWORD),
        }
        assert_one_line_refusal(refused["no_credentials"], server.uri, "requires credentials")
        assert_one_line_refusal(refused["wrong_password"], server.uri, f"refused the credentials of user '{USER}'")

        running = [start_stage(["stages.teacher", "team_env"], root, team, "team_env",
                               MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD),
                   start_stage(["stages.teacher", "team_file"], root, team, "team_file", HOME=str(home))]
        assert [r.wait(timeout=600) for r in running] == [0, 0], [r.stderr()[-2000:] for r in running]

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("pipeline-test")
        # Alice's stages created the experiment; Bob may read it (MLflow's default READ) but not write to it.
        refused["read_only"] = stage(["stages.teacher", "read_only"], root, team,
                                     MLFLOW_TRACKING_USERNAME="bob", MLFLOW_TRACKING_PASSWORD="bob-" + PASSWORD)
        assert_one_line_refusal(refused["read_only"], "refused to record the run for user 'bob'",
                                "PERMISSION_DENIED")

        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        by_stage = {}
        for run in runs:
            by_stage.setdefault(run.data.tags.get("dvc.stage"), []).append(run)
        for name in ("team_env", "team_file"):
            [run] = by_stage[f"teacher@{name}"]
            assert run.info.status == "FINISHED"
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
            assert steps == list(range(1, FAULT_STEPS + 1))
            assert run.data.params[f"teachers.{name}.train.max_steps"] == str(FAULT_STEPS)
            assert run.data.metrics["steps"] == FAULT_STEPS
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")
            assert "loss_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert list(server.artifacts.rglob("loss_curve.png")), "no artifact reached the server's artifact root"
        for name in refused:
            assert f"teacher@{name}" not in by_stage, f"{name} left a run behind"
            assert_nothing_trained(root, name)
        secrets_seen = [PASSWORD, "bob-" + PASSWORD]
        for run in runs:
            values = [*run.data.params.values(), *run.data.tags.values()]
            assert not any(s in v for s in secrets_seen for v in values), "a credential was logged"
        for result in refused.values():
            assert not any(s in result.stderr for s in secrets_seen)
        assert not any(s in r.stderr() for s in secrets_seen for r in running)
