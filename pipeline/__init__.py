"""Embedding transfer with the relaxed contrastive loss: library code used by the DVC stages."""
