"""What a stage's MLflow run is: its tags, its group and parent run, its owner, and the MLflow calls that
open, write and close it (``RunWriter``, which the run's agent drives; ``pipeline.infra.agent``).

- Grouping: runs of one pipeline invocation hang under one parent run, found by a run-group id:
  ``PIPELINE_RUN_GROUP`` when set, else the ``dvc`` process that spawned this stage (its pid and start
  time, so the stages of one ``dvc repro`` share it while two invocations never do), else a fresh id.
- Status: FINISHED on success, KILLED on KeyboardInterrupt / SIGTERM / non-zero SystemExit, else FAILED.
  A process killed outright (SIGKILL, OOM killer, power loss) cannot close its run; the next run of the
  same stage on the same host finds it RUNNING with its owning process gone and marks it KILLED.

MLflow is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.infra.store import TrackingUnavailableError, redact_uri, store_lock, with_retries

if TYPE_CHECKING:
    from mlflow import MlflowClient

RUN_GROUP_ENV = "PIPELINE_RUN_GROUP"
RUN_GROUP_TAG = "pipeline.run_group"
PARENT_TAG = "pipeline.parent"
OWNER_TAG = "pipeline.owner"
KILLED_REASON_TAG = "pipeline.killed_reason"
DEFAULT_EXPERIMENT = "embedding-transfer"


def dotted_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys as `dvc params diff` / `dvc exp show` print them; lists become JSON strings (what
    ``pipeline.config.flatten`` makes of params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(dotted_keys(value, f"{dotted}."))
        elif isinstance(value, (list, dict)):
            flat[dotted] = json.dumps(value)
        else:
            flat[dotted] = value
    return flat


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """DVC's dotted keys (``teacher.optim.lr``), as ``pipeline.config.flatten`` spells them, as strings."""
    return {key: str(value) for key, value in dotted_keys(dict(params)).items()}


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



def process_owner() -> str:
    """``host:pid:start-time`` of this process: names it for good, since pids are reused."""
    import psutil

    process = psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{int(process.create_time())}"


def owner_is_gone(owner: str) -> bool:
    """True only when the owner ran on this host and no live process with its pid and start time exists; a
    run from another host, or written before owners were tagged, is never declared dead. A zombie is dead:
    a stage killed -9 under DVC is a grandchild nobody may reap for a while (in a container whose PID 1
    does not reap, never), and its run must still be closed."""
    import psutil

    try:
        host, pid, started = owner.rsplit(":", 2)
        if host != socket.gethostname():
            return False
        process = psutil.Process(int(pid))
        return int(process.create_time()) != int(started) or process.status() == psutil.STATUS_ZOMBIE
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


class RunWriter:
    """The agent's side of one run: MLflow calls, retried while SQLite's write lock is held elsewhere."""

    def __init__(self, client: MlflowClient, run_id: str, parent_id: str, monitor: Any = None) -> None:
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self.monitor = monitor

    @classmethod
    def open(cls, uri: str, root_dir: str, env: dict[str, str], stage: str, experiment: str, run_name: str,
             group: str, tags: dict[str, str], system_metrics: bool,
             system_metrics_interval_s: float) -> RunWriter:
        """Open the run, in the environment the stage had at ``start_run`` (an agent started before may
        have missed its later settings)."""
        if env != os.environ:
            os.environ.clear()
            os.environ.update(env)
        from mlflow import MlflowClient

        root = Path(root_dir)
        refused = _refusals_in_one_line(redact_uri(uri))
        with refused, store_lock(uri):
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
