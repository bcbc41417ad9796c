"""Embedding transfer with the relaxed contrastive loss: the reusable, testable library."""
