"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the RNG states they carry.

Only tensors and primitive containers are stored, so loading never unpickles code. Each carries the
digest of its content (`pipeline.integrity`). Writes go to a temporary file that is renamed over the old
one: an interruption leaves the previous checkpoint whole, and a leftover temporary file is never read
(the next successful save deletes it). The checkpoint before the last is kept as `previous.pt` (a rename,
no copy).

A checkpoint that cannot be read, or whose content does not match its digest, is damaged: atomic writes
mean no interruption produces one. It is refused in one line naming it, set aside beside it
(`last.pt.damaged-<time>`, never deleted), and training resumes from `previous.pt` when that one is
sound, else starts over from step 0.

The fault-injection tests pause a save between writing and renaming (`pipeline.fault_hooks`).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.fault_hooks import pause_at_checkpoint
from pipeline.integrity import DamagedFileError, load_sealed, save_sealed, set_aside

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"


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
    """Write `state` to `path` atomically with its digest; the checkpoint it replaces becomes `previous.pt`."""
    path = Path(path)

    def rotate() -> None:
        pause_at_checkpoint(state.get("step"), "before")
        if path.exists():
            os.replace(path, path.with_name(PREVIOUS_NAME))

    save_sealed(path, state, "checkpoint", before_rename=rotate)
    for stale in path.parent.glob(f"{path.name}.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    pause_at_checkpoint(state.get("step"), "after")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest sound checkpoint: `path`, else the `previous.pt` beside it, else None (train from step 0).

    A damaged one is set aside (renamed, never deleted) with a warning naming it and what happens next."""
    path = Path(path)
    candidates = [path, path.with_name(PREVIOUS_NAME)]
    for index, candidate in enumerate(candidates):
        if not candidate.exists():
            continue
        try:
            state = load_sealed(candidate, "checkpoint", map_location)
            if "step" not in state:
                raise DamagedFileError(f"checkpoint {candidate} is not a training checkpoint (no 'step' entry)")
            return state
        except DamagedFileError as err:
            aside = set_aside(candidate)
            sound = [c for c in candidates[index + 1:] if c.exists()]
            then = f"resuming from {sound[0]}" if sound else "training from step 0"
            print(f"warning: {err}; set aside as {aside.name}; {then}", file=sys.stderr, flush=True)
    return None
