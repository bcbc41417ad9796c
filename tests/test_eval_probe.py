"""Linear probe against scikit-learn's LogisticRegression and the never-select-on-test protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from pipeline.eval.linear_probe import linear_probe
from pipeline.eval.linear_probe import fit_logistic_regression


@pytest.fixture(autouse=True)
def one_thread():
    """L-BFGS on these tiny problems is latency-bound: with 2 threads on 2 busy shared cores each step
    waits on the other thread (measured 100x slower), so the tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(seed: int, num_classes: int, per_class: int, dim: int = 8, spread: float = 6.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), per_class)
    x = spread * rng.standard_normal((num_classes, dim))[y] + rng.standard_normal((len(y), dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_fit_matches_sklearn_solution():
    # Same objective: mean CE + (lambda / 2) ||W||^2  ==  sklearn's C = 1 / (lambda * n). Strictly convex,
    # so both solvers must land on the same probabilities (float64 here to compare tightly).
    x, y = load_digits(return_X_y=True)
    x, y = x[:300], y[:300]
    x = (x - x.mean(0)) / np.maximum(x.std(0, ddof=1), 1e-6)
    weight_decay = 1e-2
    weight, bias = fit_logistic_regression(torch.tensor(x), torch.tensor(y), 10, weight_decay, max_iter=500)
    reference = LogisticRegression(C=1 / (weight_decay * len(x)), max_iter=10_000, tol=1e-10).fit(x, y)
    probabilities = torch.softmax(torch.tensor(x) @ weight.T + bias, dim=1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(weight.numpy(), reference.coef_, atol=1e-4)


def test_probe_accuracy_agrees_with_sklearn_on_separable_blobs():
    train_x, train_y = blobs(0, num_classes=4, per_class=60)
    test_x, test_y = blobs(0, num_classes=4, per_class=60)  # same centres (seed), fresh noise below
    test_x = test_x + torch.randn(test_x.shape, generator=torch.Generator().manual_seed(1))
    metrics = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-3,))
    reference = LogisticRegression(C=1 / (1e-3 * len(train_x)), max_iter=10_000).fit(train_x, train_y)
    sklearn_accuracy = reference.score(test_x, test_y)
    assert sklearn_accuracy == 1.0  # separable toy set
    assert metrics["probe_top1"] == pytest.approx(sklearn_accuracy)
    assert metrics["probe_weight_decay"] == 1e-3
    assert "probe_top5" not in metrics  # fewer than 10 classes


def test_digits_probe_close_to_sklearn_and_reports_top5():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    metrics = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], weight_decays=(1e-2, 1e-3))
    mean, std = x[:1000].mean(0), x[:1000].std(0).clamp(min=1e-6)
    reference = LogisticRegression(C=1 / (metrics["probe_weight_decay"] * 1000), max_iter=10_000)
    reference.fit((x[:1000] - mean) / std, y[:1000])
    assert metrics["probe_top1"] == pytest.approx(
        reference.score((x[1000:] - mean) / std, y[1000:]), abs=0.01
    )
    assert metrics["probe_top1"] <= metrics["probe_top5"] <= 1.0


def test_weight_decay_is_chosen_without_looking_at_test():
    train_x, train_y = blobs(2, num_classes=3, per_class=40, spread=1.0)
    test_x, test_y = blobs(3, num_classes=3, per_class=40, spread=1.0)
    shuffled = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(0))]
    grid = (1.0, 1e-2, 1e-4)
    honest = linear_probe(train_x, train_y, test_x, test_y, weight_decays=grid)
    scrambled = linear_probe(train_x, train_y, test_x, shuffled, weight_decays=grid)
    assert honest["probe_weight_decay"] == scrambled["probe_weight_decay"]


def test_test_labels_unseen_in_train_count_as_errors():
    train_x, train_y = blobs(4, num_classes=2, per_class=30)
    test_x, test_y = train_x[:10], torch.full((10,), 7)
    assert linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-2,))["probe_top1"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_x": torch.zeros(5, 3)}, "8 dimensions but test_x has 3"),
        ({"test_y": torch.zeros(4, dtype=torch.long)}, "5 rows but its labels have 4"),
        ({"train_x": torch.full((60, 8), float("nan"))}, "train_x contains NaN"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"weight_decays": ()}, "weight_decays"),
        ({"weight_decays": (0.1, -1.0)}, "weight_decays"),
        ({"train_y": torch.zeros(60, dtype=torch.long)}, "single class"),
        ({"val_fraction": 0.01}, "no validation rows"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    train_x, train_y = blobs(5, num_classes=2, per_class=30)
    arguments = {
        "train_x": train_x,
        "train_y": train_y,
        "test_x": torch.zeros(5, 8),
        "test_y": torch.zeros(5, dtype=torch.long),
    } | kwargs
    with pytest.raises(ValueError, match=message):
        linear_probe(
            arguments.pop("train_x"),
            arguments.pop("train_y"),
            arguments.pop("test_x"),
            arguments.pop("test_y"),
            **arguments,
        )
