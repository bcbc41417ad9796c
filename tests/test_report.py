"""The report table formats exactly the numbers of the metrics files it is given."""
import json

import pytest

from pipeline.report import ResultRow, read_metrics, results_table


def test_table_shows_each_metric_of_each_row():
    rows = [
        ResultRow("simclr", "teacher", {"recall@1": 0.81234, "map@r": 0.5, "embedding_dim": 128, "parameters": 307_000}),
        ResultRow("simclr", "small, relaxed", {"recall@1": 0.8, "map@r": 0.41, "embedding_dim": 64, "parameters": 77_500}),
    ]
    table = results_table(rows).splitlines()
    assert table[0].startswith("| Model | R@1 | MAP@R | Dim | Params |")
    assert table[2] == "| teacher | 81.23 | 50.00 | 128 | 0.31M |"  # one section: its heading says it all
    assert table[3] == "| small, relaxed | 80.00 | 41.00 | 64 | 77.5k |"


def test_sections_are_marked_when_a_table_holds_several():
    rows = [ResultRow("a", "x", {"recall@1": 0.5, "parameters": 0}), ResultRow("b", "y", {"recall@1": 0.25, "parameters": 10})]
    table = results_table(rows).splitlines()
    assert table[2].startswith("| **a** |") and table[3] == "| x | 50.00 | - |"
    assert table[4].startswith("| **b** |") and table[5] == "| y | 25.00 | 0.0k |"


def test_missing_metrics_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_metrics(tmp_path / "nope.json")
    (tmp_path / "m.json").write_text(json.dumps({"recall@1": 0.5}))
    assert read_metrics(tmp_path / "m.json") == {"recall@1": 0.5}


def _table1_params(ks=(1, 2, 4, 8)):
    """The tiny profile with Table 1's three students of the Proxy-Anchor teacher (widths 8-16, 16-d)."""
    from pathlib import Path

    import yaml

    from pipeline.config import validate_params

    raw = yaml.safe_load((Path(__file__).parent / "assets/tiny_params.yaml").read_text())
    raw["students"].update(same={"model": {"backbone": "small_resnet", "widths": [8, 16], "embedding_dim": 16},
                                 "role": "self_transfer"},
                           dim8={"model": {"backbone": "small_resnet", "widths": [8, 16], "embedding_dim": 8},
                                 "role": "dim_reduction"})
    raw["losses"]["pkt"] = {"name": "pkt"}
    raw["transfer"]["metric_learning"]["grid"] = {"teacher": ["proxy_anchor"], "student": ["small", "dim8", "same"],
                                                  "loss": ["relaxed", "pkt", "own_objective"]}
    raw["classification"]["grid"] = {"teacher": [], "student": [], "method": []}
    raw["evaluation"]["retrieval"]["ks"] = list(ks)
    return validate_params(raw)


def write_deployed(model_id: str, dim: int, ms: float = 0.1, index_bytes: float | None = None,
                   **extra: float) -> dict:
    """An export stage's deploy.json: `ms` per image at every latency the default and tiny `deploy` sections time,
    the int8 variant twice as fast; index bytes per item 4 x dim unless given."""
    from pipeline.stage_spec import DEPLOY_METRICS, deploy_dir

    record = {"parameters": 1000, "flops": 2e6, "fp32.map@r": 0.5, "int8.map@r": 0.49,
              "index.exact_bytes_per_item": index_bytes or 4 * dim, "index.hnsw_recall_at_k": 0.99, **extra}
    for key in (f"latency_ms_b{batch}_t{threads}" for batch in (1, 8, 64) for threads in (0, 1)):
        record[f"fp32.{key}"], record[f"int8.{key}"] = ms, ms / 2
    deploy_dir(model_id).mkdir(parents=True, exist_ok=True)
    (deploy_dir(model_id) / DEPLOY_METRICS).write_text(json.dumps(record))
    return record


