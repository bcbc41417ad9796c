"""Every metric a model is scored by, registered once: its key in metrics.json and summary.json, its title
and format in the report's tables, which way is better, and its MLflow name. The report, the seed report,
the comparison (headline.json, plot tables) and tracking all read this registry; a metric registered with
`compute` is also computed by every evaluation (`pipeline.eval.protocol.evaluate`), so adding one touches
no other module. No torch here: the report stage never loads a model.

Recall@K is one metric per K of `evaluation.retrieval.ks` (`recall_at`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["pct", "int", "params", "ms", "float"]
Better = Literal["higher", "lower"]
_RECALL = re.compile(r"recall@(\d+)\Z")


@dataclass(frozen=True)
class Metric:
    """One metric. `better` None: a property of the model (its dimension, its size), not a score.
    `compute(test_embeddings, test_labels) -> float`: computed by every evaluation (the built-in ones are
    computed together by the protocol, which shares one neighbour search among them)."""

    key: str
    title: str
    format: Format
    better: Better | None = None
    over_seeds: bool = True  # shown in the tables over seeds (mean and interval), not only per replica
    compared: bool = False  # compared between methods, paired by seed, with a verdict (seed report)
    headline: bool = False  # in headline.json and the comparison's plot tables
    compute: Callable[[Any, Any], float] | None = None

    @property
    def mlflow_name(self) -> str:
        return mlflow_name(self.key)


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric (after those registered before it, in table order); a key is registered once."""
    if metric.key in _REGISTRY:
        raise ValueError(f"metric {metric.key!r} is already registered")
    _REGISTRY[metric.key] = metric
    return metric


def recall_key(k: int) -> str:
    return f"recall@{k}"


def recall_at(k: int) -> Metric:
    """Recall@K (the fraction of queries with a same-class image among their K nearest); R@1 is compared
    between methods and shown over seeds, deeper K per replica only."""
    return Metric(recall_key(k), f"R@{k}", "pct", "higher", over_seeds=k == 1, compared=k == 1, headline=k == 1)


def recall_curve(metrics: Mapping[str, Any]) -> list[tuple[int, float]]:
    """(K, Recall@K) for every K in `metrics`, by K: the one place a Recall@K key is read back."""
    return sorted((int(m.group(1)), float(v)) for k, v in metrics.items() if (m := _RECALL.match(k)))


def mlflow_name(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . / :`` and spaces; metrics.json keys like ``map@r`` need mapping."""
    return key.replace("@", "_at_")


def metric(key: str) -> Metric | None:
    """The registered metric of `key` (Recall@K for any K), None for a key that is no metric (steps, loss)."""
    if (m := _RECALL.match(key)) is not None:
        return recall_at(int(m.group(1)))
    return _REGISTRY.get(key)


def columns(keys: Iterable[str], *, over_seeds: bool = False) -> list[Metric]:
    """The metrics among `keys`, in table order (Recall@K by K where the registry has its slot)."""
    present = set(keys)
    ks = [k for k, _ in recall_curve(dict.fromkeys(present, 0.0))]
    found = []
    for registered in _REGISTRY.values():
        chosen = [recall_at(k) for k in ks] if registered.key == RECALL_SLOT else [registered]
        found += [m for m in chosen if m.key in present and (m.over_seeds or not over_seeds)]
    return found


def computed() -> list[Metric]:
    """The registered metrics every evaluation computes itself (`Metric.compute`)."""
    return [m for m in _REGISTRY.values() if m.compute is not None]


def compared(keys: Iterable[str]) -> list[str]:
    return [m.key for m in columns(keys) if m.compared]


def headline(keys: Iterable[str]) -> list[str]:
    return [m.key for m in columns(keys) if m.headline]


RECALL_SLOT = "recall@K"  # where Recall@K's columns go among the registered metrics
MAP_AT_R = "map@r"  # Musgrave et al.'s MAP@R: Table 1's headline and the transfer search's objective
TOP1 = "top1"  # a classifier's top-1 accuracy: the classification search's objective
for _metric in (
    Metric("probe_top1", "Probe top-1", "pct", "higher", headline=True),
    Metric("knn_top1", "kNN top-1", "pct", "higher", headline=True),
    Metric(RECALL_SLOT, "R@K", "pct", "higher"),
    Metric(MAP_AT_R, "MAP@R", "pct", "higher", compared=True, headline=True),
    Metric("r_precision", "R-Prec", "pct", "higher"),
    Metric("nmi", "NMI", "pct", "higher"),
    Metric(TOP1, "Top-1", "pct", "higher", compared=True, headline=True),
    Metric("top5", "Top-5", "pct", "higher"),
    Metric("embedding_dim", "Dim", "int"),
    Metric("parameters", "Params", "params"),
    Metric("ms_per_image", "ms/img", "ms", "lower", over_seeds=False),
    # The relaxed loss's mean soft label, same-class minus other-class pairs, on the embedding a teacher
    # hands its students (train images; pipeline/eval/label_gap.py): a diagnostic of the teacher, no score.
    Metric("label_gap", "Label gap (train)", "float"),
):
    register(_metric)
