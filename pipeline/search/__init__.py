"""Hyperparameter search on a validation split, every transfer loss tuned alike (issue 29; Musgrave et al.,
A Metric Learning Reality Check, ECCV 2020): `split` cuts the validation split from the train split,
`space` says what each loss draws, `trial` trains and scores one trial, `study` runs Optuna's studies
across workers, `summary` writes the trials, the page and the overlay the study trains with.

Usage: python -m pipeline.search [--setting S] [--loss L] [--worker N]   (reads params.yaml)
"""
