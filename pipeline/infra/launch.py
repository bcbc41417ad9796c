"""Multi-process and multi-node training stages: a stage whose ``train`` section asks for more than one
process or node runs under torchrun, and a stage that an outside launcher started joins that job.

The stage command in dvc.yaml stays ``python -m stages.X``: DVC, `dvc exp run -S` and the fingerprint
of a run see parameters, not a launcher, and the same dvc.yaml serves a laptop, an 8-GPU node and a
cluster. How a stage process proceeds (``plan_launch``):

- no launcher, one process, one node: it trains as it is;
- no launcher, ``processes`` > 1 on one node: it re-executes itself under ``torchrun --standalone``;
- no launcher, ``nodes`` > 1: it re-executes itself under torchrun with c10d rendezvous at ``rendezvous``
  (else ``MASTER_ADDR:MASTER_PORT``), through this module's ``main`` so that a rendezvous that cannot
  complete within ``rendezvous_timeout_s`` ends in one line; every node runs the same stage command;
- started by torchrun (``LOCAL_RANK`` set, e.g. ``torchrun --nnodes 2 ... -m stages.teacher NAME``): it
  joins that job, after checking that the job's node and per-node process counts match the section;
- started by ``srun``: one task per node re-executes under torchrun as above (rendezvous id from the
  job), one task per process joins directly as rank ``SLURM_PROCID``.

Global rank 0 alone writes files and tracks the run (``is_main_process``). Every failure to set the job up
is a ``ValueError`` naming the ``train`` key, raised before any training.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pipeline.infra.endpoint import DEFAULT_PORT, parse_endpoint

WORKER_ENV = "LOCAL_RANK"  # torchrun sets it in every worker it starts
RDZV_ID_ENV = "PIPELINE_RDZV_ID"  # overrides the rendezvous id every node derives from the stage command
SLURM_STEP_ENV = "SLURM_STEP_NUM_TASKS"  # srun sets it for the tasks of a job step; a batch script lacks it


class TrainSection(Protocol):
    """What the launcher reads of a ``train`` section (``pipeline.config.TrainConfig`` is one): named here
    so that the infrastructure does not import the params schema, which imports it."""

    batch_size: int
    processes: int | Literal["auto"]
    nodes: int | Literal["auto"]
    rendezvous: str | None
    rendezvous_timeout_s: int


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that writes files and tracks the run."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class LaunchPlan:
    """What a stage process does with its ``train`` section (see ``plan_launch``).

    ``action``: ``"run"`` trains in this process (alone, or as a worker of the job that started it);
    ``"join"`` sets ``env`` and then trains as one rank of an srun job; ``"exec"`` replaces this process by
    ``command``. ``endpoint`` is the rendezvous (host, port) of a multi-node job; ``hosting`` is False
    for a node that cannot host its store, which is refused early when the endpoint never answers.
    """

    action: Literal["run", "join", "exec"]
    nodes: int
    processes: int
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    endpoint: tuple[str, int] | None = None
    hosting: bool = True


def _resolve_processes(train: TrainSection, key: str, gpus: int) -> int:
    """Processes per node that the ``train`` section at dotted ``key`` asks for. ``"auto"``: one per visible
    GPU (one on a CPU machine). More processes than visible GPUs is refused (they would only compete)."""
    processes = max(1, gpus) if train.processes == "auto" else train.processes
    if gpus and processes > gpus:
        raise ValueError(f"{key}.processes: {processes} processes asked for, but only {gpus} CUDA device(s) "
                         "are visible")
    return processes


def _check_batch(train: TrainSection, key: str, world_size: int) -> None:
    """``batch_size`` is the global batch: it must split evenly over every process of the job."""
    if train.batch_size % world_size:
        raise ValueError(f"{key}.batch_size: {train.batch_size} does not split evenly over {world_size} processes "
                         f"({key}.processes = {train.processes!r}, {key}.nodes = {train.nodes!r})")


def _check_counts(train: TrainSection, key: str, nodes: int, per_node: int, source: str) -> None:
    """A job that a launcher started must be the one the section describes ("auto" accepts the launcher's)."""
    if train.nodes != "auto" and train.nodes != nodes:
        raise ValueError(f"{key}.nodes: {train.nodes}, but {source} started {nodes} node(s); set {key}.nodes to "
                         f"{nodes} (or 'auto') or start {train.nodes} nodes")
    if train.processes != "auto" and train.processes != per_node:
        raise ValueError(f"{key}.processes: {train.processes}, but {source} started {per_node} process(es) per "
                         f"node; set {key}.processes to {per_node} (or 'auto') or start {train.processes} per node")
    _check_batch(train, key, nodes * per_node)


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``rack[1-2]-gpu[003-005,9],cpu1`` -> ``rack1-gpu003``): where
    the job's first task, rank 0, runs."""
    depth, entry = 0, []
    for char in nodelist.strip():
        if char == "," and depth == 0:
            break
        depth += (char == "[") - (char == "]")
        entry.append(char)
    host = re.sub(r"\[([^\]]*)\]", lambda group: group[1].split(",")[0].split("-")[0], "".join(entry))
    if not host or "[" in host or "]" in host:
        raise ValueError(f"SLURM_JOB_NODELIST: cannot read a host from {nodelist!r}")
    return host


