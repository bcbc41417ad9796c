"""DVC stage `teacher@NAME`: pretrain teacher NAME (SimCLR, MoCo v2 or Proxy-Anchor) from params.yaml, or
load it from its official source checkpoint when `released_teachers.NAME` names one, then score it
(`pipeline.wiring.teacher`).

`--fingerprint` is DVC stage `released_teacher@NAME`: it checks the released file against the official
layout and records its hash under outputs/data/released/, which every teacher stage depends on, so a
replaced file re-runs them.
"""
from __future__ import annotations

import argparse

from pipeline.wiring.common import load, run_stage


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="a key of the `teachers` section of params.yaml")
    parser.add_argument("--fingerprint", action="store_true",
                        help="check the released checkpoint of NAME, record its hash (released_teacher@NAME)")
    args = parser.parse_args(argv)
    params = load()
    from pipeline.wiring import teacher

    if args.fingerprint:
        teacher.fingerprint(params, args.name)
    else:
        teacher.teacher(params, args.name, argv)


if __name__ == "__main__":
    run_stage(main)
