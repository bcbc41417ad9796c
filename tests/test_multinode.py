"""Multi-node DDP through torchrun's c10d rendezvous (pipeline.infra.launch), simulated on one machine.

Default run (about 15 s): every launch decision of `plan_launch` (no launcher, torchrun workers, srun
tasks), and the three refusals a user meets first, each one `error:` line before any training: an outside
launcher whose node count does not match params.yaml, a rendezvous that never gathers its nodes (bounded
by `rendezvous_timeout_s`), and a SLURM node whose head node never comes up.

Slow (`-m slow`, about 3 minutes on 2 cores): two torchrun launchers on 127.0.0.1, one per simulated
node, gloo, one process each (node A is the stage relaunching itself from params.yaml, node B an outside
`torchrun --nnodes 2` that the stage joins without relaunching), train a teacher stage; SIGTERM to both
nodes checkpoints, the re-run resumes, and losses, steps and weights equal a single-launcher two-process
run of the same stage.
"""
from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
import yaml

from faults_support import (
    BIN,
    FAULT_STEPS,
    PAUSE_ENV,
    Background,
    assert_one_line_refusal,
    assert_same_weights,
    fault_params,
    make_repo,
    mlflow_runs,
    pause_marker,
    read_json,
    stage,
    stage_forked,
    stage_runs,
    warm_up,
)
from pipeline.infra import endpoint, launch
from pipeline.config import ConfigError, TrainConfig, load_params

KEY = "teachers.x.train"


def train(**fields) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=64, optimizer={"lr": 0.001}, **fields)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- launch decisions -------------------------------------------------------------------------------------

def test_no_launcher_one_process_trains_here_and_several_relaunch_standalone():
    assert launch.plan_launch("stages.teacher", ["x"], train(), KEY, {}).action == "run"
    plan = launch.plan_launch("stages.teacher", ["x"], train(processes=2), KEY, {})
    assert plan.action == "exec" and "--standalone" in plan.command and "--nproc-per-node=2" in plan.command
    assert plan.command[-3:] == ["-m", "stages.teacher", "x"]


def test_several_nodes_from_params_relaunch_under_c10d_rendezvous_with_a_bounded_timeout():
    section = train(nodes=2, processes=2, rendezvous="10.1.2.3:29500", rendezvous_timeout_s=45)
    plan = launch.plan_launch("stages.teacher", ["x"], section, KEY, {})
    assert plan.action == "exec" and plan.command[1:3] == ["-m", "pipeline.infra.launch"]
    torchrun = plan.command[plan.command.index("--") + 1:]
    assert {"--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.1.2.3:29500",
            "--max-restarts=0"} <= set(torchrun)
    assert "--rdzv-conf=join_timeout=45,read_timeout=60" in torchrun
    assert plan.endpoint == ("10.1.2.3", 29500) and plan.hosting is False  # not this machine: probed first
    # Every node derives the same id from the same command; another stage gets another.
    ids = {launch.rendezvous_id("stages.teacher", argv, {}) for argv in (["x"], ["x"], ["y"])}
    assert len(ids) == 2
    assert f"--rdzv-id={launch.rendezvous_id('stages.teacher', ['x'], {})}" in torchrun


