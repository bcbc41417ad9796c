"""Evaluation: retrieval metrics, linear probe, weighted kNN, feature extraction and pictures."""

from pipeline.eval.retrieval import retrieval_metrics

__all__ = ["retrieval_metrics"]
