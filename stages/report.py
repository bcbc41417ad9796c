"""DVC stage `report`: reports/results.md, summary.json, headline.json and the plot tables from this run's
metrics files, also logged onto the invocation's parent MLflow run (`pipeline.wiring.report`)."""
from __future__ import annotations

import argparse

from pipeline.wiring.common import load, run_stage


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load()
    from pipeline.wiring.report import report

    report(params)


if __name__ == "__main__":
    run_stage(main)
