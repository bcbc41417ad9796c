"""FitNet, attention transfer, CRD, Hinton KD, Proxy-Anchor, NT-Xent and MoCo against numpy
re-derivations of their formulas and, for Proxy-Anchor, pytorch-metric-learning; CRD's negative sampling
against the official datasets' rule."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from pipeline.losses.attention import AttentionTransferLoss
from pipeline.losses.crd import CRDLoss
from pipeline.losses.fitnet import FitNetLoss
from pipeline.losses.hinton_kd import HintonKDLoss
from pipeline.losses.moco import MoCoLoss
from pipeline.losses.ntxent import NTXentLoss
from pipeline.losses.proxy_anchor import ProxyAnchorLoss


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_fitnet_is_summed_mse_of_regressed_student_maps():
    generator = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 5, 2, 2, generator=generator)]
    teacher = [torch.randn(2, 6, 4, 4, generator=generator), torch.randn(2, 4, 2, 2, generator=generator)]
    loss = FitNetLoss([3, 5], [6, 4])
    weights = [r.weight.detach().numpy()[:, :, 0, 0] for r in loss.regressors]
    assert all(np.abs(w).max() <= 0.005 for w in weights)
    expected = sum(
        np.mean((np.einsum("oc,nchw->nohw", w, s.numpy()) - t.numpy()) ** 2)
        for w, s, t in zip(weights, student, teacher)
    )
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="stages"):
        loss(student[:1], teacher[:1])


def test_attention_transfer_matches_formula_and_resizes_student():
    generator = torch.Generator().manual_seed(1)
    student = [torch.randn(3, 4, 5, 5, generator=generator)]
    teacher = [torch.randn(3, 7, 5, 5, generator=generator)]

    def attention(x):
        a = (x.numpy() ** 2).mean(axis=1).reshape(len(x), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = np.mean((attention(student[0]) - attention(teacher[0])) ** 2)
    assert AttentionTransferLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # Student at half resolution: its energy map is bilinearly resized to the teacher's 6x6.
    small, big = torch.randn(3, 4, 3, 3, generator=generator), torch.randn(3, 2, 6, 6, generator=generator)
    energy = F.interpolate(small.pow(2).mean(1, keepdim=True), size=(6, 6), mode="bilinear").flatten(1).numpy()
    energy /= np.linalg.norm(energy, axis=1, keepdims=True)
    expected = np.mean((energy - attention(big)) ** 2)
    assert AttentionTransferLoss()([small], [big]).item() == pytest.approx(expected, rel=1e-5)


def test_hinton_kd_is_t_squared_batchmean_kl():
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(5, 10, generator=generator), torch.randn(5, 10, generator=generator)
    p_t, p_s = softmax(teacher.numpy() / 4), softmax(student.numpy() / 4)
    expected = 16 * np.sum(p_t * np.log(p_t / p_s)) / 5
    assert HintonKDLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_proxy_anchor_matches_pytorch_metric_learning():
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(16, 8, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3, 4, 4, 0, 1])  # class 5 absent
    loss = ProxyAnchorLoss(num_classes=6, embedding_dim=8).double()
    oracle = pml_losses.ProxyAnchorLoss(num_classes=6, embedding_size=8, margin=0.1, alpha=32)
    oracle.proxies.data = loss.proxies.detach().clone()
    assert loss(embeddings, labels).item() == pytest.approx(oracle(embeddings, labels).item(), rel=1e-9)
    assert ProxyAnchorLoss.LR_MULTIPLIER == 100
    with pytest.raises(RuntimeError, match="labels must lie"):
        loss(embeddings, labels + 2)


def test_ntxent_matches_simclr_formula():
    generator = torch.Generator().manual_seed(4)
    view0, view1 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    z = np.concatenate([view0.numpy(), view1.numpy()])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(view0)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        logits = np.array([z[i] @ z[k] / 0.5 for k in range(2 * n) if k != i])
        others = [k for k in range(2 * n) if k != i]
        total += -(logits[others.index(positive)] - np.log(np.exp(logits).sum()))
    assert NTXentLoss()(view0, view1).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_moco_scores_queue_enqueues_keys_and_restores_state():
    generator = torch.Generator().manual_seed(5)
    loss = MoCoLoss(embedding_dim=4, queue_size=8, temperature=0.2)
    saved = loss.queue_state()
    query = torch.randn(3, 4, generator=generator, requires_grad=True)
    key = torch.randn(3, 4, generator=generator)
    q = F.normalize(query.detach(), dim=1).numpy()
    k = F.normalize(key, dim=1).numpy()
    bank = saved["queue"].numpy()
    logits = np.concatenate([np.sum(q * k, axis=1, keepdims=True), q @ bank.T], axis=1) / 0.2
    expected = np.mean(-logits[:, 0] + np.log(np.exp(logits).sum(axis=1)))
    assert loss(query, key).item() == pytest.approx(expected, rel=1e-5)
    state = loss.queue_state()
    np.testing.assert_allclose(state["queue"][:3].numpy(), k, rtol=1e-6)  # keys enqueued at the pointer
    assert int(state["pointer"]) == 3
    # Restoring the saved queue (directly or through state_dict) reproduces the first loss.
    restored = MoCoLoss(embedding_dim=4, queue_size=8, temperature=0.2)
    restored.load_state_dict({"_extra_state": saved})
    assert restored(query, key).item() == pytest.approx(expected, rel=1e-5)
    loss.load_queue_state(saved)
    assert torch.equal(loss.queue_state()["queue"], saved["queue"])
    with pytest.raises(ValueError, match="queue state has shape"):
        loss.load_queue_state({"queue": torch.zeros(2, 4), "pointer": torch.zeros(1, dtype=torch.long)})


def reference_crd(student_emb, teacher_emb, student_memory, teacher_memory, candidates, n_data, t=0.07):
    """Eq. 18 of CRD with both anchor directions, from the embeddings and the memory banks."""

    def nce(anchor, memory):
        scores = np.exp(np.einsum("nkf,nf->nk", memory[candidates], anchor) / t)
        scores = scores / (scores.mean() * n_data)  # Z from this (first) batch
        noise = (scores.shape[1] - 1) / n_data
        return -(np.log(scores[:, 0] / (scores[:, 0] + noise + 1e-7)).sum()
                 + np.log(noise / (scores[:, 1:] + noise + 1e-7)).sum()) / len(anchor)

    return nce(student_emb, teacher_memory) + nce(teacher_emb, student_memory)


def test_crd_matches_nce_formula_and_updates_memory_in_training_only():
    generator = torch.Generator().manual_seed(6)
    loss = CRDLoss(student_dim=5, teacher_dim=7, n_data=20, feat_dim=4, num_negatives=6).double()
    student = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    index = torch.tensor([2, 11, 17])
    contrast = torch.randint(0, 20, (3, 6), generator=generator)
    student_emb = F.normalize(loss.student_head.linear(student), dim=1).detach().numpy()
    teacher_emb = F.normalize(loss.teacher_head.linear(teacher), dim=1).detach().numpy()
    student_memory = loss.student_memory.clone().numpy()
    teacher_memory = loss.teacher_memory.clone().numpy()
    candidates = np.concatenate([index.numpy()[:, None], contrast.numpy()], axis=1)
    expected = reference_crd(student_emb, teacher_emb, student_memory, teacher_memory, candidates, 20)
    first = loss(student, teacher, index, contrast)
    assert first.item() == pytest.approx(expected, rel=1e-9)
    first.backward()  # the heads train from the very first batch, when Z is being set
    assert loss.student_head.linear.weight.grad is not None and loss.teacher_head.linear.weight.grad is not None
    mixed = 0.5 * student_memory[index.numpy()] + 0.5 * student_emb
    np.testing.assert_allclose(
        loss.student_memory[index].numpy(), mixed / np.linalg.norm(mixed, axis=1, keepdims=True), rtol=1e-9
    )
    untouched = [i for i in range(20) if i not in (2, 11, 17)]
    np.testing.assert_array_equal(loss.student_memory[untouched].numpy(), student_memory[untouched])
    loss.eval()
    frozen = loss.teacher_memory.clone()
    loss(student, teacher, index, contrast)
    assert torch.equal(loss.teacher_memory, frozen)
    assert "student_memory" in loss.state_dict() and "normalizers" in loss.state_dict()
    with pytest.raises(RuntimeError, match="index must lie"):
        loss(student, teacher, torch.tensor([0, 1, 20]))


def test_crd_bank_update_with_a_repeated_item_writes_its_last_occurrence():
    """Two views of one image put its index in the batch twice: the bank row takes the momentum update with
    the later occurrence's embedding, as a serial loop over the batch would (a plain `memory[index] = ...`
    lets threads race for the row, and two runs of a CRD stage differed)."""
    loss = CRDLoss(student_dim=5, teacher_dim=7, n_data=10, feat_dim=4, num_negatives=3).double()
    generator = torch.Generator().manual_seed(3)
    index = torch.tensor([4, 7, 4, 1, 7, 4])
    embeddings = F.normalize(torch.randn(6, 4, generator=generator, dtype=torch.float64), dim=1)
    expected = loss.student_memory.clone()
    for row, item in enumerate(index.tolist()):  # the serial reference: later rows overwrite earlier ones
        mixed = loss.student_memory[item] * loss.momentum + embeddings[row] * (1 - loss.momentum)
        expected[item] = mixed / mixed.norm()
    loss._update(loss.student_memory, index, embeddings)
    torch.testing.assert_close(loss.student_memory, expected, rtol=0, atol=1e-15)


def test_crd_scores_the_same_by_whole_bank_matmul_and_by_gathered_rows():
    """`_scores` has two paths (a matmul over the whole bank, or the official code's gathered rows): each
    matches the NCE re-derivation and both give the same gradients and bank updates, in float64."""
    generator = torch.Generator().manual_seed(11)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 7, generator=generator, dtype=torch.float64)
    index = torch.tensor([0, 4, 9, 13, 21, 29])
    contrast = torch.randint(0, 30, (6, 8), generator=generator)
    runs = {}
    for dense in (True, False):
        torch.manual_seed(3)  # the same heads and banks for both paths
        loss = CRDLoss(student_dim=5, teacher_dim=7, n_data=30, feat_dim=4, num_negatives=8).double()
        loss.score_every_entry = dense
        s = student.clone().requires_grad_()
        student_emb = F.normalize(loss.student_head.linear(student), dim=1).detach().numpy()
        teacher_emb = F.normalize(loss.teacher_head.linear(teacher), dim=1).detach().numpy()
        candidates = np.concatenate([index.numpy()[:, None], contrast.numpy()], axis=1)
        expected = reference_crd(student_emb, teacher_emb, loss.student_memory.numpy(), loss.teacher_memory.numpy(),
                                 candidates, 30)
        value = loss(s, teacher, index, contrast)
        assert value.item() == pytest.approx(expected, rel=1e-9)
        value.backward()
        runs[dense] = (s.grad, loss.teacher_head.linear.weight.grad, loss.student_memory.clone(), loss.normalizers.clone())
    for dense_part, gathered_part in zip(runs[True], runs[False]):
        torch.testing.assert_close(dense_part, gathered_part, rtol=1e-12, atol=1e-12)
    assert CRDLoss(3, 3, n_data=60000).score_every_entry and not CRDLoss(3, 3, n_data=1_281_167).score_every_entry

# Classes of 13 training items: unsorted, unequal sizes, and ids 3 and 4 unused.
CRD_LABELS = torch.tensor([2, 0, 2, 1, 0, 2, 5, 1, 0, 2, 5, 5, 2])


def draw_counts(loss: CRDLoss, rows: torch.Tensor) -> torch.Tensor:
    """(rows, items) how often each item was drawn among every row's negatives."""
    drawn = loss.negatives(rows)
    return torch.zeros(len(rows), loss.n_data).scatter_add_(1, drawn, torch.ones(drawn.shape))


def test_crd_negatives_are_uniform_over_the_other_classes_items_when_labels_exist():
    """The official datasets draw row i's negatives from `cls_negative[y_i]`, every item of the other
    classes, uniformly with replacement (LabelRelaxation code/dataset/base.py; RepDistiller
    dataset/cifar100.py): over 12 x 4096 draws per item, no same-class item and each other-class
    item about equally often."""
    torch.manual_seed(0)
    loss = CRDLoss(student_dim=3, teacher_dim=3, n_data=13, dataset_labels=CRD_LABELS, num_negatives=4096)
    rows = torch.arange(13).repeat(12)
    counts = draw_counts(loss, rows).reshape(12, 13, 13).sum(0)  # (row item, drawn item)
    same_class = CRD_LABELS[:, None] == CRD_LABELS[None, :]
    assert counts[same_class].sum() == 0
    expected = 12 * 4096 / (~same_class).sum(1, keepdim=True)  # per other-class item, >= 6 k draws
    assert torch.all((counts - expected).abs()[~same_class] < 5 * expected.expand(13, 13)[~same_class].sqrt())


def test_crd_negatives_are_uniform_over_all_items_without_labels():
    """The self-supervised setting has no labels: RepDistiller's ContrastMemory draws uniformly over the
    whole data set (crd/memory.py), the row's own class and the row itself included."""
    torch.manual_seed(0)
    loss = CRDLoss(student_dim=3, teacher_dim=3, n_data=13, num_negatives=4096)
    counts = draw_counts(loss, torch.arange(13).repeat(12)).reshape(12, 13, 13).sum(0)
    expected = 12 * 4096 / 13
    assert torch.all((counts - expected).abs() < 5 * expected**0.5)
    same_class = CRD_LABELS[:, None] == CRD_LABELS[None, :]
    assert torch.all(counts[same_class] > 0)


def test_crd_forward_contrasts_with_the_negatives_it_draws_and_refuses_unusable_labels():
    generator = torch.Generator().manual_seed(7)
    loss = CRDLoss(student_dim=4, teacher_dim=5, n_data=13, dataset_labels=CRD_LABELS, feat_dim=3,
                   num_negatives=6).double().eval()
    student = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    index = torch.tensor([0, 3, 6, 12])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        drawn = loss.negatives(index)
    torch.manual_seed(3)
    assert copy.deepcopy(loss)(student, teacher, index).item() == copy.deepcopy(loss)(student, teacher, index, drawn).item()
    with pytest.raises(ValueError, match="at least two classes"):
        CRDLoss(student_dim=3, teacher_dim=3, n_data=4, dataset_labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(13,\)"):
        CRDLoss(student_dim=3, teacher_dim=3, n_data=13, dataset_labels=CRD_LABELS[:5])
