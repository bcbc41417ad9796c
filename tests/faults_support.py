"""Shared helpers of the fault-injection tests (tests/test_faults*.py): a temporary git + DVC repository
holding the project's code, stage commands run as real subprocesses, and a way to stop one at a known point.

The known point is the test hook of pipeline/train/checkpoint.py: with
``PIPELINE_TEST_PAUSE_AT_CHECKPOINT=STEP[:after]`` the stage prints a marker line to stderr and sleeps a
few seconds before (or after) renaming the checkpoint of STEP into place, so a test can SIGKILL or
SIGTERM it there instead of racing a timer.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_PARAMS = ROOT / "tests" / "assets" / "tiny_params.yaml"
from pipeline.fault_hooks import CHECKPOINT_ENV as PAUSE_ENV  # noqa: E402
from pipeline.fault_hooks import PHASE_ENV  # noqa: E402
# digits train split: 1,257 images; batch 64 -> 19 steps per epoch. 24 steps cross one epoch boundary.
STEPS_PER_EPOCH = 19
FAULT_STEPS = 24
CHECKPOINT_EVERY = 4


def clean_env() -> dict[str, str]:
    """The environment a user's shell would give a stage: the venv first on PATH, no tracking/DVC/test
    variables inherited from whoever runs pytest, one thread so runs are bit-reproducible."""
    skip = ("MLFLOW_", "DVC_", "PIPELINE_", "FASHION_MNIST_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def tiny_params() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def fault_params(*teacher_names: str, metric_grid: bool = True, **overrides: dict) -> dict:
    """The tiny profile with identical SimCLR teachers under each name (one output folder per scenario),
    FAULT_STEPS steps over two epochs and a checkpoint every CHECKPOINT_EVERY steps.

    `overrides` maps a teacher name to a patch of its `train` section (`optimizer` merged one level down)."""
    params = tiny_params()
    base = params["teachers"]["simclr"]
    base["train"].update(epochs=2, max_steps=FAULT_STEPS, checkpoint_every_steps=CHECKPOINT_EVERY)
    # The tiny Proxy-Anchor teacher stays for dvc.yaml's metric_transfer matrix, unless that is not wanted.
    params["teachers"] = {"proxy_anchor": params["teachers"]["proxy_anchor"]} if metric_grid else {}
    for name in teacher_names:
        teacher = copy.deepcopy(base)
        patch = overrides.get(name, {})
        teacher["train"].update({k: v for k, v in patch.items() if k != "optimizer"})
        teacher["train"]["optimizer"].update(patch.get("optimizer", {}))
        params["teachers"][name] = teacher
    params["transfer"]["self_supervised"]["grid"] = {"teacher": [teacher_names[0]], "student": ["small"], "loss": ["relaxed"]}
    if not metric_grid:
        params["transfer"]["metric_learning"]["grid"] = {"teacher": [], "student": [], "loss": []}
    params["transfer"]["self_taught"]["grid"] = {"teacher": [], "student": [], "loss": []}
    params["losses"] = {"relaxed": params["losses"]["relaxed"]}
    return params


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def git(root: Path, env: dict, *args: str) -> None:
    run_checked(["git", *args], root, env)


def run_checked(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def make_repo(root: Path, params: dict, with_dvc: bool = True) -> dict:
    """A git (+ DVC) repository with the project's pipeline/ and stages/, its whole dvc.yaml (with the plot
    templates) and `params`. Always the whole dvc.yaml: a test that needs part of the pipeline names its
    targets (`dvc repro transfer`), so a stage added to dvc.yaml, such as `code`, reaches every test."""
    for folder in ("pipeline", "stages"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    write_params(root, params)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n__pycache__/\n/outputs/**/checkpoints\n*.err\n")
    env = clean_env()
    git(root, env, "init", "-q")
    if with_dvc:
        run_checked([str(BIN / "dvc"), "init", "-q"], root, env)
        run_checked([str(BIN / "dvc"), "config", "core.analytics", "false"], root, env)
        shutil.copy(ROOT / ".dvcignore", root / ".dvcignore")  # bytecode caches are not the code stage's deps
        shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots")  # the plot templates, the offline page
        run_checked([str(BIN / "dvc"), "config", "plots.html_template", "plots/offline.html"], root, env)
    git(root, env, "add", "-A")
    git(root, env, "commit", "-qm", "init")
    return env


def stage(args: list[str], cwd: Path, env: dict, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """One stage command (`python -m stages.X ...`) run to completion, as DVC would run it."""
    return subprocess.run([str(BIN / "python"), "-m", *args], cwd=cwd, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=timeout)


class Background:
    """A command started in the background with stderr in a file, so its progress can be watched."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict, log_name: str) -> None:
        self.log = cwd / f"{log_name}.err"
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=handle,
                                            start_new_session=True)

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 180) -> None:
        """Until `text` appears in stderr; fails with the log if the process ends first."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if self.process.poll() is not None:
                raise AssertionError(f"exited ({self.process.returncode}) before {text!r}:\n{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {text!r}:\n{self.stderr()[-3000:]}")
            time.sleep(0.02)

    def kill(self) -> int:
        """SIGKILL the whole process group (the stage and anything it started) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=60)

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)


