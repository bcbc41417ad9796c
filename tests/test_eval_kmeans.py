"""pipeline.eval.kmeans and the hand-computed NMI against scikit-learn (an independent implementation)
and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

from pipeline.eval import kmeans as kmeans_module
from pipeline.eval.kmeans import kmeans
from pipeline.eval.retrieval import normalized_mutual_info


def blobs(num_blobs: int, per_blob: int, dim: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Tight blobs (noise 0.01) around centres drawn with spread 100: any sane k-means separates them."""
    rng = np.random.default_rng(seed)
    centres = 100.0 * rng.standard_normal((num_blobs, dim))
    labels = rng.permutation(np.repeat(np.arange(num_blobs), per_blob))
    points = centres[labels] + 0.01 * rng.standard_normal((len(labels), dim))
    return torch.from_numpy(points).float(), labels


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)


@pytest.mark.parametrize("local_trials", [None, 1])  # greedy k-means++ (the default) and plain k-means++
def test_well_separated_blobs_are_recovered_exactly(local_trials):
    points, labels = blobs(num_blobs=12, per_blob=25, dim=16, seed=3)
    result = kmeans(points, 12, seed=0, local_trials=local_trials)
    assert normalized_mutual_info_score(labels, result.labels.numpy()) == 1.0
    assert result.converged
    # The centres are the blob means; the inertia is the within-blob scatter, computed independently.
    means = np.stack([points.numpy()[labels == b].mean(0) for b in range(12)])
    scatter = float(((points.numpy().astype(np.float64) - means[labels]) ** 2).sum())
    assert result.inertia == pytest.approx(scatter, rel=1e-4)


def test_digits_matches_scikit_learn_nmi_and_inertia(digits):
    target = load_digits().target
    n_init = 10
    reference = KMeans(n_clusters=10, n_init=n_init, random_state=0).fit(digits)
    ours = kmeans(torch.from_numpy(digits), 10, n_init=n_init, seed=0)
    reference_nmi = normalized_mutual_info_score(target, reference.labels_)
    our_nmi = normalized_mutual_info_score(target, ours.labels.numpy())
    assert 0.6 < reference_nmi < 0.9  # a real clustering problem, neither trivial nor hopeless
    assert abs(our_nmi - reference_nmi) <= 0.02
    assert ours.inertia <= 1.01 * reference.inertia_
    # Our inertia is what it claims: recomputed from the labels and centres in float64 numpy.
    centres = ours.centres.double().numpy()
    assert ours.inertia == pytest.approx(((digits - centres[ours.labels.numpy()]) ** 2).sum(), rel=1e-6)


def test_lloyd_from_given_centres_matches_scikit_learn(digits):
    # The same start (10 digits rows): scikit-learn's Lloyd and ours must end in the same partition.
    start = digits[np.random.default_rng(1).choice(len(digits), 10, replace=False)]
    reference = KMeans(n_clusters=10, init=start, n_init=1, max_iter=300).fit(digits)
    x = torch.from_numpy(digits)
    mean = x.mean(dim=0)
    centred = x - mean
    ours = kmeans_module._lloyd(
        centred, centred.pow(2).sum(dim=1), torch.from_numpy(start) - mean, 300,
        float(centred.var(dim=0, unbiased=False).mean()) * 1e-4, 2**20,
    )
    assert normalized_mutual_info_score(reference.labels_, ours.labels.numpy()) == 1.0
    assert ours.inertia == pytest.approx(reference.inertia_, rel=1e-5)


@pytest.mark.parametrize("n_init", [1, 3])
def test_a_fixed_seed_gives_the_same_clustering(digits, n_init):
    x = torch.from_numpy(digits)
    first = kmeans(x, 10, n_init=n_init, seed=7)
    second = kmeans(x, 10, n_init=n_init, seed=7)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.centres, second.centres)
    assert first.inertia == second.inertia


def test_more_inits_never_end_worse_than_the_first(digits):
    x = torch.from_numpy(digits)
    one = kmeans(x, 10, n_init=1, seed=5)
    several = kmeans(x, 10, n_init=5, seed=5)  # the first of its five starts is the start of `one`
    assert several.inertia <= one.inertia


