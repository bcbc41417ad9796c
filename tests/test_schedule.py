"""Learning-rate factors against hand-worked values."""
import pytest
import torch

from pipeline.train.schedule import WarmupCosine, WarmupMultiStep


def test_multistep_factors_by_hand():
    schedule = WarmupMultiStep(warmup_steps=2, milestones=(5, 8), gamma=0.1)
    # warm-up 1/2, 2/2; then 1 until step 5; x0.1 from step 5; x0.01 from step 8
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert [schedule(step) for step in range(10)] == pytest.approx(expected)


def test_multistep_matches_torch_multisteplr_without_warmup():
    ours = WarmupMultiStep(warmup_steps=0, milestones=(3, 6), gamma=0.5)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    reference = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 6], gamma=0.5)
    for step in range(9):
        assert ours(step) == pytest.approx(optimizer.param_groups[0]["lr"]), step
        optimizer.step()
        reference.step()


def test_multistep_refuses_unordered_milestones():
    with pytest.raises(ValueError, match="milestones"):
        WarmupMultiStep(0, (5, 3))


def test_cosine_ends_at_min_ratio():
    schedule = WarmupCosine(warmup_steps=0, total_steps=10, min_ratio=0.1)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(10) == pytest.approx(0.1)
