"""Training: one loop (`loop.fit`), one objective per recipe, the recipes that build them from
params.yaml, and the session that runs one stage's training. Import from the submodules."""
