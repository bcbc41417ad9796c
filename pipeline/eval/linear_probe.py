"""Linear probe on frozen features: multinomial logistic regression with full-batch L-BFGS in torch.

Torch rather than scikit-learn so the probe runs on the GPU when the features are there and needs no
copy to numpy; the objective is scikit-learn's (tests/test_eval_probe.py checks the solution against
sklearn.linear_model.LogisticRegression). The weight decay is chosen on a validation split carved from
the training features, never on the test split, then the probe is refit on all training features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.eval.checks import check_embeddings_and_labels

DEFAULT_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def fit_logistic_regression(
    features: Tensor,
    targets: Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 500,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise mean cross-entropy + weight_decay / 2 * ||W||^2 (bias not penalised) by L-BFGS.

    Same minimiser as scikit-learn's LogisticRegression with C = 1 / (weight_decay * n). ``targets`` are
    class indices in [0, num_classes). Returns ``(weight (classes x dim), bias (classes,))``.
    """
    if init is None:
        weight = features.new_zeros(num_classes, features.shape[1])
        bias = features.new_zeros(num_classes)
    else:
        weight, bias = (t.detach().clone() for t in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, targets) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    val_fraction: float = 0.1,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_iter: int = 100,
) -> dict[str, float]:
    """Top-1 (and top-5 with >= 10 classes) test accuracy of a linear classifier on frozen features.

    Features are standardised with the statistics of the split being fit. Each weight decay is fit on
    train minus a stratified ``val_fraction`` (largest decay first, each warm-starting the next) and
    scored by validation top-1; the best (ties: the larger decay) is refit on all of train, warm-started
    from its validation fit (``max_iter`` L-BFGS iterations per fit). Test labels
    absent from train count as errors. Returns ``probe_top1``, ``probe_top5`` and ``probe_weight_decay``.
    """
    check_embeddings_and_labels(train_x, train_y, name="train_x")
    check_embeddings_and_labels(test_x, test_y, name="test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} dimensions but test_x has {test_x.shape[1]}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    decays = sorted(weight_decays, reverse=True)
    if not decays or min(decays) <= 0:
        raise ValueError(
            f"weight_decays must be a non-empty sequence of positive values, got {weight_decays}"
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    device = torch.device(device) if device is not None else train_x.device
    classes, train_targets = train_y.unique(return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"train_y holds a single class ({int(classes[0])}); a probe needs at least two")
    train_x, train_targets = train_x.to(device).float(), train_targets.to(device)
    fit_rows, val_rows = stratified_split(train_targets, val_fraction, seed)

    fit_x, val_x = standardise(train_x[fit_rows], train_x[val_rows])
    best_decay, best_accuracy, params, best_params = decays[0], -1.0, None, None
    for decay in decays:
        params = fit_logistic_regression(
            fit_x, train_targets[fit_rows], len(classes), decay, max_iter, params
        )
        accuracy = float(topk_accuracy(val_x @ params[0].T + params[1], train_targets[val_rows], 1))
        if accuracy > best_accuracy:
            best_decay, best_accuracy, best_params = decay, accuracy, params

    all_x, test_x = standardise(train_x, test_x.to(device).float())
    weight, bias = fit_logistic_regression(
        all_x, train_targets, len(classes), best_decay, max_iter, best_params
    )
    logits = test_x @ weight.T + bias
    test_targets = _indices_in(classes.to(device), test_y.to(device))
    metrics = {"probe_top1": float(topk_accuracy(logits, test_targets, 1))}
    if len(classes) >= 10:
        metrics["probe_top5"] = float(topk_accuracy(logits, test_targets, 5))
    metrics["probe_weight_decay"] = best_decay
    return metrics


def stratified_split(targets: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Row indices (fit, val): floor(val_fraction * size) random rows of every class go to val."""
    generator = torch.Generator().manual_seed(seed)
    fit_rows, val_rows = [], []
    for members in _rows_by_class(targets.cpu()):
        members = members[torch.randperm(len(members), generator=generator)]
        cut = int(val_fraction * len(members))
        val_rows.append(members[:cut])
        fit_rows.append(members[cut:])
    val = torch.cat(val_rows)
    if len(val) == 0:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no validation rows (largest class has "
            f"{max(len(r) for r in fit_rows)} items); raise it or give more training features"
        )
    return torch.cat(fit_rows).sort().values.to(targets.device), val.sort().values.to(targets.device)


def standardise(fit: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
    """Zero mean, unit variance with the fit rows' statistics (constant features are left centred)."""
    mean, std = fit.mean(dim=0), fit.std(dim=0).clamp(min=1e-6)
    return (fit - mean) / std, (other - mean) / std


def topk_accuracy(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """Fraction of rows whose target is among the k largest logits; target -1 never counts."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean()


def _rows_by_class(targets: Tensor) -> list[Tensor]:
    order = targets.argsort(stable=True)
    return list(order.split(targets.bincount().tolist()))


def _indices_in(classes: Tensor, labels: Tensor) -> Tensor:
    """Position of each label in the sorted ``classes``, -1 where the label is not a class."""
    positions = torch.searchsorted(classes, labels).clamp(max=len(classes) - 1)
    return torch.where(classes[positions] == labels, positions, -1)
