"""Checkpoint folders resume only the run whose settings and code wrote them."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.infra.code_manifest import normalised_code
from pipeline.train.fingerprint import claim_checkpoint_dir, file_sha256

ROOT = Path(__file__).resolve().parents[1]


def test_same_settings_resume_other_settings_start_fresh(tmp_path):
    folder = tmp_path / "checkpoints"
    settings = {"lr": 0.1, "nested": {"steps": 5}}
    assert claim_checkpoint_dir(folder, settings) is False  # nothing to resume yet
    (folder / "last.pt").write_bytes(b"state")
    assert claim_checkpoint_dir(folder, {"nested": {"steps": 5}, "lr": 0.1}) is True  # key order is irrelevant
    assert (folder / "last.pt").exists()
    assert claim_checkpoint_dir(folder, {"lr": 0.2, "nested": {"steps": 5}}) is False
    assert not (folder / "last.pt").exists(), "a checkpoint of other settings must not survive"


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    payload = bytes(range(256)) * 5000
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()


SOURCE = '''"""Module docstring."""
def loss(x, delta=1.0):
    """What it computes."""
    return (x - delta) ** 2  # squared
'''


def test_code_identity_ignores_comments_docstrings_and_layout_but_not_code():
    same = [SOURCE.replace("  # squared", ""), SOURCE.replace('"""What it computes."""', '"""Other words."""'),
            SOURCE.replace("(x - delta) ** 2", "(x-delta)**2"), "\n\n" + SOURCE]
    changed = [SOURCE.replace("delta=1.0", "delta=2.0"), SOURCE.replace("** 2", "** 3"),
               SOURCE.replace("x - delta", "delta - x")]
    assert all(normalised_code(variant) == normalised_code(SOURCE) for variant in same)
    assert all(normalised_code(variant) != normalised_code(SOURCE) for variant in changed)


# Build every kind of objective as the stages do, take the code fingerprint, train one step: training
# must import no project module the fingerprint missed (it is taken before training starts).
SCRIPT = textwrap.dedent('''
    import copy, sys, yaml
    from pipeline.config import validate_params
    from pipeline.data.loading import load_images
    from pipeline.replica import Replica
    from pipeline.setting import Setting
    from pipeline.train import classifier_recipes, recipes
    from pipeline.train.fingerprint import code_fingerprint
    from pipeline.train.loop import fit

    raw = yaml.safe_load(open("tests/assets/every_recipe_params.yaml"))
    for section in [*(t["train"] for t in raw["teachers"].values()), raw["transfer"]["self_supervised"]["train"],
                    raw["transfer"]["metric_learning"]["train"],
                    raw["classification"]["train"], raw["classification"]["teachers"]["wide"]["train"]]:
        section["max_steps"] = 1
    params = validate_params(raw)
    images = load_images(params.data, "train")
    objectives = []
    teachers = {}
    for name in params.teachers:
        objective, _ = recipes.teacher_objective(params, name, images)
        objectives.append(objective)
        teachers[name] = copy.deepcopy(objective.model).eval()
    for teacher, grid in (("simclr", params.transfer.self_supervised.grid), ("proxy_anchor", params.transfer.metric_learning.grid)):
        for loss in grid.loss:
            objectives.append(recipes.transfer_objective(
                params, Replica(params.teachers[teacher].setting, teacher, "small", loss, 0), teachers[teacher], images)[0])
    classifier, _ = classifier_recipes.classifier_teacher_objective(params, "wide", images)
    objectives.append(classifier)
    for method in params.classification.grid.method:
        objectives.append(classifier_recipes.classifier_student_objective(
            params, Replica(Setting.CLASSIFICATION, "wide", "small", method, 0), copy.deepcopy(classifier.model).eval(),
            images)[0])
    fingerprinted = set(code_fingerprint())
    for objective in objectives:
        fit(objective, images, params.transfer.self_supervised.train, device="cpu")
    print(sorted(set(code_fingerprint()) - fingerprinted))
''')


def test_training_imports_nothing_the_fingerprint_missed():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