def test_endpoint_comes_from_params_else_master_addr_else_is_refused_naming_the_key():
    section = train(nodes=2)
    plan = launch.plan_launch("stages.teacher", ["x"], section, KEY,
                              {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"})
    assert plan.endpoint == ("127.0.0.1", 29555) and plan.hosting is True
    with pytest.raises(ValueError, match=rf"^{KEY}\.rendezvous: 2 nodes need a rendezvous endpoint"):
        launch.plan_launch("stages.teacher", ["x"], section, KEY, {})
    with pytest.raises(ValueError, match=rf"^{KEY}\.batch_size: 64 does not split evenly over 6 processes"):
        launch.plan_launch("stages.teacher", ["x"], train(nodes=3, processes=2), KEY, {"MASTER_ADDR": "h"})


TORCHRUN_2x1 = {"LOCAL_RANK": "0", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "2"}


def test_a_worker_of_an_outside_torchrun_joins_it_when_the_counts_match():
    for section in (train(nodes=2), train(nodes="auto"), train(nodes="auto", processes="auto")):
        plan = launch.plan_launch("stages.teacher", ["x"], section, KEY, TORCHRUN_2x1)
        assert (plan.action, plan.nodes, plan.processes, plan.command) == ("run", 2, 1, [])


@pytest.mark.parametrize("section, expected", [
    (train(), [f"{KEY}.nodes: 1, but torchrun (GROUP_WORLD_SIZE=2, LOCAL_WORLD_SIZE=1) started 2 node(s)"]),
    (train(nodes=3), [f"{KEY}.nodes: 3,", "started 2 node(s)", "start 3 nodes"]),
    (train(nodes=2, processes=4), [f"{KEY}.processes: 4, but torchrun", "started 1 process(es) per node"]),
])
def test_a_worker_of_an_outside_torchrun_with_other_counts_is_refused(section, expected):
    with pytest.raises(ValueError) as refused:
        launch.plan_launch("stages.teacher", ["x"], section, KEY, TORCHRUN_2x1)
    assert all(text in str(refused.value) for text in expected), str(refused.value)


SLURM = {"SLURM_JOB_ID": "777", "SLURM_STEP_ID": "3", "SLURM_JOB_NODELIST": "gpu[007-008]",
         "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_STEP_NUM_NODES": "2", "SLURM_NNODES": "2"}


def test_srun_with_one_task_per_node_starts_each_nodes_processes_under_torchrun():
    node1 = {**SLURM, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NODEID": "1"}
    plan = launch.plan_launch("stages.teacher", ["x"], train(nodes="auto", processes=2), KEY, node1)
    torchrun = plan.command[plan.command.index("--") + 1:]
    assert plan.action == "exec" and {"--nnodes=2", "--nproc-per-node=2", "--rdzv-endpoint=gpu007:29400",
                                       "--rdzv-id=slurm-777-3"} <= set(torchrun)
    assert plan.hosting is False and any(arg.endswith(",is_host=false") for arg in torchrun)
    node0 = {**node1, "SLURM_PROCID": "0", "SLURM_NODEID": "0"}
    assert launch.plan_launch("stages.teacher", ["x"], train(nodes=2, processes=2), KEY, node0).hosting is True


def test_srun_with_one_task_per_process_joins_as_rank_procid():
    task = {**SLURM, "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}
    plan = launch.plan_launch("stages.teacher", ["x"], train(nodes=2, processes=2), KEY, task)
    assert plan.action == "join" and plan.command == [] and plan.hosting is False
    assert plan.env == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "gpu007",
                        "MASTER_PORT": "29400"}


def test_srun_with_another_node_count_is_refused_naming_both():
    task = {**SLURM, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0", "SLURM_NODEID": "0"}
    with pytest.raises(ValueError, match=rf"^{KEY}\.nodes: 4, but srun \(SLURM_STEP_NUM_NODES=2"):
        launch.plan_launch("stages.teacher", ["x"], train(nodes=4), KEY, task)


def test_a_batch_script_without_srun_is_no_launcher():
    """sbatch runs its script on the first node only, without SLURM_STEP_NUM_TASKS: nothing to join."""
    script = {"SLURM_JOB_ID": "5", "SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
    assert launch.plan_launch("stages.teacher", ["x"], train(), KEY, script).action == "run"


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("a1,b2", "a1"), ("gpu[003-005,9]", "gpu003"), ("r[12,14]n-x,c1", "r12n-x"),
    ("rack[1-2]-gpu[003-005,9],cpu1", "rack1-gpu003"), ("127.0.0.1", "127.0.0.1"),
])
def test_slurm_first_host(nodelist, first):
    assert launch.slurm_first_host(nodelist) == first


@pytest.mark.parametrize("value, parsed", [
    ("head:1234", ("head", 1234)), ("head", ("head", 29400)), ("10.0.0.1:80", ("10.0.0.1", 80)),
    ("[::1]:29400", ("::1", 29400)),
])
def test_parse_endpoint(value, parsed):
    assert endpoint.parse_endpoint(value, "k") == parsed


@pytest.mark.parametrize("value", ["head:", "a b:12", "head:70000", "http://head:1"])
def test_a_malformed_rendezvous_is_refused_when_params_load(tmp_path, value):
    params = yaml.safe_load((Path(__file__).parent / "assets/tiny_params.yaml").read_text())
    params["teachers"]["simclr"]["train"]["rendezvous"] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"teachers\.simclr\.train\.rendezvous: "):
        load_params(tmp_path / "params.yaml")


def test_launch_settings_of_where_the_job_meets_stay_out_of_the_run_fingerprint():
    dumped = train(nodes=2, rendezvous="head:1", rendezvous_timeout_s=9).model_dump()
    assert dumped["nodes"] == 2 and "rendezvous" not in dumped and "rendezvous_timeout_s" not in dumped


def test_an_endpoint_that_never_answers_is_refused_within_its_timeout():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"^k: rendezvous endpoint 127.0.0.1:{port} unreachable for 1 s"):
        launch.check_endpoint("127.0.0.1", port, 1.0, "k", hosting=False)
    assert time.monotonic() - started < 5
    with socket.socket() as listener:  # a listening endpoint passes at once
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        launch.check_endpoint("127.0.0.1", listener.getsockname()[1], 1.0, "k", hosting=False)


# --- refusals of the real stage command -------------------------------------------------------------------

@pytest.fixture(scope="module")
def refusal_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode-refusals")
    port = free_port()
    overrides = {"mismatch": {"nodes": 2},
                 "lonely": {"nodes": 2, "rendezvous": f"127.0.0.1:{port}", "rendezvous_timeout_s": 2},
                 "worker_node": {"nodes": 2, "rendezvous_timeout_s": 2}}
    env = make_repo(root, fault_params(*overrides, metric_grid=False, **overrides), with_dvc=False)
    warm_up()
    return root, {**env, "TMPDIR": temporary_dir(root)}


def temporary_dir(root: Path) -> str:
    """TMPDIR for the stages: torchrun leaves a `torchelastic_*` log folder per job there, not in /tmp."""
    folder = root / ".tmp"
    folder.mkdir(exist_ok=True)
    return str(folder)


def assert_nothing_trained(root: Path, name: str) -> None:
    out = root / "outputs/teachers" / name
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    assert not (out / "checkpoints").exists(), "training started"
    assert not (root / "mlflow.db").exists(), "the tracking store was opened"


def test_stage_under_a_launcher_with_another_node_count_is_refused_before_training(refusal_repo):
    """The environment torchrun gives the worker of a one-node job, for a section that asks for 2 nodes."""
    root, env = refusal_repo
    worker = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = stage_forked(["stages.teacher", "mismatch"], root, {**env, **worker})
    assert_one_line_refusal(done, "teachers.mismatch.train.nodes: 2, but torchrun", "started 1 node(s)")
    assert_nothing_trained(root, "mismatch")


def test_a_rendezvous_that_never_gathers_its_nodes_fails_in_one_line_after_its_timeout(refusal_repo):
    """nodes: 2 and only this node started: torchrun's c10d store waits `rendezvous_timeout_s` (2 s here)."""
    root, env = refusal_repo
    started = time.monotonic()
    done = stage_forked(["stages.teacher", "lonely"], root, env, timeout=120)
    elapsed = time.monotonic() - started
    assert_one_line_refusal(done, "teachers.lonely.train.nodes: the rendezvous at 127.0.0.1:",
                            "did not gather 2 nodes within 2 s")
    assert elapsed < 60, elapsed
    assert_nothing_trained(root, "lonely")


def test_a_slurm_node_whose_head_node_never_comes_up_is_refused_within_the_timeout(refusal_repo):
    """srun task on the job's second node: the rendezvous is the first node's, which nobody started."""
    root, env = refusal_repo
    port = free_port()
    task = {"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2",
            "SLURM_PROCID": "1", "SLURM_NODEID": "1", "SLURM_STEP_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}
    started = time.monotonic()
    done = stage_forked(["stages.teacher", "worker_node"], root, {**env, **task}, timeout=60)
    assert_one_line_refusal(done, f"teachers.worker_node.train.rendezvous: rendezvous endpoint 127.0.0.1:{port}",
                            "unreachable for 2 s")
    assert time.monotonic() - started < 30
    assert_nothing_trained(root, "worker_node")


# --- two simulated nodes ----------------------------------------------------------------------------------

def children_cmdlines(pid: int) -> list[str]:
    return [" ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True)]


def loss_history(root: Path, name: str) -> dict[int, float]:
    """Every step's loss over the stage's runs (an interrupted run and its resumption), each step once."""
    client, _ = mlflow_runs(root)
    history: dict[int, float] = {}
    for run in stage_runs(root, f"teacher@{name}"):
        for metric in client.get_metric_history(run.info.run_id, "train/loss"):
            assert metric.step not in history, f"step {metric.step} logged twice"
            history[metric.step] = metric.value
    return history


@pytest.mark.slow
def test_two_nodes_match_one_launcher_and_resume_after_sigterm_to_every_node(tmp_path):
    port = free_port()
    overrides = {"single": {"processes": 2},
                 "nodes": {"nodes": 2, "rendezvous": f"127.0.0.1:{port}", "rendezvous_timeout_s": 120}}
    env = make_repo(tmp_path, fault_params(*overrides, metric_grid=False, **overrides), with_dvc=False)
    env["TMPDIR"] = temporary_dir(tmp_path)

    reference = stage(["stages.teacher", "single"], tmp_path, env, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    def start_nodes(extra: dict[str, str]) -> tuple[Background, Background]:
        run_id = {"PIPELINE_RDZV_ID": "multinode-test"}
        node_a = Background([str(BIN / "python"), "-m", "stages.teacher", "nodes"], tmp_path,
                            {**env, **run_id, **extra}, "node-a")
        node_b = Background([str(BIN / "python"), "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=multinode-test",
                             "--rdzv-conf=join_timeout=120", "--max-restarts=0", "-m", "stages.teacher", "nodes"],
                            tmp_path, {**env, **extra}, "node-b")
        return node_a, node_b

    try:
        node_a, node_b = start_nodes({PAUSE_ENV: "8:after"})
        marker = pause_marker(8, "after")
        deadline = time.monotonic() + 300
        while marker not in node_a.stderr() + node_b.stderr():  # printed by whichever node holds rank 0
            assert node_a.process.poll() is None and node_b.process.poll() is None, node_a.stderr() + node_b.stderr()
            assert time.monotonic() < deadline, node_a.stderr()[-2000:] + node_b.stderr()[-2000:]
            time.sleep(0.05)
        # Node A re-executed itself under torchrun; node B's worker joined its torchrun without relaunching.
        assert "pipeline.infra.launch" in " ".join(psutil.Process(node_a.process.pid).cmdline())
        b_children = children_cmdlines(node_b.process.pid)
        assert len(b_children) == 1 and "stages.teacher" in b_children[0], b_children
        assert not any("torch.distributed.run" in c or "pipeline.infra.launch" in c for c in b_children), b_children
        for node in (node_a, node_b):  # preemption: every node gets SIGTERM
            node.process.send_signal(signal.SIGTERM)
        codes = [node_a.wait(timeout=180), node_b.wait(timeout=180)]
    except BaseException:
        for node in locals().get("node_a"), locals().get("node_b"):
            if node is not None:
                node.kill()
        raise
    logs = node_a.stderr() + node_b.stderr()
    assert all(code != 0 for code in codes), (codes, logs[-3000:])
    assert "interrupted by signal 15; checkpoint saved" in logs, logs[-3000:]
    out = tmp_path / "outputs/teachers/nodes"
    import torch

    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["step"] == 9
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()

    node_a, node_b = start_nodes({})
    codes = [node_a.wait(timeout=600), node_b.wait(timeout=600)]
    assert codes == [0, 0], (node_a.stderr()[-3000:], node_b.stderr()[-3000:])

    got, expected = read_json(out / "metrics.json"), read_json(tmp_path / "outputs/teachers/single/metrics.json")
    assert got["resumed_from_step"] == 9 and got["steps"] == expected["steps"] == FAULT_STEPS
    assert got["final_loss"] == expected["final_loss"]
    assert loss_history(tmp_path, "nodes") == loss_history(tmp_path, "single")
    assert sorted(loss_history(tmp_path, "nodes")) == list(range(1, FAULT_STEPS + 1))
    assert_same_weights(out / "model.pt", tmp_path / "outputs/teachers/single/model.pt")
    runs = stage_runs(tmp_path, "teacher@nodes")  # rank 0 alone opened a run, once per launch
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert {r.data.params["teachers.nodes.train.nodes"] for r in runs} == {"2"}
