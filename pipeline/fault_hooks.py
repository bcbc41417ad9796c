"""Where the fault-injection tests stop a stage (tests/faults_support.py): unset, each hook costs one lookup.

- ``PIPELINE_TEST_PAUSE_AT_CHECKPOINT=STEP`` (or ``STEP:after``): the save of step STEP pauses before (after)
  renaming the checkpoint into place;
- ``PIPELINE_TEST_PAUSE_AT=PHASE``: the stage pauses on entering PHASE (`PHASES`).
A paused stage prints a marker line to stderr and sleeps `PAUSE_S` seconds, so a test can SIGKILL or SIGTERM
it exactly there instead of racing a timer.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

CHECKPOINT_ENV = "PIPELINE_TEST_PAUSE_AT_CHECKPOINT"
PHASE_ENV = "PIPELINE_TEST_PAUSE_AT"
PHASES = ("loading", "scoring", "logging")  # training: the checkpoint hook
PAUSE_S = 3.0


def pause_at_checkpoint(step: Any, when: str) -> None:
    wanted = os.environ.get(CHECKPOINT_ENV)
    if not wanted:
        return
    target, _, wanted_when = wanted.partition(":")
    if str(step) == target and (wanted_when or "before") == when:
        _pause(f"{CHECKPOINT_ENV}: paused {when} renaming the checkpoint of step {step}")


def pause_at(phase: str) -> None:
    if os.environ.get(PHASE_ENV) == phase:
        _pause(f"{PHASE_ENV}: paused on entering {phase}")


def _pause(marker: str) -> None:
    print(marker, file=sys.stderr, flush=True)
    time.sleep(PAUSE_S)
