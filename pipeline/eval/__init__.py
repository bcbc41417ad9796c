"""Evaluation: retrieval metrics, linear probe, weighted kNN, feature extraction and pictures."""

from pipeline.eval.features import extract_features
from pipeline.eval.knn import knn_classify
from pipeline.eval.linear_probe import linear_probe
from pipeline.eval.retrieval import retrieval_metrics

__all__ = ["extract_features", "knn_classify", "linear_probe", "retrieval_metrics"]
