"""The report over seeds: cells, paired comparisons, the summary's keys and the figure, each checked
against numbers worked out here by hand or with scipy.stats, never against the module's own output."""
import json
import math
import re
import statistics
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import scipy.stats

from pipeline.seed_report import (
    SeedRow,
    compare,
    comparison_table,
    seed_figure,
    seed_section,
    seed_summary,
    seed_table,
)

NUM = r"([+-]?\d+\.\d+)"
CELL = re.compile(rf"^{NUM} ± (\d+\.\d+) \[{NUM}, {NUM}\] \(n=(\d+)\)(, (.+?)(?: \(Holm: (.+)\))?)?$")


def table(markdown: str) -> dict[str, dict[str, str]]:
    """{first cell: {column title: cell}} of the first Markdown table in `markdown`."""
    text = markdown[markdown.index("\n|") + 1:] if not markdown.startswith("|") else markdown
    lines = text.split("\n\n")[0].splitlines()
    titles = [t.strip() for t in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(titles[1:], cells[1:], strict=True))
    return out


def seeds(*values: float, key: str = "map@r", start: int = 0) -> dict[int, dict[str, float]]:
    return {start + i: {key: v} for i, v in enumerate(values)}


def t_interval(values, level=0.95):
    x = np.asarray(values, dtype=float)
    return scipy.stats.t.interval(level, df=len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))


def test_cell_and_summary_of_three_seeds_are_the_hand_worked_interval():
    # 0.30, 0.31, 0.32: mean 0.31, sd 0.01; t_{0.975,2} = a sqrt(2 / (1 - a^2)) with a = 0.95 (closed form)
    t = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))
    assert t == pytest.approx(scipy.stats.t.ppf(0.975, 2), rel=1e-12)
    half = t * 0.01 / math.sqrt(3)
    rows = [SeedRow("relaxed", "relaxed", seeds(0.30, 0.31, 0.32))]
    cell = table(seed_table(rows, digits=3))["relaxed"]["MAP@R"]
    assert cell == f"31.000 ± 1.000 [{100 * (0.31 - half):.3f}, {100 * (0.31 + half):.3f}] (n=3)"
    s = seed_summary("ssl", rows)
    assert s["ssl.relaxed.map@r.mean"] == pytest.approx(0.31, rel=1e-12)
    assert s["ssl.relaxed.map@r.sd"] == pytest.approx(0.01, rel=1e-9)
    assert (s["ssl.relaxed.map@r.ci_low"], s["ssl.relaxed.map@r.ci_high"]) == pytest.approx(
        (0.31 - half, 0.31 + half), rel=1e-9)
    assert (s["ssl.relaxed.map@r.ci_low"], s["ssl.relaxed.map@r.ci_high"]) == pytest.approx(
        t_interval([0.30, 0.31, 0.32]), rel=1e-9)
    assert s["ssl.relaxed.map@r.n"] == 3


