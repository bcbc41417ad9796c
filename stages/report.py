"""DVC stage `report`: reports/results.md (every setting over seeds, then the paper's Table 1 shape) and
reports/summary.json (the numbers over seeds, `dvc metrics show`) from this run's metrics files, the
headline metrics file and the tables dvc.yaml's top-level plots draw (`pipeline.comparison`), all also
logged onto the pipeline invocation's parent MLflow run (`pipeline.infra.views`)."""
from __future__ import annotations

import argparse

from pipeline.outputs import write_json
from stages.common import load, run_stage, stage_name


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = load()

    from pipeline.comparison import write_comparison
    from pipeline.config import SETTINGS, flatten
    from pipeline.infra import publish_report, start_run
    from pipeline.outputs import REPORTS
    from pipeline.report import build_report

    grids = {setting: {"grid": params.transfer.of(setting).grid.model_dump(mode="json")} for setting in SETTINGS}
    tags = {"setting": "all", "teacher": "", "student": "", "method": "report", "seed": params.seed}
    with start_run(stage_name("report"), experiment=params.mlflow.experiment,
                   params=flatten({"seed": params.seed, "seeds": list(params.seeds), "transfer": grids}),
                   tags=tags) as run:
        markdown, summary = build_report(params, REPORTS / "figures")
        tmp = REPORTS / "results.md.tmp"
        tmp.write_text(markdown + "\n")
        tmp.replace(REPORTS / "results.md")
        write_json(REPORTS / "summary.json", summary)
        headline = write_comparison(params, REPORTS / "headline.json", REPORTS / "plots")
        run.log_artifact(REPORTS / "results.md")
        run.log_artifact(REPORTS / "summary.json")
        figures = sorted((REPORTS / "figures").glob("*.png"))
        for figure in figures:
            run.log_artifact(figure)
        # The invocation's parent run shows the report too: results.md, its figures (where results.md's
        # links point), the summary over seeds, the headline file and its numbers as metrics (comparable
        # across dvc exp run parents). The run's agent logs them, so that this process never imports MLflow.
        files = [(REPORTS / "results.md", None), (REPORTS / "summary.json", None),
                 (REPORTS / "headline.json", None), *((f, "figures") for f in figures)]
        run.call_in_agent(publish_report, run.run_id, [(str(path.resolve()), folder) for path, folder in files],
                          flatten(headline), {**tags, "method": "pipeline"})


if __name__ == "__main__":
    run_stage(main)
