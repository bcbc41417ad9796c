"""Reading a stage's metrics file back: the report's tables and its "What transfer buys" section read every
model's metrics.json and deploy.json through here, so a missing one is named the same way everywhere."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A stage's flat metrics file (metrics.json, deploy.json); a missing file is an error naming it (the report
    never guesses)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report: metrics file {path} is missing; run its stage first (dvc repro)")
    return json.loads(path.read_text())