def test_table_means_are_the_means_of_the_per_seed_values():
    rng = np.random.default_rng(7)
    metrics = ["recall@1", "map@r", "r_precision", "nmi", "probe_top1", "knn_top1"]  # R@2+: per replica only
    per_row = {name: {s: {m: float(rng.uniform(0.2, 0.9)) for m in metrics} for s in range(5)}
               for name in ("pixels", "relaxed", "pkt")}
    rows = [SeedRow(name, None if name == "pixels" else name, per_seed) for name, per_seed in per_row.items()]
    cells = table(seed_table(rows, digits=4))
    summary = seed_summary("s", rows)
    titles = {"recall@1": "R@1", "map@r": "MAP@R", "r_precision": "R-Prec", "nmi": "NMI",
              "probe_top1": "Probe top-1", "knn_top1": "kNN top-1"}
    for name, per_seed in per_row.items():
        for metric in metrics:
            values = [per_seed[s][metric] for s in range(5)]
            parsed = CELL.match(cells[name][titles[metric]])
            assert parsed, cells[name][titles[metric]]
            assert float(parsed.group(1)) == pytest.approx(100 * statistics.fmean(values), abs=5e-5)
            assert float(parsed.group(2)) == pytest.approx(100 * statistics.stdev(values), abs=5e-5)
            assert int(parsed.group(5)) == 5
            assert summary[f"s.{name}.{metric}.mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
            low, high = t_interval(values)
            assert summary[f"s.{name}.{metric}.ci_low"] == pytest.approx(low, rel=1e-9)
            assert summary[f"s.{name}.{metric}.ci_high"] == pytest.approx(high, rel=1e-9)


def test_paired_difference_uses_the_pairing():
    # a large seed effect shared by both methods, and a steady +1 point for relaxed
    base = [0.20, 0.30, 0.40, 0.25, 0.35]
    gain = [0.010, 0.012, 0.008, 0.011, 0.009]
    ref = [b + g for b, g in zip(base, gain)]
    welch = scipy.stats.ttest_ind(ref, base, equal_var=False).confidence_interval(0.95)
    assert welch.low < 0 < welch.high  # unpaired, the two methods are not separated
    diffs = [r - b for r, b in zip(ref, base)]
    low, high = t_interval(diffs)
    assert low > 0  # paired, they are
    rows = [SeedRow("relaxed", "relaxed", seeds(*ref)), SeedRow("pkt", "pkt", seeds(*base))]
    (c,) = compare(rows, "relaxed", ["pkt"], metrics=["map@r"])
    assert c.difference.verdict == "better"
    s = seed_summary("ssl", rows, [c])
    assert s["ssl.relaxed_vs_pkt.map@r.diff"] == pytest.approx(statistics.fmean(diffs), rel=1e-9)
    assert (s["ssl.relaxed_vs_pkt.map@r.ci_low"], s["ssl.relaxed_vs_pkt.map@r.ci_high"]) == pytest.approx(
        (low, high), rel=1e-9)
    assert s["ssl.relaxed_vs_pkt.map@r.verdict"] == 1
    assert table(comparison_table([c], digits=2))["pkt"]["MAP@R"] == (
        f"+{100 * statistics.fmean(diffs):.2f} ± {100 * statistics.stdev(diffs):.2f} "
        f"[+{100 * low:.2f}, +{100 * high:.2f}] (n=5), better (Holm: better)")  # one comparison: m = 1


def test_verdict_cells_better_worse_not_separated():
    ref = [0.50, 0.60, 0.55, 0.52]
    baselines = {
        "below": [r - d for r, d in zip(ref, [0.020, 0.022, 0.018, 0.021])],  # relaxed better
        "above": [r + d for r, d in zip(ref, [0.020, 0.022, 0.018, 0.021])],  # relaxed worse
        "mixed": [r - d for r, d in zip(ref, [0.010, -0.010, 0.005, -0.004])],  # not separated
    }
    expected = {"below": ("better", 1), "above": ("worse", -1), "mixed": ("not separated", 0)}
    for name, values in baselines.items():  # the constructed cases are what they claim, by scipy
        low, high = t_interval([r - b for r, b in zip(ref, values)])
        assert {"better": low > 0, "worse": high < 0, "not separated": low < 0 < high}[expected[name][0]]
    rows = [SeedRow("relaxed", "relaxed", seeds(*ref))] + [
        SeedRow(name, name, seeds(*values)) for name, values in baselines.items()]
    comparisons = compare(rows, "relaxed", list(baselines), metrics=["map@r"])
    cells = table(comparison_table(comparisons))
    summary = seed_summary("t1", rows, comparisons)
    for name, (word, code) in expected.items():
        parsed = CELL.match(cells[name]["MAP@R"])
        assert parsed and parsed.group(7) == word, cells[name]["MAP@R"]
        assert summary[f"t1.relaxed_vs_{name}.map@r.verdict"] == code


def test_one_seed_prints_plain_numbers_and_has_no_sd_or_ci_keys():
    rows = [SeedRow("relaxed", "relaxed", seeds(0.31)), SeedRow("pkt", "pkt", seeds(0.30))]
    assert table(seed_table(rows))["relaxed"]["MAP@R"] == "31.0"
    comparisons = compare(rows, "relaxed", ["pkt"], metrics=["map@r"])
    assert table(comparison_table(comparisons))["pkt"]["MAP@R"] == (
        "+1.0 (1 seed, no interval), not separated (Holm: not separated)")
    assert table(comparison_table(comparisons, plain=True))["pkt"]["MAP@R"] == "+1.0"
    assert comparisons[0].difference.verdict == "not separated"
    s = seed_summary("x", rows, comparisons)
    assert s == pytest.approx({"x.relaxed.map@r.mean": 0.31, "x.relaxed.map@r.n": 1,
                               "x.pkt.map@r.mean": 0.30, "x.pkt.map@r.n": 1,
                               "x.relaxed_vs_pkt.map@r.diff": 0.01, "x.relaxed_vs_pkt.map@r.n": 1,
                               "x.relaxed_vs_pkt.map@r.verdict": 0, "x.relaxed_vs_pkt.map@r.verdict_holm": 0})  # no p


def test_seeds_without_spread_are_no_zero_width_interval():
    rows = [SeedRow("relaxed", "relaxed", seeds(0.25, 0.25, 0.25)),
            SeedRow("pkt", "pkt", seeds(0.25, 0.25, 0.25))]
    cells = table(seed_table(rows))
    assert cells["relaxed"]["MAP@R"] == "25.0 (n=3, no spread, no interval)"
    comparisons = compare(rows, "relaxed", ["pkt"], metrics=["map@r"])
    assert comparisons[0].difference.verdict == "not separated"
    s = seed_summary("x", rows, comparisons)
    assert not [k for k in s if k.endswith((".sd", ".ci_low", ".ci_high"))]
    assert s["x.relaxed.map@r.n"] == 3 and s["x.relaxed_vs_pkt.map@r.verdict"] == 0


def test_missing_seeds_are_paired_over_the_common_ones_and_n_is_shown():
    ref = seeds(0.30, 0.32, 0.31, 0.35, 0.36)  # seeds 0-4
    base = seeds(0.29, 0.30, 0.30, start=0)  # seeds 0-2 only
    rows = [SeedRow("relaxed", "relaxed", ref), SeedRow("rkd", "rkd", base)]
    cells = table(seed_table(rows, digits=2))
    assert cells["relaxed"]["MAP@R"].endswith("(n=5)") and cells["rkd"]["MAP@R"].endswith("(n=3)")
    comparisons = compare(rows, "relaxed", ["rkd"], metrics=["map@r"])
    (c,) = comparisons
    assert c.difference.seeds == (0, 1, 2) and c.only_reference == (3, 4) and c.only_baseline == ()
    diffs = [0.30 - 0.29, 0.32 - 0.30, 0.31 - 0.30]
    text = comparison_table(comparisons)
    assert table(text)["rkd"]["MAP@R"].startswith(f"+{100 * statistics.fmean(diffs):.1f} ± ")
    assert "(n=3)" in table(text)["rkd"]["MAP@R"]
    assert "seeds [3, 4] only for relaxed" in text
    s = seed_summary("x", rows, comparisons)
    assert s["x.relaxed_vs_rkd.map@r.n"] == 3
    assert s["x.relaxed_vs_rkd.map@r.diff"] == pytest.approx(statistics.fmean(diffs), rel=1e-9)
    assert s["x.relaxed_vs_rkd.map@r.ci_high"] == pytest.approx(t_interval(diffs)[1], rel=1e-9)


def test_section_markdown_summary_and_keys(tmp_path):
    per = {s: {"map@r": 0.3 + 0.01 * s, "recall@1": 0.8 + 0.005 * s * s, "embedding_dim": 128,
               "parameters": 250_000, "num_test": 5000} for s in range(3)}
    rows = [("raw pixels", None, {0: {"map@r": 0.2, "recall@1": 0.7, "embedding_dim": 784, "parameters": 0}}),
            ("small student, relaxed (Relaxed contrastive)", "relaxed", per, "simclr-small-relaxed"),
            ("small student, pkt", "pkt", {s: {**m, "map@r": m["map@r"] - 0.01} for s, m in per.items()})]
    markdown, summary = seed_section("simclr", "SimCLR teacher", rows, reference="relaxed", baselines=["pkt"],
                                     figure_path=tmp_path / "f.png", figure_link="figures/f.png")
    cells = table(markdown)
    assert cells["small student, relaxed (Relaxed contrastive)"]["Dim"] == "128"
    assert cells["small student, relaxed (Relaxed contrastive)"]["Params"] == "0.25M"
    assert cells["raw pixels"]["Params"] == "-"
    varying = [SeedRow("odd", None, {0: {"embedding_dim": 64}, 1: {"embedding_dim": 128}})]
    assert table(seed_table(varying))["odd"]["Dim"] == "varies over seeds: 64, 128"
    assert "num_test" not in markdown and "![SimCLR teacher" in markdown and "figures/f.png" in markdown
    assert "| pkt |" in markdown and (tmp_path / "f.png").is_file()
    assert "simclr.simclr-small-relaxed.map@r.mean" in summary and "simclr.raw_pixels.map@r.n" in summary
    assert "simclr.small_student_pkt.recall@1.ci_low" in summary
    assert "simclr.relaxed_vs_pkt.recall@1.verdict" in summary
    assert "simclr.relaxed_vs_pkt.map@r.diff" in summary
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in summary.values())
    json.dumps(summary, allow_nan=False)
    assert not [k for k in summary if "embedding_dim" in k or "parameters" in k]


