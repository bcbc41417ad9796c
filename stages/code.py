"""DVC stage `code`: write each stage command's code manifest (`pipeline.infra.code_manifest`), the one code
dep every other stage has. Standard library only: it runs on every code change, in well under a second."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.infra import write_manifest

NOT_STAGES = {"common", "code"}  # helpers of the stage modules, and this stage (which depends on the folders)


def stage_modules(root: Path = Path(".")) -> list[str]:
    """Every `stages.<name>` module a dvc.yaml command runs."""
    return sorted(f"stages.{path.stem}" for path in (Path(root) / "stages").glob("*.py") if path.stem not in NOT_STAGES)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    for module in stage_modules():
        write_manifest(module)


if __name__ == "__main__":
    main()
