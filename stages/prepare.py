"""DVC stage `prepare`: validate all of params.yaml and check the dataset before any training starts
(`pipeline.wiring.prepare`)."""
from __future__ import annotations

import argparse

from pipeline.wiring.common import load, run_stage


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load()
    from pipeline.wiring.prepare import prepare

    prepare(params)


if __name__ == "__main__":
    run_stage(main)
