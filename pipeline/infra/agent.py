"""The run's agent: a second Python process that imports MLflow and writes the stage's run, talked to
over a socket pair with length-prefixed JSON messages.

``import mlflow`` and opening the run (client, experiment, parent, orphans, the run, its params) took
3.5-4 s of CPU here, before any stage computed. They happen in the agent instead: stages start it as they
start (``prestart_agent``), and it imports MLflow while the stage reads its params; ``start_run``
(``pipeline.infra.run_logger``) hands it the run to open and returns; the agent applies every request in
order while the stage works. Where MLflow is imported already (tests, a server store's check) the agent
is a thread instead. This module imports no MLflow at its top.

Measured against MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``) on a stage's
tracking pattern, the agent's process ends 1.2-1.5x sooner (benchmarks/tracking_agent.py, BENCHMARKS.md):
asynchronous logging still imports MLflow and opens the run in the training process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.infra.launch import is_main_process
from pipeline.infra.runs import RunWriter
from pipeline.infra.store import DATABASE_SCHEMES, TrackingUnavailableError, first_line, redact_uri

OPEN_REQUEST = 1  # the agent's first request opens the run
_HEADER = struct.Struct("!I")
_AGENT_COMMAND = "import sys; from pipeline.infra.agent import agent_main; agent_main(int(sys.argv[1]))"
_ACTIONS = {"open": "opening the run", "log_metrics": "logging metrics", "log_params": "logging params",
            "set_tags": "setting tags", "log_artifact": "logging an artifact",
            "log_loss_curve": "logging the loss curve", "close": "closing the run"}


def qualified_name(function: Callable[..., Any]) -> str:
    """How a ``call`` request names a module-level function: ``module:qualname``, refused unless the
    agent's ``resolve`` finds this very function under it."""
    name = f"{function.__module__}:{function.__qualname__}"
    if "<" in name or resolve(name) is not function:
        raise ValueError(f"{name}: the run's agent calls module-level functions only")
    return name


def resolve(name: str) -> Callable[..., Any]:
    """The function ``qualified_name`` named, imported (in the agent) where it is not yet."""
    module, qualname = name.split(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


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
    entry points (``stages.common.run_stage``). Nothing happens where MLflow is imported already or this
    process will open no run (torchrun ranks but 0); a process that ends without a run ends its agent."""
    global _prestarted
    if _prestarted is None and "mlflow" not in sys.modules and is_main_process():
        _prestarted = _spawn_agent()


def start_agent(open_args: tuple) -> Agent:
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
        agent = Agent(ours, thread=thread)
    else:
        ours, process = prestarted or _spawn_agent()
        agent = Agent(ours, process=process)
    agent.request("open", *open_args)
    return agent


def _spawn_agent() -> tuple[socket.socket, subprocess.Popen]:
    """An agent process, in its own session: a Ctrl-C meant for the stage leaves it there to record the
    run as KILLED. It ends when its socket does."""
    ours, theirs = socket.socketpair()
    project = str(Path(__file__).resolve().parents[2])
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


class Agent:
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
        if OPEN_REQUEST not in self.failures and not self._gone:
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
                elif number == OPEN_REQUEST:
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


def agent_main(fd: int) -> None:
    """The agent process (``python -c``): serve the stage on socket ``fd``, then leave without the
    interpreter's teardown of MLflow (a second or more), as stages do (``stages.common.run_stage``)."""
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
    writer: RunWriter | None = None
    uri = ""
    try:
        for number, op, args in _requests(sock):
            try:
                if op == "open":
                    uri = args[0]
                    if preload is not None:
                        preload.join()
                    writer = RunWriter.open(*args)
                    result = writer.run_id
                elif op == "call":
                    result = resolve(args[0])(*args[1])
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
    return f"MLflow store {redact_uri(uri)}: {action} failed ({type(err).__name__}: {first_line(err, uri)})"