def test_chunking_gives_the_same_result_as_one_block(digits):
    x = torch.from_numpy(digits)
    whole = kmeans(x, 10, seed=2, memory_budget_bytes=2**30)  # every point in one block
    rows_of_7 = kmeans(x, 10, seed=2, memory_budget_bytes=7 * 10 * 4)  # 7 rows x 10 centres per block
    row_by_row = kmeans(x, 10, seed=2, memory_budget_bytes=1)
    for chunked in (rows_of_7, row_by_row):
        assert torch.equal(chunked.labels, whole.labels)
        torch.testing.assert_close(chunked.centres, whole.centres, rtol=1e-5, atol=1e-4)
        assert chunked.inertia == pytest.approx(whole.inertia, rel=1e-6)


def test_an_empty_cluster_takes_the_farthest_point():
    # Cluster 2 gets no point; point 3 is the farthest from its centre, so it leaves cluster 1 for 2.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [14.0, 0.0]])
    centres = torch.tensor([[0.5, 0.0], [11.0, 0.0], [50.0, 50.0]])
    assignment = kmeans_module._assign(x, x.pow(2).sum(dim=1), centres, torch.empty(4, 3))
    assert assignment.labels.tolist() == [0, 0, 1, 1]
    new, relocated = kmeans_module._update_centres(x, assignment, centres)
    assert relocated
    torch.testing.assert_close(new, torch.tensor([[0.5, 0.0], [10.0, 0.0], [14.0, 0.0]]))


def test_every_point_its_own_cluster_has_zero_inertia():
    points = torch.from_numpy(np.random.default_rng(0).standard_normal((12, 5))).float()
    result = kmeans(points, len(points), seed=0)
    assert sorted(result.labels.tolist()) == list(range(len(points)))
    assert result.inertia == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("points", "k", "kwargs", "message"),
    [
        (torch.zeros(0, 3), 1, {}, "non-empty 2-D"),
        (torch.zeros(4), 1, {}, "non-empty 2-D"),
        (torch.zeros(4, 2, dtype=torch.long), 1, {}, "floating point"),
        (torch.zeros(4, 2), 5, {}, r"num_clusters must be in \[1, 4\]"),
        (torch.zeros(4, 2), 0, {}, "num_clusters"),
        (torch.zeros(4, 2), 2, {"n_init": 0}, "n_init must be positive"),
        (torch.zeros(4, 2), 2, {"memory_budget_bytes": 0}, "memory_budget_bytes must be positive"),
        (torch.zeros(4, 2), 2, {"local_trials": 0}, "local_trials must be positive"),
        (torch.zeros(4, 2), 2, {"tol": -1.0}, "tol must be non-negative"),
    ],
)
def test_bad_input_is_refused(points, k, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmeans(points, k, **kwargs)


@pytest.mark.parametrize("seed", range(8))
def test_nmi_by_hand_equals_scikit_learn_on_random_labelings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    a = rng.integers(0, int(rng.integers(1, 30)), n)
    b = rng.integers(0, int(rng.integers(1, 30)), n) * 7 - 3  # arbitrary, negative, gapped ids
    for true, pred in ((a, b), (a, a), (a, (a * 5) % 11), (b, a)):
        expected = normalized_mutual_info_score(true, pred)
        assert normalized_mutual_info(torch.from_numpy(true), torch.from_numpy(pred)) == pytest.approx(
            expected, abs=1e-12
        )


@pytest.mark.parametrize(
    ("true", "pred"),
    [
        ([0, 0, 0], [1, 1, 1]),  # both a single group: scikit-learn's limit case 1.0
        ([0, 0, 1, 1], [5, 5, 5, 5]),  # one side a single group: 0
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # independent: MI exactly 0
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # a relabelled partition: 1
        ([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]),
    ],
)
def test_nmi_by_hand_limit_cases(true, pred):
    expected = normalized_mutual_info_score(true, pred)
    assert normalized_mutual_info(torch.tensor(true), torch.tensor(pred)) == pytest.approx(expected, abs=1e-12)


def test_nmi_refuses_labelings_of_different_lengths():
    with pytest.raises(ValueError, match="one length"):
        normalized_mutual_info(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_clustering_matches_cpu(digits):
    cpu = kmeans(torch.from_numpy(digits), 10, n_init=3, seed=0)
    cuda = kmeans(torch.from_numpy(digits).cuda(), 10, n_init=3, seed=0)
    assert cuda.labels.device.type == "cuda"
    # Different random streams (CUDA generator): compare quality, not labels.
    assert cuda.inertia <= 1.01 * cpu.inertia
    points, labels = blobs(num_blobs=50, per_blob=10, dim=32, seed=1)
    result = kmeans(points.cuda(), 50, seed=0)
    assert normalized_mutual_info_score(labels, result.labels.cpu().numpy()) == 1.0