def _write_metrics(model_id: str, metrics: dict) -> None:
    """An evaluation's metrics file (and, for a trained model, its export's deploy.json); for a teacher's own
    output also its training summary (label gap 0.25)."""
    from pipeline.stage_spec import eval_dir, teacher_dir

    eval_dir(model_id).mkdir(parents=True, exist_ok=True)
    (eval_dir(model_id) / "metrics.json").write_text(json.dumps(metrics))
    if not model_id.startswith("pixels-") and not model_id.endswith("-transferred"):
        write_deployed(model_id, int(metrics.get("embedding_dim", 8)))
    if model_id.startswith("teacher-") and not model_id.endswith("-transferred"):
        teacher_dir(model_id.removeprefix("teacher-")).mkdir(parents=True, exist_ok=True)
        (teacher_dir(model_id.removeprefix("teacher-")) / "metrics.json").write_text(
            json.dumps({"steps": 100, "label_gap": 0.25}))


def _retrieval(r1: float, map_r: float, dim: int, parameters: int) -> dict:
    return {"recall@1": r1, "recall@10": r1 + 0.1, "map@r": map_r, "r_precision": map_r + 0.05, "probe_top1": 0.9,
            "embedding_dim": dim, "parameters": parameters}


def test_table1_groups_the_metric_students_into_the_papers_three_settings(tmp_path, monkeypatch):
    """Self-transfer (the teacher's network and dimension), dimensionality reduction (its network, fewer
    dimensions), compression (fewer parameters): each block holds raw pixels, the teacher and its students,
    with R@K for evaluation.retrieval.ks, MAP@R, R-Precision, dimension and parameters; the best student of
    each column in bold."""
    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    params = _table1_params(ks=(1, 10))
    _write_metrics("pixels-simclr", _retrieval(0.5, 0.2, 64, 0))
    _write_metrics("teacher-simclr", _retrieval(0.6, 0.3, 16, 2000))
    _write_metrics("teacher-simclr-transferred", _retrieval(0.58, 0.31, 8, 2000))
    for loss in ("relaxed", "own_objective", "stml"):
        _write_metrics(f"simclr-small-{loss}-seed0", _retrieval(0.55, 0.25, 8, 300))
    _write_metrics("pixels-proxy_anchor", _retrieval(0.9, 0.4, 64, 0))
    _write_metrics("teacher-proxy_anchor", _retrieval(0.8, 0.3, 16, 2000))
    _write_metrics("teacher-proxy_anchor-transferred", _retrieval(0.82, 0.33, 16, 2000))
    sizes = {"same": (16, 2000), "dim8": (8, 1900), "small": (8, 300)}
    scores = {("same", "relaxed"): 0.85, ("same", "pkt"): 0.81, ("same", "own_objective"): 0.79,
              ("dim8", "relaxed"): 0.70, ("dim8", "pkt"): 0.75, ("dim8", "own_objective"): 0.75,
              ("small", "relaxed"): 0.60, ("small", "pkt"): 0.61, ("small", "own_objective"): 0.62}
    for (student, loss), r1 in scores.items():
        _write_metrics(f"proxy_anchor-{student}-{loss}-seed0", _retrieval(r1, r1 / 2, *sizes[student]))
    markdown, _ = build_report(params, tmp_path / "reports" / "figures")
    table1 = markdown[markdown.index("## Table 1:"):]
    headings = [line for line in table1.splitlines() if line.startswith("### ")]
    assert [h.split(":")[0] for h in headings] == ["### Self-transfer", "### Dimensionality reduction",
                                                   "### Compression"]
    blocks = table1.split("### ")[1:]
    header = next(line for line in blocks[0].splitlines() if line.startswith("| Model"))
    assert header == "| Model | R@1 | R@10 | MAP@R | R-Prec | Dim | Params |"
    self_transfer = [line for line in blocks[0].splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert self_transfer == [
        "| raw pixels | 90.00 | 100.00 | 40.00 | 45.00 | 64 | - |",
        "| teacher (small_resnet) | 80.00 | 90.00 | 30.00 | 35.00 | 16 | 2.0k |",
        "| teacher (small_resnet), transferred: L2-normalised embedding | 82.00 | 92.00 | 33.00 | 38.00 | 16 | 2.0k |",
        "| same student, relaxed (relaxed_contrastive), seed 0 | **85.00** | **95.00** | **42.50** | **47.50** | 16 | 2.0k |",
        "| same student, pkt (pkt), seed 0 | 81.00 | 91.00 | 40.50 | 45.50 | 16 | 2.0k |",
        "| same student, own_objective (teacher_objective), seed 0 | 79.00 | 89.00 | 39.50 | 44.50 | 16 | 2.0k |",
    ]
    reduction = blocks[1]
    assert "dim8 student, pkt (pkt), seed 0 | **75.00** |" in reduction
    assert "own_objective (teacher_objective), seed 0 | **75.00** |" in reduction
    assert "same student" not in reduction and "small student" not in reduction
    compression = blocks[2]
    assert compression.count("small student") == 3 and "dim8" not in compression
    assert "| small student, own_objective (teacher_objective), seed 0 | **62.00** |" in compression


def test_table1_groups_students_by_their_declared_role_not_by_their_numbers(tmp_path, monkeypatch):
    """`students.NAME.role` decides the block: dim8 declared a compression student lands there, though its
    network is the teacher's; with no self-transfer student declared, that block is left out."""
    from pipeline.config import validate_params
    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    raw = _table1_params().model_dump(mode="json")
    raw["students"]["dim8"]["role"] = "compression"
    raw["transfer"]["metric_learning"]["grid"]["student"] = ["small", "dim8"]
    params = validate_params(raw)
    _seeded_outputs(params)
    table1 = build_report(params, tmp_path / "reports" / "figures")[0].split("## Table 1:")[1]
    assert [line for line in table1.splitlines() if line.startswith("### ")] == [
        "### Compression: a smaller network, fewer dimensions"]
    assert "dim8 student, relaxed" in table1 and "small student, relaxed" in table1


def _seeded_params(seeds):
    """The Table 1 profile over `seeds`, with a classification grid of kd and relaxed."""
    from pipeline.config import validate_params

    params = _table1_params().model_dump(mode="json")
    params["seeds"] = list(seeds)
    params["classification"]["methods"]["relaxed"] = {"loss": "relaxed_contrastive", "transfer_weight": 0.02}
    params["classification"]["grid"] = {"teacher": ["wide"], "student": ["small"], "method": ["kd", "relaxed"]}
    return validate_params(params)


def _seeded_outputs(params) -> dict[str, dict[int, dict]]:
    """Every metrics file of `params`' grids, each replica its own numbers; relaxed 2.0-2.3 points above pkt
    on every seed under a seed effect both share, so the paired difference separates them. Returns
    model -> seed -> metrics for the students."""
    from pipeline.replica import Replica
    from pipeline.setting import Setting
    from pipeline.stage_spec import classifier_teacher_dir

    written: dict[str, dict[int, dict]] = {}
    for name, value in (("pixels-simclr", 0.5), ("teacher-simclr", 0.6), ("teacher-simclr-transferred", 0.61),
                        ("pixels-proxy_anchor", 0.9), ("teacher-proxy_anchor", 0.8),
                        ("teacher-proxy_anchor-transferred", 0.81)):
        _write_metrics(name, _retrieval(value, value / 2, 16, 2000))
    for seed in params.seeds:
        shared = 0.05 * seed  # what a seed does to every method alike
        for loss in ("relaxed", "own_objective"):
            written.setdefault(f"simclr-small-{loss}", {})[seed] = _retrieval(0.5 + shared, 0.2 + shared, 8, 300)
        written.setdefault("simclr-small-stml", {})[seed] = _retrieval(0.45 + shared, 0.25 + shared, 8, 300)
        for student in ("small", "dim8", "same"):
            for loss, offset in (("relaxed", 0.02 + 0.001 * seed), ("pkt", 0.0), ("own_objective", 0.01 * (seed % 2))):
                value = 0.3 + shared + offset
                sizes = {"same": (16, 2000), "dim8": (8, 1900), "small": (8, 300)}[student]  # Table 1's settings
                written.setdefault(f"proxy_anchor-{student}-{loss}", {})[seed] = _retrieval(value, value, *sizes)
        for method, top1 in (("kd", 0.70 + shared), ("relaxed", 0.71 + shared + 0.002 * seed)):
            written.setdefault(f"wide-small-{method}", {})[seed] = {"top1": top1, "top5": 0.99, "parameters": 500}
    for model, per_seed in written.items():
        for seed, metrics in per_seed.items():
            if model.startswith("wide-"):
                folder = Replica(Setting.CLASSIFICATION, "wide", "small", model.split("-")[-1], seed).folder
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "metrics.json").write_text(json.dumps(metrics))
            else:
                _write_metrics(f"{model}-seed{seed}", metrics)
    classifier_teacher_dir("wide").mkdir(parents=True, exist_ok=True)
    (classifier_teacher_dir("wide") / "metrics.json").write_text(json.dumps({"top1": 0.8, "top5": 1.0, "parameters": 900}))
    return written