def _endpoint(train: TrainSection, key: str, environ: Mapping[str, str], nodes: int) -> tuple[str, int]:
    """Where the nodes meet: ``rendezvous`` in params.yaml, else ``MASTER_ADDR[:MASTER_PORT]``, else (under
    SLURM) the job's first node, on ``MASTER_PORT`` or 29400."""
    if train.rendezvous:
        return parse_endpoint(train.rendezvous, f"{key}.rendezvous")
    if environ.get("MASTER_ADDR"):
        port = environ.get("MASTER_PORT") or str(DEFAULT_PORT)
        return parse_endpoint(f"{environ['MASTER_ADDR']}:{port}", "MASTER_ADDR / MASTER_PORT")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if nodelist:
        return parse_endpoint(f"{slurm_first_host(nodelist)}:{environ.get('MASTER_PORT') or DEFAULT_PORT}",
                              "SLURM_JOB_NODELIST / MASTER_PORT")
    raise ValueError(f"{key}.rendezvous: {nodes} nodes need a rendezvous endpoint host:port that every node can "
                     "reach (or MASTER_ADDR / MASTER_PORT in the environment)")


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine (loopback, its hostname, or one of its addresses): torchrun's c10d
    backend then hosts the rendezvous store here, so there is nothing to reach yet."""
    from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname

    return _matches_machine_hostname(host)


def check_endpoint(host: str, port: int, timeout_s: float, key: str, hosting: bool) -> None:
    """Refuse, in one line and within ``timeout_s``, an endpoint whose host does not resolve, or (for a node
    that does not host the store) one that accepts no connection before the timeout: the host node may
    still be starting, so connecting is retried until then."""
    try:
        socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as err:
        raise ValueError(f"{key}: rendezvous host {host!r} does not resolve ({err})") from None
    if hosting:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(0.1, deadline - time.monotonic()))):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ValueError(f"{key}: rendezvous endpoint {host}:{port} unreachable for {timeout_s:g} s ({err}); "
                                 "start the stage on the node that hosts it, or fix the endpoint") from None
            time.sleep(0.5)


def rendezvous_id(module: str, argv: list[str], environ: Mapping[str, str]) -> str:
    """The id all nodes of one job agree on: ``PIPELINE_RDZV_ID``, else the SLURM job and step, else derived
    from the stage command (every node runs the same one)."""
    if environ.get(RDZV_ID_ENV):
        return environ[RDZV_ID_ENV]
    if environ.get("SLURM_JOB_ID"):
        return f"slurm-{environ['SLURM_JOB_ID']}-{environ.get('SLURM_STEP_ID', '0')}"
    digest = hashlib.sha1(" ".join([module, *argv]).encode()).hexdigest()[:12]
    return f"{module.rsplit('.', 1)[-1]}-{digest}"


def plan_launch(module: str, argv: list[str], train: TrainSection, key: str, environ: Mapping[str, str],
                gpus: int = 0) -> LaunchPlan:
    """Decide, from the ``train`` section at ``key`` and the environment, how this stage process runs
    (see the module docstring). Pure apart from reading ``environ``, so every case is testable."""
    if WORKER_ENV in environ:  # a torchrun worker: ours, or an outside torchrun's
        world = int(environ.get("WORLD_SIZE", "1"))
        per_node = int(environ.get("LOCAL_WORLD_SIZE", world))
        nodes = int(environ.get("GROUP_WORLD_SIZE", max(1, world // max(1, per_node))))
        source = f"torchrun (GROUP_WORLD_SIZE={nodes}, LOCAL_WORLD_SIZE={per_node})"
        _check_counts(train, key, nodes, per_node, source)
        return LaunchPlan("run", nodes, per_node)
    if SLURM_STEP_ENV in environ and "SLURM_PROCID" in environ:
        return _plan_slurm(module, argv, train, key, environ, gpus)
    nodes = 1 if train.nodes == "auto" else train.nodes
    processes = _resolve_processes(train, key, gpus)
    _check_batch(train, key, nodes * processes)
    if nodes == 1:
        if processes == 1:
            return LaunchPlan("run", 1, 1)
        return LaunchPlan("exec", 1, processes, command=[
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", module, *argv])
    host, port = _endpoint(train, key, environ, nodes)
    return _multinode_plan(module, argv, train, key, environ, nodes, processes, host, port, None)


def _plan_slurm(module: str, argv: list[str], train: TrainSection, key: str, environ: Mapping[str, str],
                gpus: int) -> LaunchPlan:
    """An srun task: one task per node runs torchrun for its node; one task per process is a rank itself."""
    tasks = int(environ[SLURM_STEP_ENV])
    nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    source = f"srun (SLURM_STEP_NUM_NODES={nodes}, SLURM_STEP_NUM_TASKS={tasks})"
    if train.nodes != "auto" and train.nodes != nodes:
        raise ValueError(f"{key}.nodes: {train.nodes}, but {source} started {nodes} node(s); set {key}.nodes to "
                         f"{nodes} (or 'auto') or run srun with --nodes {train.nodes}")
    if tasks == nodes:  # one task per node: this task starts its node's processes
        processes = _resolve_processes(train, key, gpus)
        _check_batch(train, key, nodes * processes)
        if nodes == 1 and processes == 1:
            return LaunchPlan("run", 1, 1)
        if nodes == 1:
            return LaunchPlan("exec", 1, processes, command=[
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "-m", module, *argv])
        host, port = _endpoint(train, key, environ, nodes)
        derived = train.rendezvous is None and not environ.get("MASTER_ADDR")
        # An endpoint named after the job's first node: that node hosts the store, the others reach it.
        hosting = int(environ.get("SLURM_NODEID", "0")) == 0 if derived else None
        return _multinode_plan(module, argv, train, key, environ, nodes, processes, host, port, hosting)
    if tasks % nodes:
        raise ValueError(f"{key}.processes: {source} does not place the same number of tasks on every node; run "
                         "one task per node or one per process")
    per_node = tasks // nodes
    _check_counts(train, key, nodes, per_node, source)
    host, port = _endpoint(train, key, environ, nodes)
    rank = int(environ["SLURM_PROCID"])
    env = {"RANK": str(rank), "WORLD_SIZE": str(tasks), "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
           "LOCAL_WORLD_SIZE": str(per_node), "GROUP_RANK": environ.get("SLURM_NODEID", "0"),
           "GROUP_WORLD_SIZE": str(nodes), "MASTER_ADDR": host, "MASTER_PORT": str(port)}
    return LaunchPlan("join", nodes, per_node, env=env, endpoint=(host, port), hosting=rank == 0)


def _multinode_plan(module: str, argv: list[str], train: TrainSection, key: str, environ: Mapping[str, str],
                    nodes: int, processes: int, host: str, port: int, hosting: bool | None) -> LaunchPlan:
    """torchrun with c10d rendezvous, run through ``python -m pipeline.infra.launch`` (see ``main``)."""
    timeout = train.rendezvous_timeout_s
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conf = f"join_timeout={timeout},read_timeout={max(timeout, 60)}"
    if hosting is not None:
        conf += f",is_host={str(hosting).lower()}"
    command = [sys.executable, "-m", "pipeline.infra.launch", f"--key={key}", f"--nodes={nodes}",
               f"--endpoint={endpoint}", f"--timeout={timeout}", "--",
               f"--nnodes={nodes}", f"--nproc-per-node={processes}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rendezvous_id(module, argv, environ)}",
               f"--rdzv-conf={conf}", "--max-restarts=0", "-m", module, *argv]
    return LaunchPlan("exec", nodes, processes, command=command, endpoint=(host, port),
                      hosting=is_local_host(host) if hosting is None else hosting)


def relaunch_under_torchrun(module: str, argv: list[str], train: TrainSection, key: str) -> None:
    """Run the stage the way its ``train`` section at ``key`` and its launcher ask (``plan_launch``): return
    to train in this process, or replace this process by torchrun.

    exec rather than a child process: a signal DVC or a cluster scheduler sends to the stage reaches
    torchrun, which forwards it to every worker, and each worker checkpoints before exiting.
    """
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = plan_launch(module, argv, train, key, os.environ, gpus)
    if plan.endpoint is not None:
        check_endpoint(*plan.endpoint, train.rendezvous_timeout_s, f"{key}.rendezvous", plan.hosting)
    if plan.action == "join":
        os.environ.update(plan.env)
    if plan.action != "exec":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(plan.command[0], plan.command)


def _exit_code(err: BaseException) -> int:
    """The exit status of a failed torchrun job: its first failed worker's (128+N for a signal N)."""
    failures = getattr(err, "failures", None) or {}
    codes = [failure.exitcode for failure in failures.values()]
    code = next((c for c in codes if c), 1)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.infra.launch --key K --nodes N --endpoint E --timeout T -- TORCHRUN-ARGS``: torchrun
    whose setup failures end in one ``error:`` line naming the ``train`` key and exit 2 (torchrun's own
    report is pages long), and whose failed job exits as its first failed worker did."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.infra.launch")
    for name in ("--key", "--nodes", "--endpoint", "--timeout"):
        parser.add_argument(name, required=True)
    ours, rest = parser.parse_known_args(argv)
    rest = rest[1:] if rest[:1] == ["--"] else rest

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

    try:
        torchrun.run(torchrun.parse_args(rest))
        return 0
    except RendezvousTimeoutError:
        message = (f"{ours.key}.nodes: the rendezvous at {ours.endpoint} did not gather {ours.nodes} nodes within "
                   f"{ours.timeout} s ({ours.key}.rendezvous_timeout_s); start the stage on every node, or fix "
                   f"{ours.key}.nodes")
    except RendezvousError as err:
        cause = err.__cause__ or err.__context__
        detail = str(cause or err).splitlines()[0] if str(cause or err) else type(err).__name__
        message = f"{ours.key}.rendezvous: cannot use the rendezvous at {ours.endpoint} ({detail[:200]})"
    except SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        return _exit_code(failed)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
