"""Every recipe trains under autocast on the CPU, as it does on CUDA (`train.amp_on_cpu`): the AMP path of
every objective, with half-precision activations meeting float32 losses and heads, runs in the default suite
without a GPU. Before CPU autocast existed, `full_precision` was a no-op on CPU and the Hinton KD student took
another path there; on CUDA it failed with "mat1 and mat2 must have the same dtype" (shared/gpu/PROFILE.md)."""
from __future__ import annotations

import math

import pytest
import torch

from recipe_support import STEPS, every_recipe_params, probed_fit, recipe_ids, trained_teachers

@pytest.fixture(scope="module")
def trained():
    """The teachers, trained STEPS steps on the CPU in float32 (what a student's teacher is)."""
    return trained_teachers(every_recipe_params(amp="off"), "cpu")


@pytest.mark.parametrize("recipe", recipe_ids())
def test_every_recipe_trains_under_cpu_bf16_autocast(recipe, trained):
    objective, result, probe = probed_fit(recipe, every_recipe_params("bf16", amp_on_cpu=True), trained, "cpu")
    assert result.steps == STEPS and len(result.losses) == STEPS
    assert all(math.isfinite(loss) for _, loss in result.losses), result.losses
    assert probe.conv_dtypes == {torch.bfloat16}, "the forward pass must run under bf16 autocast"
    assert all(p.dtype == torch.float32 for p in objective.parameters())  # autocast: float32 master weights


@pytest.mark.parametrize("recipe", ["teacher-simclr", "student-proxy_anchor-relaxed", "classifier-student-kd"])
def test_fp16_autocast_with_its_grad_scaler_trains_finite_on_the_cpu(recipe, trained):
    _, result, probe = probed_fit(recipe, every_recipe_params("fp16", amp_on_cpu=True), trained, "cpu")
    assert len(result.losses) == STEPS and all(math.isfinite(loss) for _, loss in result.losses), result.losses
    assert probe.conv_dtypes == {torch.float16}


def test_without_amp_on_cpu_the_cpu_trains_in_float32(trained):
    """The default: `amp` names CUDA's dtype; the CPU keeps float32 unless `amp_on_cpu` is set."""
    _, _, probe = probed_fit("teacher-simclr", every_recipe_params("bf16"), trained, "cpu")
    assert probe.conv_dtypes == {torch.float32}
