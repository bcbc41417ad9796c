"""reports/results.md (every setting over seeds, then the paper's Table 1 shape) and reports/summary.json
(the numbers over seeds, `dvc metrics show`) from this run's metrics files, the headline metrics file and
the tables dvc.yaml's top-level plots draw (`pipeline.comparison`), all also logged onto the pipeline
invocation's parent MLflow run (`pipeline.infra.views`): stage `report`."""
from __future__ import annotations

from pipeline import infra
from pipeline.config import Params, flatten
from pipeline.integrity import write_json
from pipeline.setting import TRANSFER_SETTINGS
from pipeline.stage_spec import REPORT, REPORT_FILES
from pipeline.wiring.common import stage_name


def report(params: Params) -> None:
    from pipeline.comparison import write_comparison
    from pipeline.report import build_report

    grids = {setting.value: {"grid": params.transfer.of(setting).grid.model_dump(mode="json")}
             for setting in TRANSFER_SETTINGS}
    tags = {"setting": "all", "teacher": "", "student": "", "method": REPORT.name, "seed": params.seed}
    results, summary_path, headline_path = (REPORT_FILES[key] for key in ("results", "summary", "headline"))
    with infra.start_run(stage_name(REPORT.name), experiment=params.mlflow.experiment,
                            params=flatten({"seed": params.seed, "seeds": list(params.seeds), "transfer": grids}),
                            tags=tags) as run:
        markdown, summary = build_report(params, REPORT_FILES["figures"])
        tmp = results.with_name(results.name + ".tmp")
        tmp.write_text(markdown + "\n")
        tmp.replace(results)
        write_json(summary_path, summary)
        headline = write_comparison(params, headline_path, REPORT_FILES["plots"])
        run.log_artifact(results)
        run.log_artifact(summary_path)
        figures = sorted(REPORT_FILES["figures"].glob("*.png"))
        for figure in figures:
            run.log_artifact(figure)
        # The invocation's parent run shows the report too: results.md, its figures (where results.md's
        # links point), the summary over seeds, the headline file and its numbers as metrics (comparable
        # across dvc exp run parents). The run's agent logs them, so that this process never imports MLflow.
        files = [(results, None), (summary_path, None), (headline_path, None), *((f, "figures") for f in figures)]
        run.call_in_agent(infra.publish_report, run.run_id,
                          [(str(path.resolve()), folder) for path, folder in files], flatten(headline),
                          {**tags, "method": "pipeline"})
