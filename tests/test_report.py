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
