"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the RNG states they carry.

Only tensors and primitive containers are stored, so loading never unpickles code. Writes go to a
temporary file that is renamed over the old one: an interruption leaves the previous checkpoint whole,
and a leftover temporary file is never read (the next successful save deletes it).

A checkpoint that exists but cannot be read is refused, not silently replaced by a fresh start: atomic
writes mean no interruption produces one, so it is disk damage or a foreign file, and hours of training
may hang on it; the user decides (delete it to start over).

Test hook: ``PIPELINE_TEST_PAUSE_AT_CHECKPOINT=STEP`` (or ``STEP:after``) makes the save of step STEP
print a line to stderr and sleep ``TEST_PAUSE_S`` seconds before (after) the rename, so fault-injection
tests can SIGKILL / SIGTERM a stage subprocess at exactly that point. Unset, it costs one dict lookup.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "last.pt"
TEST_PAUSE_ENV = "PIPELINE_TEST_PAUSE_AT_CHECKPOINT"
TEST_PAUSE_S = 3.0


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but does not load; the message names the file and the way out."""


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    _test_pause(state.get("step"), "before")
    os.replace(tmp, path)
    for stale in path.parent.glob(f"{path.name}.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    _test_pause(state.get("step"), "after")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none yet; CorruptCheckpointError if it does not load."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: torch raises many types
        reason = (str(err).strip().splitlines() or [""])[0]
        raise CorruptCheckpointError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {reason}); "
                                     f"refusing to start over silently: delete it to retrain this stage from step 0"
                                     ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CorruptCheckpointError(f"checkpoint {path} is not a training checkpoint (no 'step' entry); "
                                     f"delete it to retrain this stage from step 0")
    return state


def _test_pause(step: Any, phase: str) -> None:
    """The fault-injection hook described in the module docstring."""
    wanted = os.environ.get(TEST_PAUSE_ENV)
    if not wanted:
        return
    target, _, when = wanted.partition(":")
    if str(step) == target and (when or "before") == phase:
        print(f"{TEST_PAUSE_ENV}: paused {phase} renaming the checkpoint of step {step}", file=sys.stderr, flush=True)
        time.sleep(TEST_PAUSE_S)
