"""The relaxed loss's soft labels averaged over same-class and other-class train pairs
(`pipeline.eval.label_gap`), by scripts/teacher_weights.py and in the teacher stage's metrics."""
import json
import math
import re
import subprocess

import torch
from faults_support import BIN, ROOT, make_repo, stage, tiny_params

from pipeline.losses.relaxed_contrastive import RelaxedContrastiveLoss

from pipeline.eval import label_gap as teacher_weights

SCRIPT = str(ROOT / "scripts/teacher_weights.py")


def test_pair_means_leave_out_the_diagonal_and_split_by_class():
    values = torch.tensor([[9.0, 1.0, 5.0, 6.0],
                           [2.0, 9.0, 7.0, 8.0],
                           [1.0, 1.0, 9.0, 3.0],
                           [1.0, 1.0, 4.0, 9.0]])
    same, other = teacher_weights.class_pair_means(values, torch.tensor([0, 0, 1, 1]))
    assert same == (1 + 2 + 3 + 4) / 4  # (0,1), (1,0), (2,3), (3,2); the 9s on the diagonal are not pairs
    assert other == (5 + 6 + 7 + 8 + 1 + 1 + 1 + 1) / 8


def test_orthogonal_classes_give_the_loss_labels_one_and_exp_minus_two_over_sigma():
    """Unit teachers, class 0 all on e1 and class 1 all on e2: ||t_i - t_j||^2 is 0 within and 2 across."""
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]) * 3.0  # normalised by the loss
    weights = RelaxedContrastiveLoss(sigma=0.5).teacher_weights(teacher)
    same, other = teacher_weights.class_pair_means(weights, torch.tensor([0, 0, 1, 1]))
    assert math.isclose(same, 1.0) and math.isclose(other, math.exp(-2 / 0.5), rel_tol=1e-6)


def test_on_a_trained_teacher_the_line_is_consistent_with_its_cosines(tmp_path):
    """For unit vectors ||t_i - t_j||^2 = 2 - 2 cos, so by Jensen (exp is convex) the mean label is at least
    exp(-(2 - 2 mean cos) / sigma), per class relation; equal only if every pair had the same cosine."""
    env = make_repo(tmp_path, tiny_params(), with_dvc=False)
    assert stage(["stages.teacher", "proxy_anchor"], tmp_path, env).returncode == 0
    result = subprocess.run([str(BIN / "python"), SCRIPT, "proxy_anchor", "--images", "300"], check=False,
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    sigma = tiny_params()["losses"]["relaxed"]["params"]["sigma"]
    found = re.search(r"sigma ([\d.]+), 300 train images: mean w same-class ([\d.]+), other-class ([\d.]+) "
                      r"\(gap [-\d.]+\); mean cosine same-class ([-\d.]+), other-class ([-\d.]+)$", result.stdout.strip())
    assert found, result.stdout
    shown_sigma, w_same, w_other, cos_same, cos_other = map(float, found.groups())
    assert shown_sigma == sigma
    # The teacher stage wrote the same diagnostic into its summary, on every train image of its classes.
    summary = json.loads((tmp_path / "outputs/teachers/proxy_anchor/metrics.json").read_text())
    every = subprocess.run([str(BIN / "python"), SCRIPT, "proxy_anchor", "--images", "100000"], check=True,
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120).stdout
    assert f"(gap {summary['label_gap']:.3f})" in every and summary["label_gap_sigma"] == sigma
    for w, cos in ((w_same, cos_same), (w_other, cos_other)):
        assert 0 < w <= 1 and w >= math.exp(-(2 - 2 * cos) / sigma) - 1e-3


def test_a_teacher_not_in_params_is_named_in_one_line_before_any_model_is_read(tmp_path):
    env = make_repo(tmp_path, tiny_params(), with_dvc=False)
    result = subprocess.run([str(BIN / "python"), SCRIPT, "nope"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: teachers.nope is not in params.yaml (declared: simclr, proxy_anchor)"]
