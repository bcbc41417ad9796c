"""MLflow in one place: where runs are stored, how they are opened, tagged, grouped and closed.

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
- Grouping: runs of one pipeline invocation hang under one parent run, found by a run-group id:
  ``PIPELINE_RUN_GROUP`` when set, else the ``dvc`` process that spawned this stage (its pid and start
  time, so the stages of one ``dvc repro`` share it while two invocations never do), else a fresh id.
- Status: FINISHED on success, KILLED on KeyboardInterrupt / SIGTERM / non-zero SystemExit, else FAILED.
  A process killed outright (SIGKILL, OOM killer, power loss) cannot close its run; the next run of the
  same stage on the same host finds it RUNNING with its owning process gone and marks it KILLED.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

SQLITE_TIMEOUT_S = 60
RUN_GROUP_ENV = "PIPELINE_RUN_GROUP"
RUN_GROUP_TAG = "pipeline.run_group"
PARENT_TAG = "pipeline.parent"
OWNER_TAG = "pipeline.owner"
DEFAULT_EXPERIMENT = "embedding-transfer"
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
        cause = getattr(err, "orig", None) or err
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if parsed.password:
            detail = detail.replace(parsed.password, "***")
        raise TrackingUnavailableError(f"MLflow database store {shown} cannot be used ({detail[:300]}); check "
                                       "MLFLOW_TRACKING_URI") from None


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """DVC's dotted keys (``teacher.optim.lr``), as ``pipeline.config.flatten`` spells them, as strings."""
    from pipeline.config import flatten

    return {key: str(value) for key, value in flatten(dict(params)).items()}


def run_group_id() -> str:
    """The group is stored in ``PIPELINE_RUN_GROUP`` once chosen, so later runs of this process and the
    processes it starts (torchrun workers, sub-stages) join the same parent."""
    if not os.environ.get(RUN_GROUP_ENV):
        dvc = _dvc_ancestor()
        group = f"dvc-{dvc.pid}-{int(dvc.create_time())}" if dvc is not None else f"process-{uuid.uuid4().hex[:12]}"
        os.environ[RUN_GROUP_ENV] = group
    return os.environ[RUN_GROUP_ENV]


