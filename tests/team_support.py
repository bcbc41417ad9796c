"""A team tracking stack for tests: a real PostgreSQL (Debian's `postgresql` package) behind a real
`mlflow server --app-name basic-auth`, both on 127.0.0.1 and free ports, torn down afterwards.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (runuser), with its data
directory in a fresh temporary folder that user owns. Every wait is bounded; a missing binary skips.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240  # mlflow server's first start migrates two databases: 20-45 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Debian keeps the server binaries under /usr/lib/postgresql/VERSION/bin (not on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class Database:
    host: str
    port: int
    user: str
    password: str

    def uri(self, name: str) -> str:
        # The driver named: SQLAlchemy 2.0 maps bare postgresql:// to psycopg2, 2.1 to psycopg (3).
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{name}"


def _as_postgres(cmd: list[str]) -> list[str]:
    """As root, `cmd` run as the postgres user; runuser lives in /usr/sbin, which a PATH without the sbin
    folders (a bare `env -i` shell) leaves out."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin") or "runuser"
    return [runuser, "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ("mlflow", "mlflow_auth")) -> Iterator[Database]:
    """A throw-away PostgreSQL cluster listening on 127.0.0.1 only, with password login and `databases`."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries not found (scripts/setup.sh installs Debian's postgresql)")
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    data, log = folder / "data", folder / "server.log"
    password = secrets.token_urlsafe(16)
    (folder / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        os.chown(folder, account.pw_uid, account.pw_gid)
        os.chown(folder / "pw", account.pw_uid, account.pw_gid)
    started = False
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "-E", "UTF8",
                                     "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={folder / 'pw'}",
                                     "--no-sync"]), check=True, capture_output=True, timeout=120)
        for _ in range(3):  # a free port can be taken between probing and binding: try another
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
                       "-c fsync=off -c full_page_writes=off")
            done = subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                                                "-w", "-t", "60", "start"]), capture_output=True, timeout=90)
            if done.returncode == 0:
                started = True
                break
        assert started, f"PostgreSQL did not start:\n{log.read_text()[-2000:] if log.exists() else done.stderr}"
        env = {**os.environ, "PGPASSWORD": password}
        for name in databases:
            subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", name],
                           check=True, capture_output=True, env=env, timeout=60)
        yield Database("127.0.0.1", port, "mlflow", password)
    finally:
        if started:
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "60",
                                         "stop"]), capture_output=True, timeout=90)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Server:
    uri: str
    admin: tuple[str, str]
    artifacts: Path
    log: Path

    def create_user(self, username: str, password: str) -> None:
        with self._as_admin() as auth:
            auth.create_user(username, password)

    @contextlib.contextmanager
    def _as_admin(self):
        """MLflow's auth client reads its credentials from the environment: the admin's, for one call."""
        import warnings

        with warnings.catch_warnings():  # starlette's deprecation notice, on importing MLflow's server app
            warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
            from mlflow.server.auth.client import AuthServiceClient

        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=self.admin[0], MLFLOW_TRACKING_PASSWORD=self.admin[1])
        try:
            yield AuthServiceClient(self.uri)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextlib.contextmanager
def mlflow_server(database: Database, folder: Path, default_permission: str = "READ") -> Iterator[Server]:
    """`mlflow server` with basic auth: runs in PostgreSQL database `mlflow`, users in `mlflow_auth`,
    artifacts under `folder`, on 127.0.0.1. With MLflow's default `default_permission` READ, a user
    writes only to experiments they created or were granted."""
    folder.mkdir(parents=True, exist_ok=True)
    admin = ("admin", secrets.token_urlsafe(16))
    config = folder / "basic_auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = {default_permission}\n"
                      f"database_uri = {database.uri('mlflow_auth')}\n"
                      f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    artifacts, log = folder / "artifacts", folder / "server.log"
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with _serve(["--app-name", "basic-auth", "--backend-store-uri", database.uri("mlflow"),
                 "--artifacts-destination", str(artifacts)], folder, log, env) as uri:
        yield Server(uri, admin, artifacts, log)


@contextlib.contextmanager
def local_mlflow_server(backend_store_uri: str, folder: Path) -> Iterator[Server]:
    """A plain `mlflow server` (no auth) on 127.0.0.1 over `backend_store_uri` (e.g. a SQLite file),
    artifacts proxied to `folder`/artifacts: what a lab's shared server without accounts looks like."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts, log = folder / "artifacts", folder / "server.log"
    with _serve(["--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)],
                folder, log, {}) as uri:
        yield Server(uri, ("", ""), artifacts, log)


@contextlib.contextmanager
def _serve(arguments: list[str], folder: Path, log: Path, extra_env: dict[str, str]) -> Iterator[str]:
    """Run `mlflow server ARGUMENTS` on 127.0.0.1 and a free port until its /health answers; yield its
    URI; stop it and everything it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra_env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    port = free_port()
    with open(log, "w") as handle:
        server = subprocess.Popen([str(BIN / "mlflow"), "server", *arguments,
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  cwd=folder, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        import requests

        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not up in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(requests.RequestException):
                if requests.get(uri + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # uvicorn workers and anything else it started
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