def test_the_report_aggregates_every_student_over_its_seeds(tmp_path, monkeypatch):
    """Each grid cell's mean and 95% CI are those of its per-seed metrics files (scipy's t interval);
    relaxed - baseline is paired by seed, per student; raw pixels and the teachers are single runs."""
    import statistics

    import scipy.stats

    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    params = _seeded_params([0, 1, 2, 3])
    written = _seeded_outputs(params)
    markdown, summary = build_report(params, tmp_path / "reports" / "figures")
    settings = {"simclr": "self_supervised", "proxy_anchor": "metric_learning", "wide": "classification"}
    for model, per_seed in written.items():
        setting = "self_taught" if model.endswith("-stml") else settings[model.split("-")[0]]
        for metric in ("top1",) if setting == "classification" else ("map@r", "recall@1"):
            values = [per_seed[s][metric] for s in params.seeds]
            prefix = f"{setting}.{model}.{metric}"
            assert summary[f"{prefix}.mean"] == pytest.approx(statistics.fmean(values), rel=1e-12), prefix
            assert summary[f"{prefix}.n"] == 4
            low, high = scipy.stats.t.interval(0.95, df=3, loc=statistics.fmean(values), scale=scipy.stats.sem(values))
            assert (summary[f"{prefix}.ci_low"], summary[f"{prefix}.ci_high"]) == pytest.approx((low, high), rel=1e-9)
    for student in ("small", "dim8", "same"):  # +2.0-2.3 points on every seed, under a seed effect of 15 points
        key = f"metric_learning.proxy_anchor-{student}.relaxed_vs_pkt.map@r"
        assert summary[f"{key}.diff"] == pytest.approx(0.0215) and summary[f"{key}.verdict"] == 1
        assert summary[f"metric_learning.proxy_anchor-{student}.relaxed_vs_own_objective.map@r.verdict"] == 1
    assert summary["self_supervised.simclr-small.relaxed_vs_own_objective.map@r.verdict"] == 0  # equal: no spread
    assert summary["classification.wide-small.relaxed_vs_kd.top1.diff"] == pytest.approx(0.013)
    assert summary["classification.wide-small.relaxed_vs_kd.top1.verdict"] == 1
    assert summary["metric_learning.pixels-proxy_anchor.map@r.n"] == 1  # a single run under `seed`
    assert "metric_learning.pixels-proxy_anchor.map@r.ci_low" not in summary
    for title in ("## Self-supervised over seeds: simclr", "## Table 1 over seeds: proxy_anchor",
                  "## Classification over seeds: wide", "# Every model", "## Table 1: proxy_anchor"):
        assert title in markdown, title
    assert "| raw pixels | " in markdown and "(1 seed, no interval)" in markdown  # a single run among replicas
    transferred = next(line for line in markdown.splitlines()
                       if line.startswith("| teacher (small_resnet), transferred: L2-normalised embedding |"))
    header = next(line for line in markdown.splitlines() if line.startswith("| Model |") and "Label gap" in line)
    assert transferred.split("|")[header.split("|").index(" Label gap (train) ")].strip() == "0.250"
    assert "same student (self-transfer), relaxed (relaxed_contrastive) | " in markdown
    assert "| same student, relaxed (relaxed_contrastive), seed 3 |" in markdown  # every replica on its own line
    figures = {p.name for p in (tmp_path / "reports" / "figures").iterdir()}
    assert {"seeds_simclr.png", "seeds_proxy_anchor.png", "seeds_classification_wide.png"} <= figures
    assert "(figures/seeds_proxy_anchor.png)" in markdown