def test_figure_is_a_deterministic_png(tmp_path):
    per = {s: {"map@r": 0.3 + 0.01 * s, "recall@1": 0.8 + 0.02 * s} for s in range(3)}
    rows = [SeedRow("relaxed", "relaxed", per),
            SeedRow("pixels", None, {0: {"map@r": 0.25, "recall@1": 0.7}})]
    for name in ("a.png", "b.png"):
        seed_figure(tmp_path / name, rows, reference="relaxed")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert matplotlib.image.imread(tmp_path / "a.png").ndim == 3
    moved = [rows[0], SeedRow("pixels", None, {0: {"map@r": 0.28, "recall@1": 0.7}})]
    seed_figure(tmp_path / "c.png", moved, reference="relaxed")
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "a.png").read_bytes()


def test_ambiguous_or_missing_methods_and_clashing_keys_are_refused():
    one = seeds(0.3, 0.31)
    with pytest.raises(ValueError, match=r"missing \['pkt'\]"):
        compare([SeedRow("r", "relaxed", one)], "relaxed", ["pkt"])
    with pytest.raises(ValueError, match="in several rows"):
        compare([SeedRow("a", "relaxed", one), SeedRow("b", "relaxed", one), SeedRow("p", "pkt", one)],
                "relaxed", ["pkt"])
    with pytest.raises(ValueError, match="unique"):
        seed_table([SeedRow("a b", None, one), SeedRow("a, b", None, one)])
    with pytest.raises(ValueError, match="without '.'"):
        seed_summary("x", [SeedRow("a", None, one, key="a.b")])
    with pytest.raises(ValueError, match="non-finite"):
        seed_table([SeedRow("a", None, seeds(0.3, float("nan")))])


