"""Is the MLflow run agent worth its code? Against MLflow's own asynchronous logging, on what it was built for.

The variants run a stage's tracking pattern in a fresh process each, interleaved round by round (A B C, A B C,
...), writing to one throw-away SQLite store (``sqlite:///TMP/mlflow.db``, as stages do):

- ``agent``: the pipeline's code as stages run it: ``prestart_agent`` as the process starts, then the
  stage's own imports (torch), then ``start_run`` (the agent imports MLflow and opens the run in a second
  process), params, metric batches between steps of work, an artifact, and the block's end.
- ``async``: the same calls made in the stage process with MLflow's asynchronous logging
  (``MlflowClient.log_batch(..., synchronous=False)``, MLflow >= 2.8): ``import mlflow`` beside torch in
  the same process, the run opened by the same code the agent uses (client, experiment, parent run,
  orphans, the run), params and metric batches queued, the artifact copied, ``flush_async_logging`` and
  ``set_terminated`` at the end.
- ``async_thread``: as ``async``, with MLflow's import and the run's opening in a thread started as the
  process starts, beside torch's import (the best an in-process logger can do for start-up).

Each child reports three times (from the process's first line): ``ready`` (torch imported and the run
open enough to train), ``logging`` (seconds the training process spent inside tracking calls from then
on, the block's end included), ``total`` (until the process would exit, as stages end, by ``os._exit``);
the parent also times the whole process (``wall``, interpreter start included). The agent variant also
draws and logs the loss curve at the block's end (what ``start_run`` does); the async one does not, which
favours it. At the end every run is checked: FINISHED, each step's loss, the params, the artifact.

    .venv/bin/python benchmarks/tracking_agent.py --rounds 5   # writes benchmarks/results/tracking_agent.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("agent", "async", "async_thread")


def child(variant: str, steps: int, every: int, work_ms: float) -> None:
    """One stage-like process: start-up, run open, ``steps`` steps of work logging 4 metrics each."""
    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    from pipeline.infra import prestart_agent, start_run
    from pipeline.infra.runs import flatten_params

    opened: list = []
    if variant == "agent":
        prestart_agent()
    elif variant == "async_thread":  # MLflow's import and the run's opening in a thread, beside torch's import
        opener = threading.Thread(target=lambda: opened.append(async_open()))
        opener.start()
    else:
        import mlflow  # noqa: F401  (what a stage logging asynchronously imports itself)
    import torch

    torch.set_num_threads(1)
    params = {"train": {"lr": 0.1, "epochs": 3, "batch_size": 64}, "loss": {"name": "relaxed_contrastive"}}
    artifact = Path(tempfile.mkdtemp()) / "metrics.json"
    artifact.write_text(json.dumps({"map@r": 0.5}))
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    logging = 0.0

    def work() -> None:
        deadline = time.perf_counter() + work_ms / 1000
        while time.perf_counter() < deadline:
            a @ b

    if variant == "agent":
        tick = time.perf_counter()
        with start_run("bench", params=params, system_metrics=False) as run:
            ready = time.perf_counter() - started
            logging += time.perf_counter() - tick
            for step in range(steps):
                work()
                tick = time.perf_counter()
                run.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1, "train/acc": 0.5,
                                 "train/grad_norm": 2.0}, step)
                if step == steps - 1:
                    run.log_artifact(artifact)
                logging += time.perf_counter() - tick
            tick = time.perf_counter()
        logging += time.perf_counter() - tick
    else:
        from mlflow import flush_async_logging
        from mlflow.entities import Metric, Param

        tick = time.perf_counter()
        if variant == "async_thread":
            opener.join()
        writer = opened[0] if opened else async_open()
        client, run_id = writer.client, writer.run_id
        items = flatten_params(params).items()
        client.log_batch(run_id, params=[Param(k, v) for k, v in items], synchronous=False)
        ready = time.perf_counter() - started
        logging += time.perf_counter() - tick
        buffer: list = []
        for step in range(steps):
            work()
            tick = time.perf_counter()
            now = int(time.time() * 1000)
            buffer += [Metric(k, v, now, step) for k, v in {"train/loss": 1.0 / (step + 1), "train/lr": 0.1,
                                                           "train/acc": 0.5, "train/grad_norm": 2.0}.items()]
            if len(buffer) >= every:
                client.log_batch(run_id, metrics=buffer, synchronous=False)
                buffer = []
            if step == steps - 1:
                client.log_artifact(run_id, str(artifact))
            logging += time.perf_counter() - tick
        tick = time.perf_counter()
        if buffer:
            client.log_batch(run_id, metrics=buffer, synchronous=False)
        flush_async_logging()
        writer.close("FINISHED")
        logging += time.perf_counter() - tick
    total = time.perf_counter() - started
    print(json.dumps({"ready": ready, "logging": logging, "total": total}), flush=True)
    sys.stderr.flush()
    os._exit(0)


def async_open():
    """The run opened in this process by the code the agent runs (``RunWriter.open``), after the same
    store check ``start_run`` makes."""
    from pipeline.infra.runs import (DEFAULT_EXPERIMENT, OWNER_TAG, RUN_GROUP_TAG, RunWriter, process_owner,
                                     run_group_id)
    from pipeline.infra.store import check_tracking_store, repository_root, tracking_uri

    uri = tracking_uri()
    check_tracking_store(uri)
    group = run_group_id()
    tags = {"dvc.stage": "bench", RUN_GROUP_TAG: group, OWNER_TAG: process_owner()}
    return RunWriter.open(uri, str(repository_root()), dict(os.environ), "bench", DEFAULT_EXPERIMENT, "bench",
                          group, tags, False, 10.0)


def check_store(uri: str, steps: int, count: int) -> None:
    """Both variants wrote the same thing: every run FINISHED, with every step's loss, params and artifact."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("embedding-transfer")
    runs = client.search_runs([experiment.experiment_id], "tags.`dvc.stage` = 'bench'", max_results=1000)
    assert len(runs) == count, f"{len(runs)} runs, {count} expected"
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert run.info.status == "FINISHED" and len(history) == steps and run.data.params["train.lr"] == "0.1"
        assert "metrics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500, help="training steps per run (4 metrics each)")
    parser.add_argument("--every", type=int, default=200, help="metric values per batch (RunLogger's flush_every)")
    parser.add_argument("--work-ms", type=float, default=5.0, help="compute per step")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tracking_agent.md")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.every, args.work_ms)

    store = tempfile.mkdtemp(prefix="tracking-agent-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "PIPELINE_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db", MLFLOW_LOGGING_LEVEL="WARNING",
               PYTHONPATH=str(REPO))
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds + 1):  # round 0 warms the page cache and creates the store
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                       "--every", str(args.every), "--work-ms", str(args.work_ms)]
            tick = time.perf_counter()
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=REPO)
            wall = time.perf_counter() - tick
            if round_:
                results[variant].append({**json.loads(out.stdout.strip().splitlines()[-1]), "wall": wall})

    check_store(env["MLFLOW_TRACKING_URI"], args.steps, len(VARIANTS) * (args.rounds + 1))
    keys = ("ready", "logging", "total", "wall")
    medians = {v: {k: statistics.median(r[k] for r in results[v]) for k in keys} for v in VARIANTS}
    lines = [f"Command: `.venv/bin/python benchmarks/tracking_agent.py --rounds {args.rounds} --steps {args.steps}"
             f"`; {args.rounds} interleaved rounds after a warm-up; {platform.machine()}, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the end.", "",
             "| seconds (median) | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for variant in VARIANTS:
        lines.append(f"| {variant} | " + " | ".join(f"{medians[variant][k]:.2f}" for k in keys) + " |")
    for variant in VARIANTS[1:]:
        lines.append(f"| {variant} / agent | " + " | ".join(
            f"{medians[variant][k] / medians['agent'][k]:.2f}x" for k in keys) + " |")
    print("\n".join(lines))
    lines += ["", "Every round (seconds):", "", "| variant | round | " + " | ".join(keys) + " |",
              "|---|---:|" + "---:|" * len(keys)]
    for variant in VARIANTS:
        for number, result in enumerate(results[variant], 1):
            lines.append(f"| {variant} | {number} | " + " | ".join(f"{result[k]:.2f}" for k in keys) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# The MLflow run agent against asynchronous logging\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
