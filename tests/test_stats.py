"""Seed statistics: intervals against hand-worked cases and scipy.stats, pairing, verdicts, refusals."""
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from pipeline.stats import (
    INTERVAL_LEGEND,
    Interval,
    format_difference,
    format_interval,
    paired_difference,
    summaries_as_dict,
    summarize,
    summarize_seeds,
    t_quantile,
    verdict,
)


def t_975_df2() -> float:
    # df = 2 has a closed-form CDF, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so t_{0.975,2} = a sqrt(2 / (1 - a^2))
    # with a = 0.95: sqrt(1.805 / 0.0975) = 4.30265272974946...
    a = 0.95
    return a * math.sqrt(2 / (1 - a * a))


def test_interval_of_one_two_three_is_the_hand_worked_one():
    s = summarize([1.0, 2.0, 3.0])
    t = t_975_df2()
    assert t == pytest.approx(4.3026527297, abs=1e-9)  # the printed tables' value
    assert s.n == 3 and s.mean == pytest.approx(2.0) and s.sd == pytest.approx(1.0)
    assert s.ci_low == pytest.approx(2 - t / math.sqrt(3), rel=1e-12)
    assert s.ci_high == pytest.approx(2 + t / math.sqrt(3), rel=1e-12)
    assert s.half_width == pytest.approx(t / math.sqrt(3), rel=1e-12)


def test_two_seeds_use_one_degree_of_freedom():
    # df = 1 is the Cauchy distribution: t_{0.975,1} = tan(0.475 pi) = 12.7062...
    # values 0, 2: mean 1, sd sqrt 2, half-width t * sqrt 2 / sqrt 2 = t
    s = summarize([0.0, 2.0])
    t = math.tan(math.pi * 0.475)
    assert s.sd == pytest.approx(math.sqrt(2))
    assert (s.ci_low, s.ci_high) == pytest.approx((1 - t, 1 + t), rel=1e-12)


@pytest.mark.parametrize("n", [3, 5, 10, 30])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_interval_matches_scipy_stats_t(n, level):
    x = np.random.default_rng(n).normal(0.6, 0.02, size=n)
    low, high = scipy.stats.t.interval(level, df=n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    s = summarize(x.tolist(), level=level)
    assert s.n == n and s.level == level
    assert s.mean == pytest.approx(statistics.fmean(x.tolist()), rel=1e-12)
    assert s.sd == pytest.approx(statistics.stdev(x.tolist()), rel=1e-10)  # sample sd, ddof = 1
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), rel=1e-12)


def test_t_quantile_is_scipy_stats_t_ppf():
    for df in (1, 2, 4, 9, 29):
        for p in (0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-14)


def test_a_mapping_of_seeds_is_summarised_by_its_values():
    assert summarize({7: 1.0, 3: 2.0, 5: 3.0}) == summarize([1.0, 2.0, 3.0])


def test_one_seed_has_no_interval_and_says_so():
    s = summarize([0.832])
    assert s.n == 1 and s.mean == pytest.approx(0.832)
    assert s.sd is None and s.ci_low is None and s.ci_high is None and s.half_width is None
    assert s.as_dict() == {"mean": pytest.approx(0.832), "sd": None, "ci_low": None, "ci_high": None, "n": 1}
    assert format_interval(s, scale=100) == "83.2 (1 seed, no interval)"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(ValueError, match="non-finite"):
        summarize([0.5, bad, 0.6])
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: bad})
    with pytest.raises(ValueError, match="non-finite"):
        summarize_seeds({0: {"map@r": 0.5}, 1: {"map@r": bad}})


@pytest.mark.parametrize("bad", [[], ["0.5"], [True, 0.5], [None]])
def test_empty_or_non_numeric_values_are_refused(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_level_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="level"):
        summarize([1.0, 2.0], level=95)


