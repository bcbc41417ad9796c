"""Recall@K curves of several models, the report's figure: matplotlib's object API on the Agg canvas,
and no torch (the report stage never loads a model)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from pipeline.metrics import recall_curve


def recall_at_k_plot(path: str | Path, results: dict[str, dict[str, float]]) -> None:
    """Recall@K against K (log2 axis), one line per named result (e.g. teacher, students)."""
    if not results:
        raise ValueError("results is empty; give at least one name -> metrics dict")
    figure = Figure(figsize=(5, 3.5))
    axis = figure.subplots()
    for name, metrics in results.items():
        ks, values = zip(*recall_at_k_values(metrics), strict=True)
        axis.plot(ks, values, marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("K")
    axis.set_ylabel("Recall@K")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def recall_at_k_values(metrics: dict[str, float]) -> list[tuple[int, float]]:
    """``(K, Recall@K)`` pairs of a metrics dict, by increasing K; an error where there are none."""
    pairs = recall_curve(metrics)
    if not pairs:
        raise ValueError(f"metrics hold no recall@K entries (keys: {sorted(metrics)})")
    return pairs
