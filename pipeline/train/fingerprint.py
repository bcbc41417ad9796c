"""Tie a checkpoint folder to the settings and the code that produced it.

DVC keeps checkpoint folders across runs (`persist: true`) so an interrupted stage resumes; without a
fingerprint, a stage re-run after a parameter change would resume the *old* run (or find it finished),
and one re-run after a code change would write the old model back as if today's code had trained it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline.infra import code_digest, imported_project_modules
from pipeline.integrity import set_aside

FINGERPRINT_FILE = "fingerprint.json"


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint() -> dict[str, str]:
    """Digest of the code (`pipeline.infra.code_manifest.code_digest`: docstrings and formatting left out) of
    every project module this process has imported so far (`pipeline.*`, `stages.*`), by module name.
    Taken once the objective is built and before training starts, it covers exactly what the stage runs
    (a stage that does not use PKT never imports `pkt.py`)."""
    return {name: code_digest(path) for name, path in imported_project_modules().items()}


def claim_checkpoint_dir(folder: str | Path, settings: dict[str, Any]) -> bool:
    """Make `folder` hold checkpoints of `settings` only; returns True when an existing run can resume.

    A folder written under other settings is emptied (its checkpoints are of a different experiment).
    A folder whose marker is unreadable cannot be tied to any settings: it is set aside whole
    (`checkpoints.damaged-<time>`, never deleted), with a warning naming the marker.
    """
    folder = Path(folder)
    expected = fingerprint(settings)
    marker = folder / FINGERPRINT_FILE
    if marker.is_file():
        try:
            written = json.loads(marker.read_text()).get("fingerprint")
        except (ValueError, AttributeError, OSError) as err:
            aside = set_aside(folder)
            print(f"warning: {marker} is damaged ({type(err).__name__}); its checkpoints are set aside in {aside}; "
                  "training from step 0", file=sys.stderr, flush=True)
        else:
            if written == expected:
                return any(p.suffix == ".pt" for p in folder.iterdir())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": expected, "settings": settings}, sort_keys=True, default=str, indent=1))
    tmp.replace(marker)
    return False


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
