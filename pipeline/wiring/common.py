"""What every stage shares: reading params.yaml and turning failures into one line.

A failure before training (bad params, a missing dataset, a wrong or corrupt checkpoint, an unreachable
MLflow store) prints one line naming the key, file or value and exits 2; an interrupted run exits
128+signal after saving; a non-finite loss exits 1. Nothing here is worth unit-testing on its own:
the stage tests drive it end to end.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pipeline.replica import Replica
    from pipeline.setting import Setting


def load():
    """Validated params.yaml (the import is here so `--help` and errors stay fast). Stages that train with
    a loss also check its entry against the loss's contract (`pipeline.contracts`)."""
    from pipeline.config import load_params

    return load_params("params.yaml")


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main, mapping known failures to one readable line and a non-zero exit code.

    The process then ends with ``os._exit``: every output is written and closed and the MLflow run is
    terminated by then, and the interpreter's teardown of torch, mlflow and friends cost 1.1-1.8 s per
    stage here (40 stages in the default run). A bug's traceback still takes the normal path.

    MLflow's import and the opening of the stage's run start first, in the run's agent process, beside
    the stage's own start-up (`pipeline.infra.prestart_agent`).
    """
    quiet_libraries()  # before the agent imports MLflow
    from pipeline.infra import prestart_agent

    prestart_agent()
    marker = _mark_running()
    try:
        _run_mapped(main)
        code = _check_code_manifest()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _mark_running() -> Path | None:
    """Under DVC, `outputs/.running/<stage>.json` names this process while the stage runs; every ending but
    a kill removes it. The report depends on all of outputs/, so a stage killed -9, even one that DVC later
    restores from its run cache without starting it, makes the report run, and the report's start (every
    stage's) closes the dead stage's MLflow run (`pipeline.infra.runs.close_orphaned_runs`). Markers whose
    process is gone are removed here, so the report's input settles."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return None
    import json

    from pipeline.infra import owner_is_gone, process_owner
    from pipeline.stage_spec import RUNNING_MARKERS

    RUNNING_MARKERS.mkdir(parents=True, exist_ok=True)
    for found in RUNNING_MARKERS.glob("*.json"):
        try:
            owner = json.loads(found.read_text())["owner"]
        except (ValueError, KeyError, TypeError, OSError):
            owner = ""
        if not owner or owner_is_gone(owner):
            found.unlink(missing_ok=True)
    marker = RUNNING_MARKERS / f"{stage.replace(os.sep, '_')}.json"
    marker.write_text(json.dumps({"stage": stage, "owner": process_owner()}))
    return marker


def _run_mapped(main: Callable[[list[str]], None]) -> None:
    from pipeline.config import ConfigError
    from pipeline.data import DatasetNotFoundError
    from pipeline.integrity import WriteError
    from pipeline.train.stops import NonFiniteLossError, TrainingInterrupted

    try:
        main(sys.argv[1:])
    except TrainingInterrupted as stop:
        print(f"error: interrupted by signal {stop.signum}; checkpoint saved, re-run the stage to resume",
              file=sys.stderr)
        raise
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError, ValueError, KeyError, ConnectionError,
            WriteError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _check_code_manifest() -> int:
    """Under DVC, a stage that imported project code its manifest does not list fails (exit 1): DVC would
    not re-run it when that code changes (`pipeline.infra.code_manifest`)."""
    main = sys.modules["__main__"].__spec__
    if not os.environ.get("DVC_STAGE") or main is None:
        return 0
    from pipeline.infra import manifest_path, unlisted_imports

    unlisted = unlisted_imports(main.name)
    if unlisted:
        print(f"error: {main.name} imported {', '.join(unlisted)}, which {manifest_path(main.name)} does not list, "
              "so DVC would not re-run this stage when that code changes; import it where "
              "pipeline.infra.code_manifest can read it (a plain import statement)", file=sys.stderr)
        return 1
    return 0


def teacher_or_student(argv: list[str], description: str, method_key: str,
                       setting_of: Callable[[str], Setting]) -> str | Replica:
    """What a two-verb stage command names: `teacher --teacher T` gives the teacher's name; `student --teacher T
    --student S --METHOD M --seed N` gives the replica (`Replica.parse`; `setting_of(teacher)` its setting)."""
    import argparse

    from pipeline.replica import Replica

    if argv[:1] not in (["teacher"], ["student"]):
        argparse.ArgumentParser(description=description).error("the first argument is `teacher` or `student`")
    if argv[0] == "teacher":
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--teacher", required=True)
        return parser.parse_args(argv[1:]).teacher
    return Replica.parse(argv[1:], description, method_key, setting_of)


def stage_name(default: str) -> str:
    """The DVC stage name (`DVC_STAGE`, set by dvc for every stage command), else `default` when run by hand."""
    return os.environ.get("DVC_STAGE") or default


def quiet_libraries() -> None:
    """MLflow's system-metrics monitor logs at INFO on every start and stop; keep stage output readable."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