def pause_marker(step: int, phase: str = "before") -> str:
    return f"{PAUSE_ENV}: paused {phase} renaming the checkpoint of step {step}"


def start_stage(args: list[str], cwd: Path, env: dict, log_name: str, **extra_env: str) -> Background:
    return Background([str(BIN / "python"), "-m", *args], cwd, {**env, **extra_env}, log_name)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(path: Path, reference: Path) -> None:
    got, expected = model_weights(path), model_weights(reference)
    assert got.keys() == expected.keys()
    different = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not different, f"{path} differs from {reference} in {different[:5]}"


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads: libraries' warnings (a `file:line: XWarning: ...` line and its indented
    source line) left out."""
    lines, after_warning = [], False
    for line in stderr.splitlines():
        if "Warning: " in line:
            after_warning = True
        elif line.startswith(" ") and after_warning:
            after_warning = False
        elif line.strip():
            after_warning = False
            lines.append(line)
    return lines


def mlflow_runs(root: Path, experiment: str = "pipeline-test"):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, ([] if found is None else client.search_runs([found.experiment_id], max_results=1000))


def stage_runs(root: Path, stage_name: str) -> list:
    return [r for r in mlflow_runs(root)[1] if r.data.tags.get("dvc.stage") == stage_name]


def run_all(jobs: dict[str, tuple[list[str], Path, dict]], workers: int = 2,
            runner=None) -> dict[str, subprocess.CompletedProcess]:
    """Stage commands `{case: (args, cwd, env)}` run side by side with `runner` (default: subprocesses)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        futures = {case: pool.submit(runner or stage, args, cwd, env) for case, (args, cwd, env) in jobs.items()}
        return {case: future.result() for case, future in futures.items()}


def warm_up() -> None:
    """Import what stages import, once, so forked runs (`stage_forked`) skip seconds of imports each."""
    import logging

    import mlflow  # noqa: F401  (the stages import it lazily, through pipeline.infra)

    # A stage sets MLFLOW_LOGGING_LEVEL=WARNING before its first MLflow import (pipeline.wiring.common.quiet_libraries);
    # here MLflow is imported first, so set the level that variable would have set.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import sklearn.datasets  # noqa: F401

    import pipeline.config  # noqa: F401
    import pipeline.eval.protocol  # noqa: F401
    import pipeline.infra  # noqa: F401
    import pipeline.train.recipes  # noqa: F401
    import pipeline.train.loop  # noqa: F401


def stage_forked(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` as the interpreter runs it (runpy, `__name__ == "__main__"`, sys.argv, cwd,
    environment, stdout/stderr on fds 1/2, exit status), in a fork of this warm process.

    The same code path as the stage command minus ~3-8 CPU-seconds of imports per run, which is what lets
    dozens of bad-input cases run in the default test run on 2 cores. A few cases also run as literal
    subprocesses (`stage`), so both paths are seen to agree.
    """
    import io
    import runpy
    import tempfile
    import traceback

    module, *argv = args
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(err.fileno(), 2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
                import torch as child_torch

                child_torch.set_num_threads(1)  # as DataLoader workers do: the parent's OpenMP pool is not ours
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env)
                sys.argv = [module, *argv]
                sys.path.insert(0, str(cwd))
                try:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                except BaseException:
                    traceback.print_exc()
                    code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"{args} timed out after {timeout} s")
            time.sleep(0.01)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), "", stderr)


def assert_one_line_refusal(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Non-zero exit with exactly one readable line (no traceback) that contains every `expected` text."""
    lines = error_lines(result.stderr)
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    missing = [text for text in expected if text not in lines[0]]
    assert not missing, f"{missing} not in {lines[0]!r}"
    return lines[0]


def in_fork(action) -> None:
    """Run `action()` in a forked child (one thread), so torch work done here never touches the OpenMP pool
    of this process, which later forks (`stage_forked`) must not inherit in use."""
    import traceback

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked helper failed (its traceback is above)"


def overwrite_tensor_data(path: Path, nbytes: int = 16384, value: float = 0.01) -> int:
    """Overwrite up to `nbytes` of the largest tensor record inside a torch.save zip with plausible float32
    values, in place: the file still parses, and torch's reader (which checks no CRC) loads it. Returns the
    number of bytes written."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(record.header_offset)
        header = struct.unpack("<IHHHHHIIIHH", handle.read(30))
        start = record.header_offset + 30 + header[9] + header[10]
        count = min(nbytes, record.file_size) // 4 * 4
        handle.seek(start)
        handle.write(struct.pack(f"<{count // 4}f", *([value] * (count // 4))))
    return count
