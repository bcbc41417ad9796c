"""Evaluation: retrieval metrics, linear probe, weighted kNN, feature extraction, pictures, and the
protocol that applies them to one model. Import from the submodules."""