# A paired case: the seed moves both methods together by up to 10 points, the method adds 1 +- 0.2.
BASELINE = {0: 80.0, 1: 85.0, 2: 90.0, 3: 75.0, 4: 95.0}
GAIN = {0: 1.0, 1: 1.2, 2: 0.8, 3: 1.1, 4: 0.9}
METHOD = {s: BASELINE[s] + GAIN[s] for s in BASELINE}


def test_paired_difference_uses_the_pairing():
    seeds = sorted(BASELINE)
    a = np.array([METHOD[s] for s in seeds])
    b = np.array([BASELINE[s] for s in seeds])
    # hand-worked: differences 1.0, 1.2, 0.8, 1.1, 0.9 -> mean 1, sd sqrt(0.1 / 4), t_{0.975,4}
    d = paired_difference(METHOD, dict(reversed(list(BASELINE.items()))))  # matched by seed, not by order
    half = scipy.stats.t.ppf(0.975, 4) * math.sqrt(0.1 / 4) / math.sqrt(5)
    assert d.seeds == tuple(seeds) and d.differences == pytest.approx([GAIN[s] for s in seeds])
    assert d.interval.mean == pytest.approx(1.0) and d.interval.sd == pytest.approx(math.sqrt(0.025))
    assert (d.interval.ci_low, d.interval.ci_high) == pytest.approx((1 - half, 1 + half))
    # a second computation: scipy's paired t-test interval
    paired = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (d.interval.ci_low, d.interval.ci_high) == pytest.approx((paired.low, paired.high))
    assert d.interval.ci_low > 0 and d.verdict == "better"
    # unpaired, the seed spread swamps the gain: Welch's and the pooled interval both contain 0
    for equal_var in (False, True):
        unpaired = scipy.stats.ttest_ind(a, b, equal_var=equal_var).confidence_interval(0.95)
        assert unpaired.low < 0 < unpaired.high


def test_mismatched_seeds_are_refused_naming_each_side():
    both_sides = r"seeds \[4\] are missing from the baseline.*seeds \[9\] are missing from the method"
    with pytest.raises(ValueError, match=both_sides):
        paired_difference({0: 1.0, 1: 1.0, 4: 1.0}, {0: 1.0, 1: 1.0, 9: 1.0})
    with pytest.raises(ValueError, match=r"seeds \[2, 3\] are missing from the method"):
        paired_difference({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})


def test_verdicts_better_worse_not_separated():
    assert paired_difference(METHOD, BASELINE).verdict == "better"
    assert paired_difference(BASELINE, METHOD).verdict == "worse"
    noisy = {s: BASELINE[s] + g for s, g in zip(sorted(BASELINE), [1.0, -1.0, 0.5, -0.5, 0.2])}
    assert paired_difference(noisy, BASELINE).verdict == "not separated"
    # lower is better (a loss): a positive difference is worse
    assert paired_difference(METHOD, BASELINE, higher_is_better=False).verdict == "worse"
    assert paired_difference(BASELINE, METHOD, higher_is_better=False).verdict == "better"


def test_verdict_reads_the_interval_bounds():
    assert verdict(Interval(n=3, mean=0.5, sd=0.1, ci_low=0.01, ci_high=0.9)) == "better"
    assert verdict(Interval(n=3, mean=-0.5, sd=0.1, ci_low=-0.9, ci_high=-0.01)) == "worse"
    assert verdict(Interval(n=3, mean=0.5, sd=0.1, ci_low=0.0, ci_high=0.9)) == "not separated"  # at 0
    assert verdict(Interval(n=3, mean=0.1, sd=0.1, ci_low=-0.2, ci_high=0.4)) == "not separated"
    above = Interval(n=3, mean=0.5, sd=0.1, ci_low=0.01, ci_high=0.9)
    assert verdict(above, higher_is_better=False) == "worse"


