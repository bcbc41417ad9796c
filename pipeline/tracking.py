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
- Start-up beside the stage's work: ``import mlflow`` and opening the run (client, experiment, parent,
  orphans, the run, its params) took 3.5-4 s of CPU here, before any stage computed. They now happen in
  the run's agent, a second Python process talked to over a socket pair: stages start it as they start
  (``prestart_agent``), and it imports MLflow while the stage reads its params; ``start_run`` checks the
  store, hands the agent the run to open and returns; the agent writes every call in order while the
  stage works, and the block's end waits for it and closes the run. Where MLflow is imported already
  (tests, a server store's check) the agent is a thread instead.
  Server and database stores judge permissions only at run creation, so there ``start_run`` waits for the
  run: a refusal still comes before any compute. A failure of the agent is raised in the stage, as one
  ``TrackingUnavailableError`` line, at the first logger call after it, at the latest at the block's end,
  before the stage writes the outputs it writes after the block. This module imports no MLflow itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow import MlflowClient

SQLITE_TIMEOUT_S = 60
RUN_GROUP_ENV = "PIPELINE_RUN_GROUP"
RUN_GROUP_TAG = "pipeline.run_group"
PARENT_TAG = "pipeline.parent"
OWNER_TAG = "pipeline.owner"
KILLED_REASON_TAG = "pipeline.killed_reason"
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
        detail = _first_line(getattr(err, "orig", None) or err, uri)
        raise TrackingUnavailableError(f"MLflow database store {shown} cannot be used ({detail}); check "
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
    """What ``start_run`` yields: metrics are buffered here (one request to the agent, one SQLite
    transaction, per flush rather than per value) and everything goes to the run's agent, which writes it
    to MLflow in order. Calls return without waiting, except ``log_artifact`` and ``run_id``; each raises
    the agent's failure, in one line, as soon as this process has heard of it."""

    def __init__(self, agent: _Agent | None, flush_every: int = 200) -> None:
        self._agent = agent
        self.flush_every = flush_every
        self._buffer: list[tuple[str, float, int, int]] = []
        self.history: dict[str, list[tuple[int, float]]] = {}

    @property
    def run_id(self) -> str:
        """The MLflow run's id: waits until the agent has created the run (kept after the block)."""
        if self._agent.run_id is None:
            self._agent.wait(_OPEN_REQUEST)
        return self._agent.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics; names MLflow refuses ('@') are spelt out: ``recall@1`` becomes ``recall_at_1``."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            key = mlflow_metric_name(key)
            self._buffer.append((key, float(value), now, int(step)))
            self.history.setdefault(key, []).append((int(step), float(value)))
        if len(self._buffer) >= self.flush_every:
            self._send_metrics()
        self._agent.raise_failure()

    def flush(self) -> None:
        self._send_metrics()
        self._agent.raise_failure()

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [(key, value[:6000]) for key, value in flatten_params(params).items()]
        self._agent.request("log_params", items)
        self._agent.raise_failure()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._agent.request("set_tags", {key: str(value) for key, value in tags.items()})
        self._agent.raise_failure()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Waits until the agent has copied the file, so the stage may change or remove it afterwards."""
        self._agent.wait(self._agent.request("log_artifact", str(Path(path).resolve()), artifact_path))

    def log_loss_curve(self, key: str = "train/loss", file_name: str = "loss_curve.png") -> None:
        self._send_loss_curve(key, file_name)
        self._agent.raise_failure()

    def call_in_agent(self, function: str, *args: Any) -> Any:
        """Run ``function`` (``"package.module:name"``) in the agent, after every call before it, on
        JSON-able ``args``, and return its JSON-able result: MLflow work beyond this run's (the parent
        run's report, ``pipeline.mlflow_views``) without importing MLflow in the stage."""
        number = self._agent.request("call", function, list(args))
        self._agent.wait(number)
        return self._agent.results.pop(number, None)

    def _send_metrics(self) -> None:
        if self._buffer:
            self._agent.request("log_metrics", self._buffer)
            self._buffer = []

    def _send_loss_curve(self, key: str = "train/loss", file_name: str = "loss_curve.png") -> None:
        if self.history.get(key):
            self._agent.request("log_loss_curve", key, self.history[key], file_name)


class DiscardingLogger(RunLogger):
    """The logger of torchrun ranks other than 0: rank 0's run records the job once."""

    run_id = ""

    def __init__(self) -> None:
        super().__init__(agent=None)

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

    def call_in_agent(self, function: str, *args: Any) -> Any:
        return None


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

    Returns once the store is checked and the run's agent started; the agent opens the run meanwhile
    (see the module's docstring), except for server and database stores, where it waits for the run.
    The block's end waits for every request to be written and the run to be closed.
    """
    from pipeline.launch import is_main_process

    if not is_main_process():
        yield DiscardingLogger()
        return
    uri = tracking_uri()
    check_tracking_store(uri)
    group = run_group_id()
    run_tags = {
        "dvc.stage": stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "device": device_name(),
        RUN_GROUP_TAG: group,
        OWNER_TAG: process_owner(),
        # torchrun's job size (1 / 1 for a plain process): which runs trained across processes and nodes
        "distributed.world_size": os.environ.get("WORLD_SIZE", "1"),
        "distributed.nodes": os.environ.get("GROUP_WORLD_SIZE", "1"),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    agent = _start_agent((uri, str(repository_root()), dict(os.environ), stage, name, run_name or stage,
                          group, run_tags, system_metrics, system_metrics_interval_s))
    logger = RunLogger(agent)
    previous_term = _raise_on_sigterm()
    status = "FINISHED"
    try:
        if urlparse(uri).scheme.lower() != "sqlite":  # a server judges permissions at run creation
            agent.wait(_OPEN_REQUEST)
        if params:
            logger.log_params(params)
        yield logger
        logger.flush()
        agent.wait(agent.requests)  # on success a refused metric or param must fail the stage, not vanish
    except (KeyboardInterrupt, SystemExit) as stop:
        status = "KILLED" if not isinstance(stop, SystemExit) or stop.code not in (0, None) else "FINISHED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        logger._send_metrics()
        logger._send_loss_curve()
        agent.close(status)


_OPEN_REQUEST = 1  # the agent's first request opens the run
_HEADER = struct.Struct("!I")
_AGENT_COMMAND = "import sys; from pipeline.tracking import _agent_main; _agent_main(int(sys.argv[1]))"
_ACTIONS = {"open": "opening the run", "log_metrics": "logging metrics", "log_params": "logging params",
            "set_tags": "setting tags", "log_artifact": "logging an artifact",
            "log_loss_curve": "logging the loss curve", "close": "closing the run"}


def _pack(message: Any) -> bytes:
    """One message for the socket: its length, then JSON (tuples arrive as lists; NaN and inf survive)."""
    payload = json.dumps(message).encode()
    return _HEADER.pack(len(payload)) + payload


def _unpack(buffer: bytearray) -> list[Any]:
    """The complete messages at the start of ``buffer``, removed from it."""
    messages = []
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        if len(buffer) < _HEADER.size + size:
            break
        messages.append(json.loads(bytes(buffer[_HEADER.size : _HEADER.size + size])))
        del buffer[: _HEADER.size + size]
    return messages


_prestarted: tuple[socket.socket, subprocess.Popen] | None = None


def prestart_agent() -> None:
    """Start the agent of this process's coming run now, so that MLflow's import (3-4 s of CPU) runs
    beside the stage's own start-up (arguments, params, its imports); ``start_run`` adopts it. For stage
    entry points (``pipeline.wiring.common.run_stage``). Nothing happens where MLflow is imported already or this
    process will open no run (torchrun ranks but 0); a process that ends without a run ends its agent."""
    global _prestarted
    from pipeline.launch import is_main_process

    if _prestarted is None and "mlflow" not in sys.modules and is_main_process():
        _prestarted = _spawn_agent()


def _start_agent(open_args: tuple) -> _Agent:
    """The run's agent, asked first to open the run: a thread where MLflow is imported already (nothing
    to overlap, no second interpreter to start), else the process ``prestart_agent`` started, else a new
    one."""
    global _prestarted
    prestarted, _prestarted = _prestarted, None
    if "mlflow" in sys.modules:
        if prestarted is not None:
            prestarted[0].close()  # that agent ends when it reads the end of its socket
        ours, theirs = socket.socketpair()
        thread = threading.Thread(target=_serve, args=(theirs,), name="mlflow-run-agent", daemon=True)
        thread.start()
        agent = _Agent(ours, thread=thread)
    else:
        ours, process = prestarted or _spawn_agent()
        agent = _Agent(ours, process=process)
    agent.request("open", *open_args)
    return agent


def _spawn_agent() -> tuple[socket.socket, subprocess.Popen]:
    """An agent process, in its own session: a Ctrl-C meant for the stage leaves it there to record the
    run as KILLED. It ends when its socket does."""
    ours, theirs = socket.socketpair()
    project = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        process = subprocess.Popen([sys.executable, "-c", _AGENT_COMMAND, str(theirs.fileno())],
                                   pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    except OSError as err:
        ours.close()
        raise TrackingUnavailableError(f"cannot start the MLflow agent process ({err})") from None
    finally:
        theirs.close()
    return ours, process


class _Agent:
    """This process's end of the run's agent. Requests are numbered and written without blocking (the
    stage never waits on MLflow unless it asks to); the agent answers each in order, and answers are read
    whenever the logger is called. The first failure is kept and raised once, as TrackingUnavailableError."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen | None = None,
                 thread: threading.Thread | None = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._process = process
        self._thread = thread
        self._outbox = bytearray()
        self._inbox = bytearray()
        self.requests = 0  # numbered from 1, the open request
        self._answered = 0
        self._gone = False
        self.run_id: str | None = None
        self.results: dict[int, Any] = {}  # request number -> what the agent returned, where not None
        self.failures: dict[int, str] = {}  # request number -> one-line message
        self._raised: set[int] = set()

    def request(self, op: str, *args: Any) -> int:
        """Queue request ``op(*args)``, write what the socket takes now, and return its number."""
        if self._gone:
            return self.requests
        self.requests += 1
        self._outbox += _pack((self.requests, op, args))
        self._exchange(wait_for=None)
        return self.requests

    def raise_failure(self) -> None:
        """Raise the agent's first failure not raised yet (once: the stage is failing by then)."""
        self._exchange(wait_for=None)
        new = sorted(self.failures.keys() - self._raised)
        if new:
            self._raised.update(self.failures)
            raise TrackingUnavailableError(self.failures[new[0]])

    def wait(self, request: int) -> None:
        """Block until request ``request`` and all before it are answered; raise a failure among them."""
        self._exchange(wait_for=request)
        self.raise_failure()

    def close(self, status: str) -> None:
        """End the run with ``status``, and the agent with it. A run that did not open or close raises its
        failure (the stage's own error would have come after it), unless raised already or the stage was
        interrupted."""
        number = None
        if _OPEN_REQUEST not in self.failures and not self._gone:
            number = self.request("close", status)
            self._exchange(wait_for=number)
        self._gone = True  # later calls write nothing
        self._sock.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if number is not None and self._answered >= number and number not in self.failures:
            return
        failed = number if number in self.failures else min(self.failures)
        if status != "KILLED" and failed not in self._raised:
            raise TrackingUnavailableError(self.failures[failed])

    def _exchange(self, wait_for: int | None) -> None:
        """Write and read what the socket allows; with ``wait_for``, until that request is answered."""
        while not self._gone:
            if wait_for is not None and self._answered >= wait_for:
                return
            writing = [self._sock] if self._outbox else []
            timeout = None if wait_for is not None else 0
            readable, writable, _ = select.select([self._sock], writing, [], timeout)
            if not readable and not writable:
                return
            try:
                if writable:
                    del self._outbox[: self._sock.send(self._outbox)]
                if readable:
                    data = self._sock.recv(1 << 16)
                    if not data:
                        self._lost()
                    self._inbox += data
            except BlockingIOError:
                continue
            except OSError:
                self._lost()
            for number, ok, value in _unpack(self._inbox):
                self._answered = number
                if not ok:
                    self.failures.setdefault(number, value)
                elif number == _OPEN_REQUEST:
                    self.run_id = value
                elif value is not None:
                    self.results[number] = value

    def _lost(self) -> None:
        """The agent's end closed: after a failure it reported, or a crash (the failure recorded here)."""
        self._gone = True
        if not self.failures:
            code = self._process.poll() if self._process is not None else None
            self.failures[self._answered + 1] = (f"the MLflow agent of this run ended without answering "
                                                 f"(exit status {code}); the run may be incomplete")


def _agent_main(fd: int) -> None:
    """The agent process (``python -c``): serve the stage on socket ``fd``, then leave without the
    interpreter's teardown of MLflow (a second or more), as stages do (``pipeline.wiring.common.run_stage``)."""
    code = 0
    preload = threading.Thread(target=_preload, name="mlflow-preload", daemon=True)
    preload.start()
    try:
        _serve(socket.socket(fileno=fd), preload)
    except (BrokenPipeError, ConnectionResetError):  # the stage is gone
        code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _preload() -> None:
    """What opening a run imports, while the agent waits for its first request (errors show at open)."""
    with contextlib.suppress(Exception):
        from mlflow import MlflowClient  # noqa: F401

        scheme = urlparse(os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:").scheme.lower()
        if scheme == "sqlite" or scheme.split("+")[0] in DATABASE_SCHEMES:
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def _serve(sock: socket.socket, preload: threading.Thread | None = None) -> None:
    """The agent's loop: open the run, then apply each request in order and answer it, until the run is
    closed. A stage killed outright closes its end: its run stays RUNNING for ``close_orphaned_runs``."""
    sock.setblocking(True)
    writer: _RunWriter | None = None
    uri = ""
    try:
        for number, op, args in _requests(sock):
            try:
                if op == "open":
                    uri = args[0]
                    if preload is not None:
                        preload.join()
                    writer = _RunWriter.open(*args)
                    result = writer.run_id
                else:
                    result = getattr(writer, op)(*args)
            except Exception as err:
                action = f"calling {args[0]}" if op == "call" else _ACTIONS.get(op, op)
                sock.sendall(_pack((number, False, _failure_line(err, uri, action))))
                if writer is None:
                    return  # no run to write to
            else:
                sock.sendall(_pack((number, True, result)))
            if op == "close":
                return
    finally:
        if writer is not None:
            writer.stop_monitor()
        sock.close()


def _requests(sock: socket.socket) -> Iterator[tuple[int, str, tuple]]:
    inbox = bytearray()
    while data := sock.recv(1 << 16):
        inbox += data
        yield from _unpack(inbox)


def _failure_line(err: Exception, uri: str, action: str) -> str:
    if isinstance(err, TrackingUnavailableError):
        return str(err)
    return f"MLflow store {redact_uri(uri)}: {action} failed ({type(err).__name__}: {_first_line(err, uri)})"


def _first_line(err: BaseException, uri: str) -> str:
    """The first line of ``err``'s message, without the password of ``uri`` and without SQLAlchemy's
    advice on autoflush, which stands before the database's own error on a damaged store."""
    message = re.sub(r"\(raised as a result of Query-invoked autoflush;[^)]*\)\s*", "", str(err))
    detail = (message.strip().splitlines() or [type(err).__name__])[0]
    password = urlparse(uri).password
    return (detail.replace(password, "***") if password else detail)[:300]


class _RunWriter:
    """The agent's side of one run: MLflow calls, retried while SQLite's write lock is held elsewhere."""

    def __init__(self, client: MlflowClient, run_id: str, parent_id: str, monitor: Any = None) -> None:
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self.monitor = monitor

    @classmethod
    def open(cls, uri: str, root_dir: str, env: dict[str, str], stage: str, experiment: str, run_name: str,
             group: str, tags: dict[str, str], system_metrics: bool,
             system_metrics_interval_s: float) -> _RunWriter:
        """Open the run, in the environment the stage had at ``start_run`` (an agent started before may
        have missed its later settings)."""
        if env != os.environ:
            os.environ.clear()
            os.environ.update(env)
        from mlflow import MlflowClient

        root = Path(root_dir)
        refused = _refusals_in_one_line(redact_uri(uri))
        with refused, _store_lock(uri):
            client = MlflowClient(uri)
            experiment_id = _experiment_id(client, experiment, uri, root)
            parent_id = _parent_run(client, experiment_id, group)
            close_orphaned_runs(client, experiment_id, stage, parent_id)
        run_tags = {"git.commit": git_commit(root), "mlflow.parentRunId": parent_id, **tags}
        with _refusals_in_one_line(redact_uri(uri)):
            run = with_retries(lambda: client.create_run(experiment_id, run_name=run_name, tags=run_tags))
        run_id = run.info.run_id
        monitor = _start_system_metrics(run_id, uri, system_metrics_interval_s) if system_metrics else None
        return cls(client, run_id, parent_id, monitor)

    def log_metrics(self, records: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(*record) for record in records]
        for start in range(0, len(metrics), 1000):
            with_retries(lambda: self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000]))

    def log_params(self, items: list[tuple[str, str]]) -> None:
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in items]
        for start in range(0, len(params), 100):
            with_retries(lambda: self.client.log_batch(self.run_id, params=params[start : start + 100]))

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            with_retries(lambda: self.client.set_tag(self.run_id, key, value))

    def log_artifact(self, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_loss_curve(self, key: str, points: list[tuple[int, float]], file_name: str) -> None:
        with contextlib.suppress(Exception):  # a figure never fails a stage
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

    def call(self, function: str, args: list[Any]) -> Any:
        import importlib

        module, name = function.split(":")
        return getattr(importlib.import_module(module), name)(*args)

    def close(self, status: str) -> None:
        self.stop_monitor()
        with_retries(lambda: self.client.set_terminated(self.run_id, status))
        with_retries(lambda: self.client.update_run(self.parent_id, status=status))

    def stop_monitor(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()


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
    """Mark KILLED every stage run of the experiment left RUNNING by a process that no longer exists (a
    kill -9, a lost machine), with the reason as a tag, and its parent run unless it is this invocation's:
    the UI must not show a dead run as in progress. Every stage start does it, whichever stage died:
    DVC may restore the dead stage's outputs from its run cache and never start it again."""
    query = "attributes.status = 'RUNNING'"
    running = with_retries(lambda: client.search_runs([experiment_id], query, max_results=1000))
    orphans = [run for run in running if OWNER_TAG in run.data.tags and owner_is_gone(run.data.tags[OWNER_TAG])]
    for run in orphans:
        reason = (f"process {run.data.tags[OWNER_TAG]} ended without closing its run; closed by {stage} "
                  f"at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        with_retries(lambda: client.set_tag(run.info.run_id, KILLED_REASON_TAG, reason))
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
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as err:  # a stage on another machine created it meanwhile
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
