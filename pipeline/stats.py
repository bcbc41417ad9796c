"""Statistics for comparing methods over seeds: intervals of the mean and paired differences.

Why: the methods compared here differ by about a point, which is the size of seed-to-seed noise (and
the same seed on another machine of the same kind moves MAP@R by about 0.5). A single run per method
cannot tell them apart; the Metric Learning Reality Check (Musgrave, Belongie, Lim, ECCV 2020) found
that, compared under one fair protocol and averaged over repeated runs, most reported metric-learning
gains shrink to about the run-to-run noise. So every comparison is made over seeds:

- a metric over seeds is summarised by n, mean, sample sd (ddof=1) and the two-sided Student-t
  confidence interval of the mean (n - 1 degrees of freedom);
- two methods are compared by the *paired* difference (relaxed - baseline, matched by seed), whose own
  interval removes the seed effect both methods share (same data order, same initialisation);
- a verdict says "better" / "worse" only when that interval excludes 0, else "not separated".

One seed has no spread: sd and the interval are None, never a zero-width interval, and the text says
"1 seed, no interval". Pure numpy/scipy and no torch, so the report stage starts fast; scipy itself is
imported only when a quantile is needed (see `t_quantile`).

Text convention (see `INTERVAL_LEGEND`): ``mean ± sd [ci_low, ci_high] (n=N)``; ± is the sample standard
deviation of the per-seed values (not the standard error), the bracket is the 95% Student-t confidence
interval of the mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Hashable, Iterable, Literal, Mapping, Sequence

import numpy as np

Verdict = Literal["better", "worse", "not separated"]

BETTER: Verdict = "better"
WORSE: Verdict = "worse"
NOT_SEPARATED: Verdict = "not separated"

# Numeric code of each verdict for the JSON metrics form (DVC lists numeric leaves only).
VERDICT_CODE: dict[str, int] = {BETTER: 1, NOT_SEPARATED: 0, WORSE: -1}

INTERVAL_LEGEND = (
    "mean ± sd [95% CI of the mean, Student t with n-1 df] (n = seeds); "
    "± is the sample standard deviation over seeds, not the standard error; "
    "one seed has no interval"
)


def _checked_values(values: Iterable[Any], what: str) -> np.ndarray:
    """float64 array of `values`; empty, non-numeric, boolean or non-finite inputs are refused."""
    items = list(values)
    if not items:
        raise ValueError(f"{what}: no values (need at least one seed)")
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (Real, np.integer, np.floating)):
            raise ValueError(f"{what}: value #{i} is {v!r}, not a real number")
    arr = np.asarray(items, dtype=np.float64)
    bad = [items[i] for i in np.flatnonzero(~np.isfinite(arr))]
    if bad:
        raise ValueError(f"{what}: non-finite values {bad} (a diverged or failed run?); not summarised")
    return arr


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile, the value `scipy.stats.t.ppf(p, df)` returns.

    It calls `scipy.special.stdtrit`, the function `scipy.stats.t.ppf` evaluates, imported on first use:
    importing `scipy.stats` costs about 1.5 s on a 2-core machine, `scipy.special` about 0.3 s.
    """
    from scipy.special import stdtrit

    return float(stdtrit(df, p))


def _seed_order(seeds: Iterable[Hashable]) -> list[Hashable]:
    seeds = list(seeds)
    try:
        return sorted(seeds)
    except TypeError:
        return sorted(seeds, key=repr)


