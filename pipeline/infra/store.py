"""Where MLflow runs are stored, and whether this process can write there.

- Store: ``MLFLOW_TRACKING_URI`` when set, else SQLite at the repository root addressed absolutely
  (root from ``DVC_ROOT``, else the git root, else the working directory), so ``dvc exp run --queue``
  copies in temporary folders write to the same database. Artifacts go next to it (``mlartifacts/``).
- Team server: ``MLFLOW_TRACKING_URI=http://HOST:PORT`` of an ``mlflow server`` (PostgreSQL backend,
  basic auth). Credentials are MLflow's own (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``,
  else ``~/.mlflow/credentials``), never params.yaml. Before any run is opened the store is checked
  (``check_tracking_store``): unreachable, not MLflow, missing or refused credentials each fail in one
  line that shows the URI without a password and never a credential.
- SQLite concurrency: connections wait up to ``SQLITE_TIMEOUT_S`` for the write lock instead of failing
  at once, database creation and parent lookup are serialised by a file lock, and writes retry.

This module imports no MLflow at its top (its checks import what they use).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

SQLITE_TIMEOUT_S = 60
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores besides SQLite
SERVER_CHECK_ENDPOINT = "/api/2.0/mlflow/experiments/search"
CREDENTIALS_FILE = "~/.mlflow/credentials"
T = TypeVar("T")


class TrackingUnavailableError(ConnectionError):
    """The tracking store cannot be reached; raised before any training starts (a ConnectionError, so
    stages report it in one line without importing MLflow to catch it)."""


def repository_root() -> Path:
    """Where mlflow.db lives: ``DVC_ROOT``, else the git root, else the working directory, mapped out of
    DVC's experiment copies (``<repo>/.dvc/tmp/exps/...``) back to ``<repo>``.

    DVC 3.67 passes queued experiments the parent repository as ``DVC_ROOT``; the mapping covers DVC
    versions that pass the temporary copy, and stages run by hand inside one, whose runs would
    otherwise vanish with the copy.
    """
    if os.environ.get("DVC_ROOT"):
        root = Path(os.environ["DVC_ROOT"]).resolve()
    else:
        try:
            out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                 timeout=5, check=True)
            root = Path(out.stdout.strip()).resolve()
        except (OSError, subprocess.SubprocessError):
            root = Path.cwd().resolve()
    return experiment_copy_owner(root) or root


def experiment_copy_owner(path: Path) -> Path | None:
    """``<repo>`` when ``path`` lies inside ``<repo>/.dvc/tmp/exps/``, else None."""
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i + 1 : i + 4] == (".dvc", "tmp", "exps"):
            return Path(*parts[: i + 1])
    return None


def tracking_uri() -> str:
    """The store this process writes to; SQLite URIs get a busy timeout unless they carry options."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:") and "?" not in uri:
        uri += f"?timeout={SQLITE_TIMEOUT_S}"
    return uri


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user part masked: what messages may show."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    host = parsed.netloc.rsplit("@", 1)[1]
    return parsed._replace(netloc=f"{parsed.username or ''}:***@{host}").geturl()


def check_tracking_store(uri: str, timeout_s: float = 5.0) -> None:
    """Refuse, in one line and within about ``timeout_s``, a store this stage could not write to: an
    unreachable server or database, a server that is not MLflow, missing or refused credentials, or a URI
    scheme MLflow has no store for. Messages show the URI without its password and never a credential."""
    parsed = urlparse(uri)
    shown = redact_uri(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, shown, timeout_s)
    elif scheme == "sqlite":
        folder = Path(parsed.path).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingUnavailableError(f"MLflow SQLite store {shown}: folder {folder} is missing or not writable")
    elif scheme.split("+")[0] in DATABASE_SCHEMES:
        _check_database(uri, shown, timeout_s)
    elif not _has_store(scheme):
        raise TrackingUnavailableError(f"MLFLOW_TRACKING_URI: MLflow has no tracking store for scheme {parsed.scheme!r} "
                                       f"({shown}); use http(s)://HOST:PORT of an MLflow server, or unset it")


def _has_store(scheme: str) -> bool:
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return scheme in _tracking_store_registry._registry
    except (ImportError, AttributeError):  # a private registry; without it MLflow itself judges the URI
        return True


def _check_server(uri: str, shown: str, timeout_s: float) -> None:
    """Reachable, an MLflow server, and accepting this process's credentials (MLflow's own: the
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` variables, else
    ``~/.mlflow/credentials``), checked by one read that any user with access may make."""
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as err:
        raise TrackingUnavailableError(
            f"MLflow tracking server {shown} is unreachable ({err}); start it or unset MLFLOW_TRACKING_URI"
        ) from None
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, SERVER_CHECK_ENDPOINT, "GET", max_retries=0, timeout=timeout_s,
                                raise_on_status=False, params={"max_results": 1})
    except Exception as err:  # requests' errors may quote the URL, so only their kind is shown
        raise TrackingUnavailableError(f"MLflow tracking server {shown} did not answer {SERVER_CHECK_ENDPOINT} "
                                       f"({type(err).__name__}); check MLFLOW_TRACKING_URI") from None
    status = response.status_code
    if status == 401:
        if not (creds.username or creds.password or creds.token):
            raise TrackingUnavailableError(
                f"MLflow tracking server {shown} requires credentials: set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD, or put them in {CREDENTIALS_FILE}")
        raise TrackingUnavailableError(
            f"MLflow tracking server {shown} refused the credentials of user {creds.username!r} (HTTP 401); "
            f"check MLFLOW_TRACKING_PASSWORD or {CREDENTIALS_FILE}")
    if status == 403:
        raise TrackingUnavailableError(f"MLflow tracking server {shown}: user {creds.username!r} may not read "
                                       "experiments (HTTP 403); ask its admin for a permission")
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if status != 200 or not isinstance(answer, dict) or (answer and "experiments" not in answer):
        raise TrackingUnavailableError(f"{shown} does not answer as an MLflow tracking server (HTTP {status} for "
                                       f"{SERVER_CHECK_ENDPOINT}); check MLFLOW_TRACKING_URI")


def _check_database(uri: str, shown: str, timeout_s: float) -> None:
    """A database store (``postgresql://...``) MLflow would otherwise retry for minutes: one connection."""
    import sqlalchemy

    parsed = urlparse(uri)
    connect_args = {"connect_timeout": max(1, int(timeout_s))} if parsed.scheme.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:
        detail = first_line(getattr(err, "orig", None) or err, uri)
        raise TrackingUnavailableError(f"MLflow database store {shown} cannot be used ({detail}); check "
                                       "MLFLOW_TRACKING_URI") from None


def with_retries(action: Callable[[], T], attempts: int = 5, delay_s: float = 0.5) -> T:
    """Retry on 'database is locked' style errors that outlast SQLite's busy timeout."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as err:  # MLflow wraps the driver's OperationalError in its own exceptions
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay_s * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialises database creation and parent-run lookup between processes on this machine."""
    name = hashlib.sha1(uri.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"pipeline-mlflow-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def first_line(err: BaseException, uri: str) -> str:
    """The first line of ``err``'s message, without the password of ``uri`` and without SQLAlchemy's
    advice on autoflush, which stands before the database's own error on a damaged store."""
    message = re.sub(r"\(raised as a result of Query-invoked autoflush;[^)]*\)\s*", "", str(err))
    detail = (message.strip().splitlines() or [type(err).__name__])[0]
    password = urlparse(uri).password
    return (detail.replace(password, "***") if password else detail)[:300]
