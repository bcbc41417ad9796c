"""Write each stage command's code manifest (`pipeline.infra.code_manifest`), the one code dep every other
stage has: stage `code`. It runs on every code change, in well under a second."""
from __future__ import annotations

from pathlib import Path

from pipeline import infra

NOT_STAGES = {"code"}  # this stage, which depends on the folders themselves


def stage_modules(root: Path = Path(".")) -> list[str]:
    """Every `stages.<name>` module: a dvc.yaml command, or one run by hand under DVC."""
    return sorted(f"stages.{path.stem}" for path in (Path(root) / "stages").glob("*.py") if path.stem not in NOT_STAGES)


def write_manifests() -> None:
    for module in stage_modules():
        infra.write_manifest(module)
