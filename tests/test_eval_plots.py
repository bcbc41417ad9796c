"""Pictures: files are real PNGs, and what they show matches an independent computation."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from pipeline.eval.curves import recall_at_k_plot, recall_at_k_values
from pipeline.eval.plots import CORRECT, QUERY, WRONG, embedding_map_png, retrieval_grid_png


@pytest.fixture(autouse=True)
def one_thread():
    """scikit-learn's t-SNE on 30 points spends its time in OpenMP waits when 2 threads share 2 busy cores
    (measured 25 s against 0.35 s single-threaded)."""
    with threadpool_limits(1):
        yield


def clustered_images(n: int = 40):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    embeddings = 3 * torch.randn(4, 5, generator=generator)[labels] + torch.randn(n, 5, generator=generator)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return images, embeddings, labels


def test_retrieval_grid_marks_neighbours_like_brute_force(tmp_path):
    images, embeddings, labels = clustered_images()
    path = tmp_path / "grid.png"
    queries, neighbours, correct, captions = retrieval_grid_png(path, images, embeddings, labels, n_queries=5, k=4)
    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
    distances = torch.cdist(embeddings.double(), embeddings.double())
    for row, query in enumerate(queries.tolist()):
        distances[query, query] = float("inf")  # the query is not its own neighbour
        expected = distances[query].argsort()[:4]
        assert torch.equal(neighbours[row], expected)
        assert torch.equal(correct[row], labels[expected] == labels[query])
        assert captions[row] == [f"class {int(labels[i])}" for i in [query, *expected.tolist()]]
    assert len(set(queries.tolist())) == 5
    # The frames carry the verdicts: pixels of the exact frame colours, counted in the PNG, come in the
    # proportion of correct to wrong neighbours (and one blue frame per query).
    rgb = (picture[..., :3] * 255).round().astype(int)
    count = {name: int((rgb == np.array(tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)))).all(-1).sum())
             for name, h in (("correct", CORRECT), ("wrong", WRONG), ("query", QUERY))}
    hits = int(correct.sum())
    per_frame = count["query"] / len(queries)
    assert per_frame > 100
    assert count["correct"] == pytest.approx(hits * per_frame, rel=0.15)
    assert count["wrong"] == pytest.approx((correct.numel() - hits) * per_frame, rel=0.15)


def test_retrieval_grid_accepts_grey_float_images(tmp_path):
    _, embeddings, labels = clustered_images()
    images = torch.randn(len(labels), 1, 8, 8)  # normalised floats, one channel
    retrieval_grid_png(tmp_path / "grey.png", images, embeddings, labels, n_queries=2, k=2, distance="cosine")
    assert (tmp_path / "grey.png").stat().st_size > 0


def test_retrieval_grid_refuses_mismatched_images(tmp_path):
    images, embeddings, labels = clustered_images()
    with pytest.raises(ValueError, match="images must be"):
        retrieval_grid_png(tmp_path / "x.png", images[:-1], embeddings, labels)


def test_recall_values_and_plot(tmp_path):
    results = {
        "teacher": {"recall@8": 0.9, "recall@1": 0.5, "map@r": 0.3, "recall@2": 0.7},
        "student": {"recall@1": 0.4, "recall@2": 0.6, "recall@8": 0.8},
    }
    assert recall_at_k_values(results["teacher"]) == [(1, 0.5), (2, 0.7), (8, 0.9)]
    recall_at_k_plot(tmp_path / "recall.png", results)
    assert matplotlib.image.imread(tmp_path / "recall.png").shape[2] in (3, 4)
    with pytest.raises(ValueError, match="no recall@K"):
        recall_at_k_values({"map@r": 0.3})


def test_embedding_map_subsamples_reproducibly(tmp_path):
    _, embeddings, labels = clustered_images(60)
    chosen = embedding_map_png(tmp_path / "map.png", embeddings, labels, max_points=30, seed=3)
    again = embedding_map_png(tmp_path / "map2.png", embeddings, labels, max_points=30, seed=3)
    assert len(chosen) == 30 == len(np.unique(chosen.numpy())) and torch.equal(chosen, again)
    assert matplotlib.image.imread(tmp_path / "map.png").ndim == 3