def test_one_seed_is_reported_without_an_interval(tmp_path, monkeypatch):
    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    params = _seeded_params([0])
    _seeded_outputs(params)
    markdown, summary = build_report(params, tmp_path / "reports" / "figures")
    assert "| same student (self-transfer), relaxed (relaxed_contrastive) | " in markdown
    line = next(l for l in markdown.splitlines() if l.startswith("| same student (self-transfer), relaxed"))
    assert "| same student (self-transfer), relaxed (relaxed_contrastive) | 90.0 | 32.0 | 32.0 | 37.0 | 16 | 2.0k | - |" == line
    assert "(1 seed, no interval)" not in markdown and "±" not in markdown
    assert markdown.count("(one seed)") == 4  # once per section over seeds, in its heading
    assert not [k for k in summary if k.endswith((".sd", ".ci_low", ".ci_high"))]
    assert summary["metric_learning.proxy_anchor-same.relaxed_vs_pkt.map@r.n"] == 1
    assert summary["metric_learning.proxy_anchor-same.relaxed_vs_pkt.map@r.verdict"] == 0  # one seed never separates


def test_a_missing_replica_is_named(tmp_path, monkeypatch):
    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    params = _seeded_params([0, 1])
    _seeded_outputs(params)
    (tmp_path / "outputs/eval/proxy_anchor-dim8-pkt-seed1/metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="proxy_anchor-dim8-pkt-seed1/metrics.json"):
        build_report(params, tmp_path / "reports" / "figures")


@pytest.mark.parametrize("emptied", [("transfer", "self_supervised", "grid", "student"),
                                     ("transfer", "metric_learning", "grid", "loss"),
                                     ("classification", "grid", "method")])
def test_a_setting_with_an_empty_grid_is_left_out_and_named_once(tmp_path, monkeypatch, emptied):
    """No metrics file of the emptied setting is read (its models never trained): the report covers the
    other settings and says once, naming the empty key, that this one is not in the run."""
    import shutil

    from pipeline.config import validate_params
    from pipeline.stage_spec import OUTPUTS
    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    full = _seeded_params([0, 1])
    _seeded_outputs(full)
    raw = full.model_dump(mode="json")
    section = raw
    for key in emptied[:-1]:
        section = section[key]
    section[emptied[-1]] = []
    params = validate_params(raw)
    setting = "classification" if emptied[0] == "classification" else emptied[1]
    prefix = {"self_supervised": "simclr-", "metric_learning": "proxy_anchor-", "classification": "wide-"}[setting]
    for folder in OUTPUTS.rglob(f"{prefix}*"):  # the emptied setting's students were never trained
        if not folder.name.startswith("simclr-small-stml"):  # the self-taught student, of another setting
            shutil.rmtree(folder)
    markdown, summary = build_report(params, tmp_path / "reports" / "figures")
    assert markdown.count("Not in this run:") == 1
    assert f"`{'.'.join(emptied)}` is empty" in markdown.split("Not in this run:")[1].split("\n")[0]
    assert {key.split(".")[0] for key in summary} == {"self_supervised", "metric_learning", "self_taught",
                                                      "classification"} - {setting}
