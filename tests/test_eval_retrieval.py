"""Retrieval metrics against hand-worked cases, a brute-force numpy reference and pytorch-metric-learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval.retrieval import retrieval_metrics


def brute_force(x: np.ndarray, y: np.ndarray, ks: tuple[int, ...], distance: str) -> dict[str, float]:
    """Full float64 distance matrix, every other item ranked by (distance, index): the documented tie rule."""
    x = x.astype(np.float64)
    if distance == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = -(x @ x.T)
    else:
        dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    sums = dict.fromkeys([*(f"recall@{k}" for k in ks), "map@r", "r_precision"], 0.0)
    without_positive = 0
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        ranked = sorted(others, key=lambda j: (dist[i, j], j))
        relevant = [y[j] == y[i] for j in ranked]
        r = sum(relevant)
        if r == 0:
            without_positive += 1
            continue
        for k in ks:
            sums[f"recall@{k}"] += any(relevant[:k])
        sums["r_precision"] += sum(relevant[:r]) / r
        sums["map@r"] += sum(sum(relevant[: p + 1]) / (p + 1) for p in range(r) if relevant[p]) / r
    scored = len(x) - without_positive
    return {name: total / scored for name, total in sums.items()} | {
        "num_queries_without_positive": without_positive
    }


def tied_integer_points(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on the grid {0,1,2}^3: many duplicates and equal distances, all exact in float32.
    Labels include one singleton class (label 9)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(40, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=40)
    y[7] = 9
    return x, y


def tied_directions(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors with four +-1 entries in 6-D (norm 2, so unit entries are +-0.5) scaled by powers of two:
    every cosine is a sum of +-0.25 terms, exact in float32, so equal cosines really tie."""
    rng = np.random.default_rng(seed)
    directions = np.zeros((6, 6), dtype=np.float32)
    for row in directions:
        row[rng.choice(6, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    x = directions[rng.integers(0, 6, size=40)] * rng.choice([1.0, 2.0, 4.0], size=(40, 1)).astype(np.float32)
    return x, rng.integers(0, 4, size=40)


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x), torch.from_numpy(y)


def clustered(seed: int, num_classes: int = 60, dim: int = 16, noise: float = 0.9):
    """Random clustered data with classes of 1 to 12 items (some singletons)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, size=num_classes)
    y = np.repeat(np.arange(num_classes), sizes)
    x = rng.standard_normal((num_classes, dim))[y] + noise * rng.standard_normal((len(y), dim))
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


def test_hand_worked_tie_goes_to_the_lower_index():
    # 1-D points x = [0, -1, 1, 20], classes [0, 1, 0, 1]; R = 1 for everyone.
    # query 0: items 1 and 2 are both at distance 1 -> lower index 1 (class 1) first: miss at rank 1,
    #          hit at rank 2.                       (with "higher index first" it would hit at rank 1)
    # query 1 (-1): order 0 (d 1), 2 (d 2), 3 (d 21): class 1 only at rank 3.
    # query 2 (+1): order 0 (d 1) -> hit at rank 1.
    # query 3 (20): order 2 (d 19), 0 (d 20), 1 (d 21): class 1 only at rank 3.
    # recall@1 = 1/4, recall@2 = 2/4, recall@3 = 4/4; MAP@R = R-Precision = recall@1 as R = 1.
    x = torch.tensor([[0.0], [-1.0], [1.0], [20.0]])
    y = torch.tensor([0, 1, 0, 1])
    metrics = retrieval_metrics(x, y, ks=(1, 2, 3), nmi=False)
    assert metrics == {
        "recall@1": 0.25,
        "recall@2": 0.5,
        "recall@3": 1.0,
        "map@r": 0.25,
        "r_precision": 0.25,
        "num_queries_without_positive": 0,
    }


def test_hand_worked_cosine_tie():
    # Items 0 = (1, 0) class 0, 1 = (0, 1) class 1, 2 = (0, -1) class 0, 3 = (-1, 0) class 1.
    # query 0: cos 0 to items 1 and 2 -> tie -> item 1 (class 1) first: miss.
    # query 1: cos 0 to items 0 and 3 -> item 0 (class 0) first: miss.
    # query 2: cos 0 to items 0 and 3 -> item 0 (class 0) first: hit.
    # query 3: cos 0 to items 1 and 2 -> item 1 (class 1) first: hit.        recall@1 = 2/4.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    assert retrieval_metrics(x, y, ks=(1,), distance="cosine", nmi=False)["recall@1"] == 0.5


def test_duplicates_of_the_query_are_kept_in_its_gallery():
    # Each item has an exact duplicate of its own class: excluded by index, the duplicate is found first
    # (recall@1 = 1); excluded by distance 0, every query would miss.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    metrics = retrieval_metrics(x, y, ks=(1,), nmi=False)
    assert metrics["recall@1"] == 1.0 and metrics["map@r"] == 1.0 and metrics["r_precision"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ties_and_duplicates_euclidean(seed):
    x, y = tied_integer_points(seed)
    ks = (1, 2, 4, 8, 39)
    expected = brute_force(x, y, ks, "euclidean")
    assert expected["num_queries_without_positive"] == 1
    got = retrieval_metrics(*as_tensors(x, y), ks=ks, nmi=False)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ties_and_duplicates_cosine(seed):
    x, y = tied_directions(seed)
    ks = (1, 3, 16)
    got = retrieval_metrics(*as_tensors(x, y), ks=ks, distance="cosine", nmi=False)
    assert got == pytest.approx(brute_force(x, y, ks, "cosine"), abs=1e-12)


@pytest.mark.parametrize(
    ("distance", "data"),
    [
        ("euclidean", tied_integer_points(3)),
        ("cosine", tied_directions(3)),
        ("euclidean", clustered(3)),
        ("cosine", clustered(3)),
    ],
)
def test_one_row_chunks_give_identical_results(distance, data):
    # Exact equality holds where the scores do not depend on the matmul's shape: exact-arithmetic data
    # (ties included) or continuous data without near-ties. (Scores equal up to the last bit may order
    # differently when the chunk shape changes the BLAS summation order.)
    ks = (1, 2, 30)
    whole = retrieval_metrics(*as_tensors(*data), ks=ks, distance=distance, nmi=False)
    one_row = retrieval_metrics(
        *as_tensors(*data), ks=ks, distance=distance, nmi=False, memory_budget_bytes=1
    )
    assert one_row == whole


def test_recall_at_large_k_uses_the_deep_search():
    # Classes of 2 (R_max = 1) with Recall@K for K far beyond R: queries whose pair is not the nearest
    # need the second, deeper search. Brute force decides.
    rng = np.random.default_rng(4)
    y = np.arange(300) // 2
    x = (rng.standard_normal((150, 16))[y] + 1.0 * rng.standard_normal((300, 16))).astype(np.float32)
    ks = (1, 5, 50, 200)
    expected = brute_force(x, y, ks, "euclidean")
    assert (
        0.0
        < expected["recall@1"]
        < expected["recall@5"]
        < expected["recall@50"]
        < expected["recall@200"]
        < 1.0
    )
    assert retrieval_metrics(*as_tensors(x, y), ks=ks, nmi=False) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_matches_pytorch_metric_learning(distance):
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, y = clustered(5)
    pml_distance = CosineSimilarity() if distance == "cosine" else LpDistance(normalize_embeddings=False)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        knn_func=CustomKNN(pml_distance, batch_size=64),
        device=torch.device("cpu"),
    )
    reference = calculator.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    got = retrieval_metrics(*as_tensors(x, y), ks=(1,), distance=distance, nmi=False)
    assert 0.2 < reference["precision_at_1"] < 0.95  # neither trivial nor hopeless
    assert got["recall@1"] == pytest.approx(reference["precision_at_1"], abs=1e-12)
    assert got["map@r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-12)
    assert got["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-12)
    assert got["num_queries_without_positive"] == int((np.bincount(y)[y] == 1).sum())


def test_nmi_hand_worked():
    # Two tight blobs far apart: k-means (k = 2 classes) finds them. Labels equal to the blob -> NMI 1;
    # labels split 2/2 inside each blob -> clusters carry no information about labels -> NMI 0.
    blob = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1]])
    x = torch.cat([blob, blob + 100.0])
    by_blob = retrieval_metrics(x, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), ks=(1,))
    across_blobs = retrieval_metrics(x, torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]), ks=(1,))
    assert by_blob["nmi"] == pytest.approx(1.0, abs=1e-12)
    assert across_blobs["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert "nmi" not in retrieval_metrics(x, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), ks=(1,), nmi=False)


@pytest.mark.parametrize(
    ("embeddings", "labels", "kwargs", "message"),
    [
        (torch.tensor([[0.0], [float("nan")], [1.0]]), torch.tensor([0, 0, 1]), {}, "NaN or infinite.*row 1"),
        (torch.tensor([[0.0], [1.0], [float("inf")]]), torch.tensor([0, 0, 1]), {}, "NaN or infinite.*row 2"),
        (torch.zeros(4, 2), torch.tensor([0, 0, 1]), {}, "4 rows but its labels have 3"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), {}, "empty"),
        (torch.zeros(4), torch.tensor([0, 0, 1, 1]), {}, "2-D"),
        (torch.zeros(4, 2), torch.tensor([0.0, 0.0, 1.0, 1.0]), {}, "integer"),
        (torch.zeros(4, 2), torch.tensor([3, 3, 3, 3]), {"ks": (1,)}, "single class"),
        (torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), {"ks": (1,)}, "single member"),
        (torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), {"ks": (1, 4)}, "K=4 .* number of items \\(4\\)"),
        (torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), {"ks": (0,)}, "positive integers"),
        (torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), {"ks": ()}, "ks is empty"),
        (torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), {"distance": "manhattan"}, "distance must be"),
        (
            torch.zeros(4, 2),
            torch.tensor([0, 0, 1, 1]),
            {"ks": (1,), "memory_budget_bytes": 0},
            "memory_budget_bytes",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(embeddings, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(embeddings, labels, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_brute_force():
    x, y = tied_integer_points(6)
    ks = (1, 2, 8)
    got = retrieval_metrics(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), ks=ks, nmi=False)
    assert got == pytest.approx(brute_force(x, y, ks, "euclidean"), abs=1e-12)