def test_one_seed_difference_is_not_separated_however_large():
    d = paired_difference({0: 0.9}, {0: 0.1})
    assert d.interval.mean == pytest.approx(0.8) and d.interval.ci_low is None
    assert d.verdict == "not separated"
    assert format_difference(d, scale=100) == "+80.0 (1 seed, no interval), not separated"
    assert d.as_dict()["verdict"] == 0 and d.as_dict()["ci_low"] is None


def test_summarize_seeds_gives_one_summary_per_metric():
    per_seed = {
        0: {"map@r": 0.50, "recall@1": 0.80, "method": "relaxed", "embedding_dim": 64},
        1: {"map@r": 0.52, "recall@1": 0.81, "method": "relaxed", "embedding_dim": 64},
        2: {"map@r": 0.51, "recall@1": 0.83, "method": "relaxed", "embedding_dim": 64},
    }
    out = summarize_seeds(per_seed)
    assert sorted(out) == ["embedding_dim", "map@r", "recall@1"]  # the string is skipped
    assert out["map@r"].mean == pytest.approx(0.51) and out["map@r"].sd == pytest.approx(0.01)
    assert out["recall@1"].mean == pytest.approx(statistics.fmean([0.80, 0.81, 0.83]))
    assert out["recall@1"].sd == pytest.approx(statistics.stdev([0.80, 0.81, 0.83]))
    assert out["embedding_dim"].mean == 64 and out["embedding_dim"].sd == 0
    assert list(summarize_seeds(per_seed, metrics=["map@r"])) == ["map@r"]


def test_summarize_seeds_refuses_a_metric_some_seeds_lack():
    per_seed = {0: {"map@r": 0.5, "recall@1": 0.8}, 1: {"map@r": 0.5}, 2: {"map@r": 0.6}}
    with pytest.raises(ValueError, match=r"'recall@1' missing in seeds \[1, 2\]"):
        summarize_seeds(per_seed)
    with pytest.raises(ValueError, match=r"'recall@1' missing in seeds \[1, 2\]"):
        summarize_seeds(per_seed, metrics=["recall@1"])
    with pytest.raises(ValueError, match="no seeds"):
        summarize_seeds({})


def test_text_form_follows_the_documented_convention():
    s = Interval(n=5, mean=0.832, sd=0.006, ci_low=0.824, ci_high=0.840)
    assert format_interval(s, scale=100) == "83.2 ± 0.6 [82.4, 84.0] (n=5)"
    assert format_interval(s, digits=3) == "0.832 ± 0.006 [0.824, 0.840] (n=5)"
    assert "sd" in INTERVAL_LEGEND and "95% CI" in INTERVAL_LEGEND
    d = paired_difference(METHOD, BASELINE)
    half = scipy.stats.t.ppf(0.975, 4) * math.sqrt(0.025) / math.sqrt(5)
    assert format_difference(d) == f"+1.0 ± 0.2 [+{1 - half:.1f}, +{1 + half:.1f}] (n=5), better"
    assert format_interval(summarize([1.0, 2.0, 3.0], level=0.9)).endswith("90% CI (n=3)")


def test_machine_readable_form_is_plain_json_numbers():
    x = np.array([0.50, 0.52, 0.51, 0.55])
    out = summaries_as_dict({"map@r": summarize(x), "map@r_vs_pkt": paired_difference(METHOD, BASELINE)})
    assert set(out["map@r"]) == {"mean", "sd", "ci_low", "ci_high", "n"}
    assert set(out["map@r_vs_pkt"]) == {"mean", "sd", "ci_low", "ci_high", "n", "verdict"}
    assert out["map@r_vs_pkt"]["verdict"] == 1
    for leaf in [*out["map@r"].values(), *out["map@r_vs_pkt"].values()]:
        assert type(leaf) in (float, int)  # no numpy scalars, no strings (DVC shows numeric leaves only)
    assert out["map@r"]["n"] == 4 and type(out["map@r"]["n"]) is int
    low, high = scipy.stats.t.interval(0.95, df=3, loc=x.mean(), scale=scipy.stats.sem(x))
    assert json.loads(json.dumps(out))["map@r"]["ci_low"] == pytest.approx(low)
    assert json.loads(json.dumps(out))["map@r"]["ci_high"] == pytest.approx(high)