@dataclass(frozen=True)
class Interval:
    """A metric over seeds: n, mean, sample sd, and the Student-t CI of the mean (None for one seed)."""

    n: int
    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    level: float = 0.95

    @property
    def half_width(self) -> float | None:
        """Half the width of the confidence interval (t * sd / sqrt(n)); None for one seed."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain JSON form: mean, sd, ci_low, ci_high, n (numeric leaves, as `dvc metrics show` needs)."""
        return {"mean": self.mean, "sd": self.sd, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


def summarize(values: Iterable[float] | Mapping[Hashable, float], level: float = 0.95,
              what: str = "summarize") -> Interval:
    """Interval summary of one metric over seeds (a sequence, or a mapping seed -> value).

    The interval is mean ± t_{(1+level)/2, n-1} * sd / sqrt(n): the small-sample interval, because n is a
    handful of seeds and a normal quantile (1.96) would be far too narrow at n = 3 (t = 4.30).
    """
    if not 0 < level < 1:
        raise ValueError(f"{what}: level must lie in (0, 1), got {level}")
    arr = _checked_values(values.values() if isinstance(values, Mapping) else values, what)
    n = int(arr.size)
    mean = float(arr.mean())
    if n == 1:
        return Interval(n=1, mean=mean, sd=None, ci_low=None, ci_high=None, level=level)
    sd = float(arr.std(ddof=1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(n=n, mean=mean, sd=sd, ci_low=mean - half, ci_high=mean + half, level=level)


def verdict(difference: Interval, higher_is_better: bool = True) -> Verdict:
    """"better" / "worse" when the difference's interval lies entirely above / below 0, else "not separated".

    `difference` is the interval of (method - baseline). With `higher_is_better=False` (a loss, an error
    rate) an interval below 0 is "better". One seed has no interval, hence never separates.
    """
    if difference.ci_low is None or difference.ci_high is None:
        return NOT_SEPARATED
    if difference.ci_low > 0:
        above = True
    elif difference.ci_high < 0:
        above = False
    else:
        return NOT_SEPARATED
    return BETTER if above == higher_is_better else WORSE


@dataclass(frozen=True)
class PairedDifference:
    """(method - baseline) matched by seed: the per-seed differences, their interval, and the verdict."""

    seeds: tuple[Hashable, ...]
    differences: tuple[float, ...]
    interval: Interval
    verdict: Verdict
    higher_is_better: bool = True

    def as_dict(self) -> dict[str, float | int | None]:
        """The interval's JSON form plus `verdict` as a number: 1 better, 0 not separated, -1 worse."""
        return {**self.interval.as_dict(), "verdict": VERDICT_CODE[self.verdict]}


def paired_difference(method: Mapping[Hashable, float], baseline: Mapping[Hashable, float], *,
                      higher_is_better: bool = True, level: float = 0.95) -> PairedDifference:
    """Paired comparison over the same seeds: interval of the per-seed differences method[s] - baseline[s].

    Pairing matters: both methods share each seed's data order and initialisation, so the seed effect
    cancels in the difference, and the interval can exclude 0 where the difference of two independent
    means (Welch) cannot. Seed sets must match exactly; the error names what is missing on which side.
    """
    missing_in_baseline = _seed_order(set(method) - set(baseline))
    missing_in_method = _seed_order(set(baseline) - set(method))
    if missing_in_baseline or missing_in_method:
        parts = []
        if missing_in_baseline:
            parts.append(f"seeds {missing_in_baseline} are missing from the baseline")
        if missing_in_method:
            parts.append(f"seeds {missing_in_method} are missing from the method")
        raise ValueError("paired_difference: seed sets differ: " + "; ".join(parts))
    seeds = tuple(_seed_order(method))
    a = _checked_values([method[s] for s in seeds], "paired_difference (method)")
    b = _checked_values([baseline[s] for s in seeds], "paired_difference (baseline)")
    diffs = a - b
    interval = summarize(diffs.tolist(), level=level, what="paired_difference")
    return PairedDifference(seeds=seeds, differences=tuple(float(d) for d in diffs), interval=interval,
                            verdict=verdict(interval, higher_is_better), higher_is_better=higher_is_better)


def p_value(difference: Interval) -> float | None:
    """Two-sided paired t-test of "no difference": P(|T| >= |mean| / (sd / sqrt(n))), T ~ t(n - 1). The
    per-comparison verdict is "separated" exactly where p < 1 - level. None without spread (one seed, or
    every seed equal), which never separates."""
    if difference.sd is None or difference.sd == 0 or difference.n < 2:
        return None
    from scipy.stats import t

    return float(2 * t.sf(abs(difference.mean) / (difference.sd / math.sqrt(difference.n)), difference.n - 1))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: the i-th smallest p times the
    number of hypotheses not yet rejected (m - i + 1), made monotone and capped at 1. It holds the
    family-wise error rate at alpha for any dependence between the comparisons. A comparison without a
    p-value (no spread) still counts in m (it was made) and keeps None. Written by hand (eight lines);
    tests/test_stats.py checks it against statsmodels' multipletests(method="holm")."""
    m = len(p_values)
    order = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict_at(p: float | None, mean: float, higher_is_better: bool = True, alpha: float = 0.05) -> Verdict:
    """The verdict of a test at level `alpha`: "not separated" unless p < alpha, else by the sign of the
    difference (an adjusted p gives the adjusted verdict)."""
    if p is None or p >= alpha:
        return NOT_SEPARATED
    return BETTER if (mean > 0) == higher_is_better else WORSE


def summarize_seeds(per_seed: Mapping[Hashable, Mapping[str, Any]], metrics: Sequence[str] | None = None,
                    level: float = 0.95) -> dict[str, Interval]:
    """Per-metric summaries of one model from seed -> {metric: value} (each seed's metrics.json).

    With `metrics=None`, every key that holds a real number in every seed is summarised (strings and
    booleans are skipped); a numeric key present in some seeds only is refused, since averaging over a
    subset of seeds would silently change n. Requested `metrics` must be present in every seed.
    """
    if not per_seed:
        raise ValueError("summarize_seeds: no seeds")

    def numeric(v: Any) -> bool:
        return isinstance(v, (Real, np.integer, np.floating)) and not isinstance(v, bool)

    if metrics is None:
        numeric_keys = {k for m in per_seed.values() for k, v in m.items() if numeric(v)}
        partial = {k: _seed_order(s for s, m in per_seed.items() if k not in m) for k in numeric_keys}
        partial = {k: s for k, s in partial.items() if s}
        if partial:
            detail = "; ".join(f"{k!r} missing in seeds {s}" for k, s in sorted(partial.items()))
            raise ValueError(f"summarize_seeds: metrics not reported by every seed: {detail}")
        metrics = sorted(k for k in numeric_keys if all(numeric(m[k]) for m in per_seed.values()))
    out: dict[str, Interval] = {}
    for key in metrics:
        absent = _seed_order(s for s, m in per_seed.items() if key not in m)
        if absent:
            raise ValueError(f"summarize_seeds: metric {key!r} missing in seeds {absent}")
        out[key] = summarize([per_seed[s][key] for s in _seed_order(per_seed)], level=level,
                             what=f"summarize_seeds[{key!r}]")
    return out


def summaries_as_dict(
    summaries: Mapping[str, Interval | PairedDifference],
) -> dict[str, dict[str, float | int | None]]:
    """{metric: {mean, sd, ci_low, ci_high, n, ...}}: nested numeric JSON that DVC shows as `metric.mean`."""
    return {key: s.as_dict() for key, s in summaries.items()}


def format_interval(summary: Interval, *, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    """Short text for a Markdown cell: "83.2 ± 0.6 [82.4, 84.0] (n=5)", or "83.2 (1 seed, no interval)".

    ± is the sd over seeds and the bracket the CI of the mean (`INTERVAL_LEGEND`). `scale=100` shows
    fractions as percentages; `signed=True` writes "+" on positive numbers (for differences).
    """
    sign = "+" if signed else ""

    def num(x: float) -> str:
        return f"{x * scale:{sign}.{digits}f}"

    if summary.sd is None or summary.ci_low is None or summary.ci_high is None:
        return f"{num(summary.mean)} ({summary.n} seed, no interval)"
    level = "" if math.isclose(summary.level, 0.95) else f" {summary.level:.0%} CI"
    return (f"{num(summary.mean)} ± {summary.sd * scale:.{digits}f} "
            f"[{num(summary.ci_low)}, {num(summary.ci_high)}]{level} (n={summary.n})")


def format_difference(difference: PairedDifference, *, scale: float = 1.0, digits: int = 1) -> str:
    """A paired difference as text with its verdict, e.g. "+1.0 ± 0.2 [+0.8, +1.2] (n=5), better"."""
    text = format_interval(difference.interval, scale=scale, digits=digits, signed=True)
    return f"{text}, {difference.verdict}"
