"""A training step never waits for the device: between two flushes of the loss log, no recipe's step
(augmentation, forward, loss, backward, optimiser) reads a tensor back to the host. Checked on the CPU by
recording every `aten::_local_scalar_dense` (what `.item()`, `bool(tensor)` and `int(tensor)` dispatch to)
with the code that asked for it."""
from __future__ import annotations

import traceback
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recipe_support import build, every_recipe_params, recipe_ids, trained_teachers

# Reads that are not device syncs, or not ours to change:
# - torch.optim's step counters are host tensors on CUDA too (no `capturable`), so reading them waits for
#   nothing;
# - lightly's memory bank (MoCo's queue) reads its pointer each step; the MoCo teacher and its control
#   student keep that one sync per step.
ALLOWED = ("/torch/optim/", "/lightly/models/modules/memory_bank.py")


class HostReads(TorchDispatchMode):
    """Where each `_local_scalar_dense` came from: the innermost frame outside torch (torch.optim counts)."""

    def __init__(self) -> None:
        super().__init__()
        self.where: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "/torch/" not in f.filename or "/torch/optim/" in f.filename]
            self.where[f"{frames[-1].filename}:{frames[-1].lineno}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def trained():
    return trained_teachers(every_recipe_params(amp="off"), "cpu")


@pytest.mark.parametrize("recipe", recipe_ids())
def test_no_training_step_reads_a_tensor_back_between_flushes(recipe, trained):
    from pipeline.train.loop import fit

    params, images, teachers, classifiers = trained
    objective, train, samples_per_class = build(recipe, params, images, teachers, classifiers)
    train = train.model_copy(update={"max_steps": 3, "log_every_steps": 100})  # one flush, after the last step
    with HostReads() as reads:
        fit(objective, images, train, device="cpu", samples_per_class=samples_per_class)
    ours = {where: count for where, count in reads.where.items() if not any(a in where for a in ALLOWED)}
    assert not ours, ours