def _dvc_ancestor():
    import psutil

    try:
        for process in psutil.Process().parents():
            cmdline = process.cmdline()
            if any(Path(part).name == "dvc" for part in cmdline[:2]) or process.name() == "dvc":
                return process
    except (psutil.Error, OSError):
        return None
    return None


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name() -> str:
    """The GPU a stage computes on, else "cpu"; a stage that has not imported torch (the report) computes
    on the CPU, and is not made to import it (3 s) for this tag."""
    torch = sys.modules.get("torch")
    return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else "cpu"


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
def _store_lock(uri: str) -> Iterator[None]:
    """Serialises database creation and parent-run lookup between processes on this machine."""
    name = hashlib.sha1(uri.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"pipeline-mlflow-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mlflow_metric_name(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / :`` and spaces; metrics.json keys like ``map@r`` need mapping."""
    return key.replace("@", "_at_")


class RunLogger:
    """Buffered metric logging for one run (one SQLite transaction per flush, not per value), and the
    loss curve drawn at the end."""

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 200) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self._buffer: list[Metric] = []
        self.history: dict[str, list[tuple[int, float]]] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics; names MLflow refuses ('@') are spelt out: ``recall@1`` becomes ``recall_at_1``."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            key = mlflow_metric_name(key)
            self._buffer.append(Metric(key, float(value), now, int(step)))
            self.history.setdefault(key, []).append((int(step), float(value)))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            with_retries(lambda: self.client.log_batch(self.run_id, metrics=chunk))

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten_params(params)
        items = [mlflow.entities.Param(k, v[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            with_retries(lambda: self.client.log_batch(self.run_id, params=items[start : start + 100]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            with_retries(lambda: self.client.set_tag(self.run_id, key, str(value)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_loss_curve(self, key: str = "train/loss", file_name: str = "loss_curve.png") -> None:
        points = self.history.get(key)
        if not points:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot([s for s, _ in points], [v for _, v in points], linewidth=1)
        axis.set_xlabel("step")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        self.client.log_figure(self.run_id, figure, file_name)
        plt.close(figure)


class DiscardingLogger(RunLogger):
    """The logger of torchrun ranks other than 0: rank 0's run records the job once."""

    def __init__(self) -> None:
        super().__init__(client=None, run_id="")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_loss_curve(self, key: str = "train/loss", file_name: str = "loss_curve.png") -> None:
        pass


@contextlib.contextmanager
def start_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    system_metrics: bool = True,
    system_metrics_interval_s: float = 10.0,
) -> Iterator[RunLogger]:
    """Open the MLflow run of one stage, nested under the pipeline invocation's parent run.

    ``params`` may be nested; they are logged under DVC's dotted keys. Yields a ``RunLogger`` whose
    ``log_metrics(metrics, step)`` the training loop calls. The loss curve is logged on every exit.
    Under torchrun only rank 0 opens a run; the other ranks get a ``DiscardingLogger``.
    """
    from pipeline.launch import is_main_process

    if not is_main_process():
        yield DiscardingLogger()
        return
    uri = tracking_uri()
    check_tracking_store(uri)
    root = repository_root()
    refused = _refusals_in_one_line(redact_uri(uri))
    with refused, _store_lock(uri):
        client = MlflowClient(uri)
        experiment_id = _experiment_id(client, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                       or DEFAULT_EXPERIMENT, uri, root)
        group = run_group_id()
        parent_id = _parent_run(client, experiment_id, group)
        close_orphaned_runs(client, experiment_id, stage, parent_id)
    run_tags = {
        "dvc.stage": stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "git.commit": git_commit(root),
        "device": device_name(),
        RUN_GROUP_TAG: group,
        OWNER_TAG: process_owner(),
        # torchrun's job size (1 / 1 for a plain process): which runs trained across processes and nodes
        "distributed.world_size": os.environ.get("WORLD_SIZE", "1"),
        "distributed.nodes": os.environ.get("GROUP_WORLD_SIZE", "1"),
        "mlflow.parentRunId": parent_id,
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    with _refusals_in_one_line(redact_uri(uri)):
        run = with_retries(lambda: client.create_run(experiment_id, run_name=run_name or stage, tags=run_tags))
    run_id = run.info.run_id
    logger = RunLogger(client, run_id)
    monitor = _start_system_metrics(run_id, uri, system_metrics_interval_s) if system_metrics else None
    previous_term = _raise_on_sigterm()
    status = "FINISHED"
    try:
        if params:
            logger.log_params(params)
        yield logger
        logger.flush()  # on success a refused metric must fail the stage, not vanish
    except (KeyboardInterrupt, SystemExit) as stop:
        status = "KILLED" if not isinstance(stop, SystemExit) or stop.code not in (0, None) else "FINISHED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if monitor is not None:
            monitor.finish()
        with contextlib.suppress(Exception):
            logger.flush()
            logger.log_loss_curve()
        with_retries(lambda: client.set_terminated(run_id, status))
        with_retries(lambda: client.update_run(parent_id, status="FINISHED" if status == "FINISHED" else status))


@contextlib.contextmanager
def _refusals_in_one_line(shown: str) -> Iterator[None]:
    """A server that lets this user read but not write (MLflow auth's per-experiment permissions) refuses
    at run creation, still before training: one line with the error code, not MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        if err.error_code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            raise
        from mlflow.utils.credentials import read_mlflow_creds

        user = read_mlflow_creds().username
        raise TrackingUnavailableError(f"MLflow tracking server {shown} refused to record the run for user {user!r} "
                                       f"({err.error_code}); ask its admin for EDIT on the experiment") from None


def process_owner() -> str:
    """``host:pid:start-time`` of this process: names it for good, since pids are reused."""
    import psutil

    process = psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{int(process.create_time())}"


def owner_is_gone(owner: str) -> bool:
    """True only when the owner ran on this host and no process with its pid and start time exists; a run
    from another host, or written before owners were tagged, is never declared dead."""
    import psutil

    try:
        host, pid, started = owner.rsplit(":", 2)
        if host != socket.gethostname():
            return False
        return int(psutil.Process(int(pid)).create_time()) != int(started)
    except psutil.NoSuchProcess:
        return True
    except (ValueError, psutil.Error):
        return False


def close_orphaned_runs(client: MlflowClient, experiment_id: str, stage: str, own_parent: str) -> None:
    """Mark KILLED the runs of ``stage`` left RUNNING by a process that no longer exists, and their
    parent run unless it is this invocation's: the UI must not show a dead run as in progress."""
    query = f"tags.`dvc.stage` = '{stage}' and attributes.status = 'RUNNING'"
    running = with_retries(lambda: client.search_runs([experiment_id], query, max_results=1000))
    orphans = [run for run in running if owner_is_gone(run.data.tags.get(OWNER_TAG, ""))]
    for run in orphans:
        with_retries(lambda: client.set_terminated(run.info.run_id, "KILLED"))
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and parent != own_parent and with_retries(lambda: client.get_run(parent)).info.status == "RUNNING":
            with_retries(lambda: client.set_terminated(parent, "KILLED"))


def _experiment_id(client: MlflowClient, name: str, uri: str, root: Path) -> str:
    found = with_retries(lambda: client.get_experiment_by_name(name))
    if found is not None:
        return found.experiment_id
    # Default artifact roots are relative to the working directory, which for queued DVC experiments is
    # a temporary copy; anchor them next to the SQLite database instead.
    location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as err:  # a stage on another machine created it meanwhile
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return with_retries(lambda: client.get_experiment_by_name(name)).experiment_id


def _parent_run(client: MlflowClient, experiment_id: str, group: str) -> str:
    query = f"tags.`{RUN_GROUP_TAG}` = '{group}' and tags.`{PARENT_TAG}` = 'true'"
    found = with_retries(lambda: client.search_runs([experiment_id], query, max_results=1))
    if found:
        parent_id = found[0].info.run_id
        with_retries(lambda: client.update_run(parent_id, status="RUNNING"))
        return parent_id
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"
    tags = {RUN_GROUP_TAG: group, PARENT_TAG: "true", "dvc.exp_name": os.environ.get("DVC_EXP_NAME", "")}
    return with_retries(lambda: client.create_run(experiment_id, run_name=name, tags=tags)).info.run_id


def _start_system_metrics(run_id: str, uri: str, interval_s: float):
    """MLflow's own monitor (psutil; GPUs through nvidia-ml-py when installed), sampling in a thread."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                   tracking_uri=uri)
    monitor.start()
    return monitor


def _raise_on_sigterm():
    """Outside the training loop (which checkpoints first), SIGTERM ends the run as KILLED."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return None
