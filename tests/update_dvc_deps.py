"""Rewrite dvc.yaml's code deps to the import closure of each stage command (what
tests/test_dvc_deps.py checks): `.venv/bin/python tests/update_dvc_deps.py` after changing imports.
Only the runs of `- pipeline/...` / `- stages/...` lines change; comments and the rest stay."""
from __future__ import annotations

import re

from import_closure import ROOT, closure
from test_dvc_deps import minimal_deps


def main() -> None:
    path = ROOT / "dvc.yaml"
    lines = path.read_text().splitlines()
    out: list[str] = []
    module = None
    for i, line in enumerate(lines):
        if match := re.search(r"cmd: python -m (stages\.\w+)", line):
            module = match.group(1)
        is_code = re.match(r"\s*- (pipeline|stages)(/|$)", line)
        if is_code:
            previous_is_code = i > 0 and re.match(r"\s*- (pipeline|stages)(/|$)", lines[i - 1])
            if not previous_is_code:
                indent = line[: line.index("-")]
                out.extend(f"{indent}- {dep}" for dep in minimal_deps(closure(module)))
            continue
        out.append(line)
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
