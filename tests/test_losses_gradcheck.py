"""float64 torch.autograd.gradcheck of every registered loss on small random inputs."""

import pytest
import torch
from torch.autograd import gradcheck

from pipeline.losses import build

N = 6


def randn(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)


LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "name, params",
    [
        ("relaxed_contrastive", {}),
        ("relaxed_contrastive", {"normalize": "global", "student_l2": True}),
        ("relaxed_contrastive", {"normalize": "none", "sigma": 0.5}),
        ("rkd", {}),
        ("pkt", {}),
    ],
)
def test_student_teacher_losses(name, params):
    loss = build(name, **params)
    teacher = randn(N, 5, seed=1).detach()
    assert gradcheck(lambda s: loss(s, teacher), (randn(N, 3, seed=0),))


def test_contrastive():
    loss = build("contrastive")
    assert gradcheck(lambda s: loss(s, LABELS), (randn(N, 3, seed=0),))


def test_darkrank():
    loss = build("darkrank")
    teacher = randn(N, 5, seed=1).detach()
    assert gradcheck(lambda s: loss(s, teacher, LABELS), (randn(N, 3, seed=0),))


def test_fitnet():
    loss = build("fitnet", student_channels=[2, 3], teacher_channels=[3, 2]).double()
    teacher = [randn(2, 3, 3, 3, seed=2).detach(), randn(2, 2, 2, 2, seed=3).detach()]
    inputs = (randn(2, 2, 3, 3, seed=0), randn(2, 3, 2, 2, seed=1), loss.regressors[0].weight)
    assert gradcheck(lambda a, b, _: loss([a, b], teacher), inputs)


def test_attention():
    loss = build("attention")
    teacher = [randn(2, 3, 4, 4, seed=2).detach()]
    assert gradcheck(lambda s: loss([s], teacher), (randn(2, 2, 2, 2, seed=0),))


def test_crd():
    loss = build("crd", student_dim=3, teacher_dim=4, n_data=10, feat_dim=4, num_negatives=5).double().eval()
    teacher = randn(N, 4, seed=1).detach()
    index = torch.arange(N)
    contrast = torch.randint(0, 10, (N, 5), generator=torch.Generator().manual_seed(0))
    loss(randn(N, 3, seed=0), teacher, index, contrast)  # first call fixes the constants Z
    assert gradcheck(lambda s: loss(s, teacher, index, contrast), (randn(N, 3, seed=0),))


def test_hinton_kd():
    loss = build("hinton_kd")
    teacher = randn(N, 4, seed=1).detach()
    assert gradcheck(lambda s: loss(s, teacher), (randn(N, 4, seed=0),))


def test_proxy_anchor_student_and_proxies():
    loss = build("proxy_anchor", num_classes=4, embedding_dim=3, alpha=4.0).double()
    assert gradcheck(lambda e, _: loss(e, LABELS), (randn(N, 3, seed=0), loss.proxies))


def test_ntxent():
    loss = build("ntxent")
    assert gradcheck(loss, (randn(N, 3, seed=0), randn(N, 3, seed=1)))


def test_moco():
    loss = build("moco", embedding_dim=3, queue_size=8).double()
    state = loss.queue_state()
    key = randn(N, 3, seed=1).detach()

    def fresh_queue_loss(query):
        loss.load_queue_state(state)  # each call enqueues the keys; start from the same queue
        return loss(query, key)

    assert gradcheck(fresh_queue_loss, (randn(N, 3, seed=0),))
