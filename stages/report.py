"""DVC stage `report`: reports/results.md (the paper's Table 1 shape) from this run's metrics files."""
from __future__ import annotations

import argparse

from pipeline.outputs import write_json
from stages.common import load, quiet_libraries, run_stage, stage_name


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load()
    quiet_libraries()

    from pipeline import tracking
    from pipeline.config import SETTINGS, flatten
    from pipeline.outputs import REPORTS
    from pipeline.report import build_report

    grids = {setting: {"grid": params.transfer.of(setting).grid.model_dump(mode="json")} for setting in SETTINGS}
    with tracking.start_run(stage_name("report"), experiment=params.mlflow.experiment,
                            params=flatten({"transfer": grids})) as run:
        markdown, summary = build_report(params, REPORTS / "figures")
        tmp = REPORTS / "results.md.tmp"
        tmp.write_text(markdown + "\n")
        tmp.replace(REPORTS / "results.md")
        run.log_artifact(REPORTS / "results.md")
        for figure in sorted((REPORTS / "figures").glob("*.png")):
            run.log_artifact(figure)
    write_json(REPORTS / "summary.json", summary)


if __name__ == "__main__":
    run_stage(main)