def test_importing_the_module_pulls_in_neither_torch_nor_scipy_stats():
    code = "import sys, pipeline.stats; print([m for m in ('torch', 'scipy.stats') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- Holm's correction, against statsmodels' multipletests(method="holm") as the oracle ------------------

@pytest.mark.parametrize("p_values", [
    [0.01, 0.04, 0.03, 0.005],
    [0.02, 0.02, 0.02],                          # ties
    [0.001, 0.2, 0.5, 0.049, 0.011, 0.9, 0.03],
    [0.6],
    [1e-6, 0.5, 1.0, 0.0124, 0.013],  # (not 0.0125: 4 x 0.0125 = alpha, where statsmodels rejects on <=)
])
def test_holm_matches_statsmodels(p_values):
    from statsmodels.stats.multitest import multipletests

    from pipeline.stats import holm

    rejected, adjusted, _, _ = multipletests(p_values, alpha=0.05, method="holm")
    assert holm(p_values) == pytest.approx(list(adjusted), abs=1e-15)
    assert [p < 0.05 for p in holm(p_values)] == list(rejected)


def test_holm_by_hand_and_a_comparison_without_p_still_counts():
    from pipeline.stats import holm

    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, max(0.04, 0.04) (Holm 1979)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # m = 4 with a comparison that has no p (no spread): 4 x 0.01, 3 x 0.02, 2 x 0.3
    adjusted = holm([0.01, None, 0.02, 0.3])
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.06)
    assert adjusted[3] == pytest.approx(0.6)


def test_p_value_is_the_paired_t_test_and_agrees_with_the_interval():
    import scipy.stats

    from pipeline.stats import p_value, paired_difference

    a = {0: 0.51, 1: 0.55, 2: 0.49, 3: 0.53, 4: 0.50}
    b = {0: 0.50, 1: 0.52, 2: 0.49, 3: 0.50, 4: 0.485}
    d = paired_difference(a, b)
    assert p_value(d.interval) == pytest.approx(scipy.stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    assert (p_value(d.interval) < 0.05) == (d.verdict != "not separated")


STUDY = Path(__file__).resolve().parents[1] / "reports" / "study"


def study_families() -> dict[str, list[tuple[str, float, float, int, int]]]:
    """setting -> (comparison key, diff, sd, n, committed verdict) of every comparison the committed
    multi-seed study made, read from its summary.json files."""
    import json

    families: dict[str, list] = {}
    for summary_path in sorted(STUDY.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        for key in sorted(k[:-len(".diff")] for k in summary if k.endswith(".diff")):
            families.setdefault(key.split(".")[0], []).append(
                (key, summary[f"{key}.diff"], summary.get(f"{key}.sd"), summary[f"{key}.n"], summary[f"{key}.verdict"]))
    return families


def test_holm_on_the_committed_studys_comparisons_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from pipeline.stats import Interval, holm, p_value, verdict_at

    families = study_families()
    assert families, "the committed study's summary.json files are missing"
    for setting, comparisons in families.items():
        ps = [p_value(Interval(n=n, mean=diff, sd=sd, ci_low=None, ci_high=None)) for _, diff, sd, n, _ in comparisons]
        assert all(p is not None for p in ps), setting
        # The per-comparison verdicts the study committed are the p < 0.05 ones.
        assert [verdict_at(p, c[1]) for p, c in zip(ps, comparisons)] == [
            {1: "better", 0: "not separated", -1: "worse"}[c[4]] for c in comparisons]
        rejected, adjusted, _, _ = multipletests(ps, alpha=0.05, method="holm")
        assert holm(ps) == pytest.approx(list(adjusted), rel=1e-12)
        assert [p < 0.05 for p in holm(ps)] == list(rejected)
