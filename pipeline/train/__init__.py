"""Training: one loop (``fit``) and one objective per recipe."""