def test_import_loads_neither_torch_nor_mlflow_nor_matplotlib():
    heavy = "{'torch', 'mlflow', 'matplotlib', 'scipy'}"
    code = ("import sys, pipeline.seed_report; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_groups_compare_each_students_rows_with_each_other():
    rows = [SeedRow("pixels", None, seeds(0.10, 0.10)),
            SeedRow("same, relaxed", "relaxed", seeds(0.40, 0.42), group="same"),
            SeedRow("same, pkt", "pkt", seeds(0.30, 0.33), group="same"),
            SeedRow("small, relaxed", "relaxed", seeds(0.20, 0.21), group="small"),
            SeedRow("small, pkt", "pkt", seeds(0.25, 0.27), group="small")]
    comparisons = compare(rows, "relaxed", ["pkt"], metrics=["map@r"])
    s = seed_summary("t1", rows, comparisons)
    assert s["t1.same.relaxed_vs_pkt.map@r.diff"] == pytest.approx(statistics.fmean([0.10, 0.09]), rel=1e-9)
    small = s["t1.small.relaxed_vs_pkt.map@r.diff"]
    assert small == pytest.approx(statistics.fmean([-0.05, -0.06]), rel=1e-9)
    cells = table(comparison_table(comparisons))
    assert set(cells) == {"same: pkt", "small: pkt"}
    assert cells["small: pkt"]["MAP@R"].startswith(f"{100 * statistics.fmean([-0.05, -0.06]):.1f} ± ")
    with pytest.raises(ValueError, match="in several rows"):  # without groups the two students clash
        compare([row._replace(group=None) for row in rows], "relaxed", ["pkt"])
    with pytest.raises(ValueError, match="of group 'small'"):
        compare(rows[:4], "relaxed", ["pkt"])
