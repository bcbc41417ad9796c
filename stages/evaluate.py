"""DVC stage `evaluate_pixels@TEACHER`: the raw-pixels row on TEACHER's evaluation classes
(`pipeline.wiring.evaluate`)."""
from __future__ import annotations

import argparse

from pipeline.wiring.common import load, run_stage


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="whose evaluation classes to use")
    args = parser.parse_args(argv)
    params = load()
    from pipeline.wiring.evaluate import score_pixels

    score_pixels(params, args.teacher)


if __name__ == "__main__":
    run_stage(main)
