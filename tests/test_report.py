"""The report table formats exactly the numbers of the metrics files it is given."""
import json

import pytest

from pipeline.report import ResultRow, read_metrics, results_table, retrieval_columns


def test_table_shows_each_metric_of_each_row():
    rows = [
        ResultRow("simclr", "teacher", {"recall@1": 0.81234, "map@r": 0.5, "embedding_dim": 128, "parameters": 307_000}),
        ResultRow("simclr", "small, relaxed", {"recall@1": 0.8, "map@r": 0.41, "embedding_dim": 64, "parameters": 77_500}),
    ]
    table = results_table(rows, retrieval_columns([1, 2, 4, 8])).splitlines()
    assert table[0].startswith("| Model | R@1 | MAP@R | Dim | Params |")
    assert table[2] == "| teacher | 81.23 | 50.00 | 128 | 0.31M |"  # one section: its heading says it all
    assert table[3] == "| small, relaxed | 80.00 | 41.00 | 64 | 77.5k |"


def test_sections_are_marked_when_a_table_holds_several():
    rows = [ResultRow("a", "x", {"recall@1": 0.5, "parameters": 0}), ResultRow("b", "y", {"recall@1": 0.25, "parameters": 10})]
    table = results_table(rows, retrieval_columns([1, 2, 4, 8])).splitlines()
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
    raw["students"].update(same={"model": {"backbone": "small_resnet", "widths": [8, 16], "embedding_dim": 16}},
                           dim8={"model": {"backbone": "small_resnet", "widths": [8, 16], "embedding_dim": 8}})
    raw["losses"]["pkt"] = {"name": "pkt"}
    raw["transfer"]["metric_learning"]["grid"] = {"teacher": ["proxy_anchor"], "student": ["small", "dim8", "same"],
                                                  "loss": ["relaxed", "pkt", "own_objective"]}
    raw["classification"]["grid"] = {"teacher": [], "student": [], "method": []}
    raw["evaluation"]["retrieval"]["ks"] = list(ks)
    return validate_params(raw)


def _write_metrics(model_id: str, metrics: dict) -> None:
    from pipeline.outputs import eval_dir

    eval_dir(model_id).mkdir(parents=True, exist_ok=True)
    (eval_dir(model_id) / "metrics.json").write_text(json.dumps(metrics))


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
    for loss in ("relaxed", "own_objective"):
        _write_metrics(f"simclr-small-{loss}", _retrieval(0.55, 0.25, 8, 300))
    _write_metrics("pixels-proxy_anchor", _retrieval(0.9, 0.4, 64, 0))
    _write_metrics("teacher-proxy_anchor", _retrieval(0.8, 0.3, 16, 2000))
    sizes = {"same": (16, 2000), "dim8": (8, 1900), "small": (8, 300)}
    scores = {("same", "relaxed"): 0.85, ("same", "pkt"): 0.81, ("same", "own_objective"): 0.79,
              ("dim8", "relaxed"): 0.70, ("dim8", "pkt"): 0.75, ("dim8", "own_objective"): 0.75,
              ("small", "relaxed"): 0.60, ("small", "pkt"): 0.61, ("small", "own_objective"): 0.62}
    for (student, loss), r1 in scores.items():
        _write_metrics(f"proxy_anchor-{student}-{loss}", _retrieval(r1, r1 / 2, *sizes[student]))
    markdown, _ = build_report(params, tmp_path / "reports" / "figures")
    table1 = markdown[markdown.index("## Table 1"):]
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
        "| same student, relaxed (relaxed_contrastive) | **85.00** | **95.00** | **42.50** | **47.50** | 16 | 2.0k |",
        "| same student, pkt (pkt) | 81.00 | 91.00 | 40.50 | 45.50 | 16 | 2.0k |",
        "| same student, own_objective (teacher_objective) | 79.00 | 89.00 | 39.50 | 44.50 | 16 | 2.0k |",
    ]
    reduction = blocks[1]
    assert "dim8 student, pkt (pkt) | **75.00** |" in reduction and "own_objective (teacher_objective) | **75.00** |" in reduction
    assert "same student" not in reduction and "small student" not in reduction
    compression = blocks[2]
    assert compression.count("small student") == 3 and "dim8" not in compression
    assert "| small student, own_objective (teacher_objective) | **62.00** |" in compression


def test_table1_setting_of_a_student():
    from pipeline.config import ModelConfig
    from pipeline.report import table1_setting

    teacher = ModelConfig(backbone="small_resnet", widths=(8, 16), embedding_dim=16)
    t = {"embedding_dim": 16, "parameters": 2000}
    assert table1_setting(teacher, ModelConfig(backbone="small_resnet", widths=(8, 16), embedding_dim=16), t,
                          {"embedding_dim": 16, "parameters": 2000}) == "self_transfer"
    assert table1_setting(teacher, ModelConfig(backbone="small_resnet", widths=(8, 16), embedding_dim=4), t,
                          {"embedding_dim": 4, "parameters": 1900}) == "dim_reduction"
    assert table1_setting(teacher, ModelConfig(backbone="small_resnet", widths=(4, 8), embedding_dim=16), t,
                          {"embedding_dim": 16, "parameters": 500}) == "compression"
    # A wider student is none of the paper's three settings.
    assert table1_setting(teacher, ModelConfig(backbone="small_resnet", widths=(16, 32), embedding_dim=16), t,
                          {"embedding_dim": 16, "parameters": 8000}) == "other"
