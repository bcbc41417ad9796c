"""What a stage calls to track its run: ``start_run`` and the ``RunLogger`` it yields.

``start_run`` checks the store (``pipeline.infra.store``), hands the run's agent (``pipeline.infra.agent``)
the run to open and returns; the agent writes every call in order while the stage works, and the block's
end waits for it and closes the run. Server and database stores judge permissions only at run creation,
so there ``start_run`` waits for the run: a refusal still comes before any compute. A failure of the
agent is raised in the stage, as one ``TrackingUnavailableError`` line, at the first logger call after
it, at the latest at the block's end, before the stage writes the outputs it writes after the block.
This module imports no MLflow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from pipeline.infra.agent import OPEN_REQUEST, Agent, qualified_name, start_agent
from pipeline.infra.launch import is_main_process
from pipeline.infra.runs import (DEFAULT_EXPERIMENT, OWNER_TAG, RUN_GROUP_TAG, device_name, flatten_params,
                                 process_owner, run_group_id)
from pipeline.infra.store import check_tracking_store, repository_root, tracking_uri
from pipeline.metrics import mlflow_name

R = TypeVar("R")


class RunLogger:
    """What ``start_run`` yields: metrics are buffered here (one request to the agent, one SQLite
    transaction, per flush rather than per value) and everything goes to the run's agent, which writes it
    to MLflow in order. Calls return without waiting, except ``log_artifact`` and ``run_id``; each raises
    the agent's failure, in one line, as soon as this process has heard of it."""

    def __init__(self, agent: Agent | None, flush_every: int = 200) -> None:
        self._agent = agent
        self.flush_every = flush_every
        self._buffer: list[tuple[str, float, int, int]] = []
        self.history: dict[str, list[tuple[int, float]]] = {}

    @property
    def run_id(self) -> str:
        """The MLflow run's id: waits until the agent has created the run (kept after the block)."""
        if self._agent.run_id is None:
            self._agent.wait(OPEN_REQUEST)
        return self._agent.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics; names MLflow refuses ('@') are spelt out: ``recall@1`` becomes ``recall_at_1``."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            key = mlflow_name(key)
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

    def call_in_agent(self, function: Callable[..., R], *args: Any) -> R:
        """Run module-level ``function`` in the agent, after every call before it, on JSON-able ``args``,
        and return its JSON-able result: MLflow work beyond this run's (the parent run's report,
        ``pipeline.infra.views``) without importing MLflow in the stage."""
        number = self._agent.request("call", qualified_name(function), list(args))
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

    def call_in_agent(self, function: Callable[..., R], *args: Any) -> R | None:
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
    agent = start_agent((uri, str(repository_root()), dict(os.environ), stage, name, run_name or stage,
                          group, run_tags, system_metrics, system_metrics_interval_s))
    logger = RunLogger(agent)
    previous_term = _raise_on_sigterm()
    status = "FINISHED"
    try:
        if urlparse(uri).scheme.lower() != "sqlite":  # a server judges permissions at run creation
            agent.wait(OPEN_REQUEST)
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


def _raise_on_sigterm():
    """Outside the training loop (which checkpoints first), SIGTERM ends the run as KILLED."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        return None
