"""What a stage costs beyond its work: stage commands and a no-op `dvc repro`, next to `import torch`.

All in one run, interleaved round by round (A B C D, A B C D, ...) so drift in the machine's speed hits
every command alike; medians and ratios against `python -c "import torch"` measured beside them:

- `python -m stages.report` (0.1-1 s of work: read metrics files, draw figures, log to MLflow);
- `python -m stages.evaluate --teacher NAME` (`evaluate_pixels@NAME`: load data, retrieval, probe);
- `python -m stages.prepare` and `dvc repro -s -f prepare`: their difference is what DVC itself costs
  around one stage (collecting the pipeline, hashing, and rewriting all of dvc.lock);
- `dvc repro` with nothing changed (DVC checks every stage's deps, params and outs).

It needs a repository where `dvc repro` has run and `dvc status` is clean (the default profile: run
`dvc repro` first); the stages rewrite their own outputs with the same content. MLflow writes go to a
throw-away SQLite store, so the repository's mlflow.db is untouched.

    .venv/bin/python benchmarks/stage_overhead.py --rounds 5   # writes benchmarks/results/stage_overhead.md

``--stages-only`` leaves out the no-op `dvc repro` (and so needs no clean `dvc status`, only the metrics
files the report reads and the dataset): for a checkout without the trained models, or while another
`dvc repro` runs in it.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--teacher", default="simclr", help="whose evaluation classes the pixels stage uses")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stage_overhead.md")
    parser.add_argument("--stages-only", action="store_true", help="leave out the no-op `dvc repro`")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if not args.stages_only:
        status = subprocess.run([str(bin_dir / "dvc"), "status", "--json"], cwd=REPO, env=env,
                                capture_output=True, text=True, check=True)
        if json.loads(status.stdout or "{}"):
            sys.exit("error: dvc status is not clean; run `dvc repro` first (the no-op repro is what is measured)")

    store = tempfile.mkdtemp(prefix="stage-overhead-")
    stage_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    python = sys.executable
    commands = {
        "python -c 'import torch'": ([python, "-c", "import torch"], env),
        "report stage": ([python, "-m", "stages.report"], stage_env),
        f"evaluate_pixels@{args.teacher} stage": ([python, "-m", "stages.evaluate", "--teacher", args.teacher],
                                                  stage_env),
        "prepare stage": ([python, "-m", "stages.prepare"], stage_env),
        "dvc repro -s -f prepare": ([str(bin_dir / "dvc"), "repro", "-s", "-f", "prepare"], stage_env),
        "dvc repro (nothing changed)": ([str(bin_dir / "dvc"), "repro"], env),
    }
    if args.stages_only:
        for name in ("dvc repro -s -f prepare", "dvc repro (nothing changed)"):
            del commands[name]
    for command, command_env in commands.values():  # warm the page cache and the MLflow store once
        timed(command, command_env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, (command, command_env) in commands.items():
            times[name].append(timed(command, command_env))

    reference = statistics.median(times["python -c 'import torch'"])
    load = os.getloadavg()[0]
    lines = [
        "# Stage overhead",
        "",
        f"Command: `.venv/bin/python benchmarks/stage_overhead.py --rounds {args.rounds}"
        f"{' --stages-only' if args.stages_only else ''}`, {args.rounds} interleaved "
        f"rounds after one warm-up round; {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} "
        "at the end.",
        "",
        "| command | median s | min s | max s | ratio to `import torch` |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
                     f"{statistics.median(values) / reference:.2f}x |")
    if "dvc repro -s -f prepare" in times:
        around = statistics.median(times["dvc repro -s -f prepare"]) - statistics.median(times["prepare stage"])
        lines += ["", f"DVC's own cost around one stage (`dvc repro -s -f prepare` minus the prepare command): "
                      f"{around:.2f} s; dvc.lock holds {(REPO / 'dvc.lock').stat().st_size / 1024:.0f} KB."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
