"""Profiles as overlays of the default params.yaml (pipeline/profiles.py): every shipped overlay composes and
validates, an overlay changes exactly what it names, a bad one is refused on one line naming the file and
the key, and a composed params.yaml is never composed over again."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_params
from pipeline.profiles import compose, names, profile_params, read_default, write_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def checkout(tmp_path):
    """A copy of the default params.yaml and the shipped profiles."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    return tmp_path


def overlay(root: Path, name: str, text: str) -> str:
    (root / "profiles" / f"{name}.yaml").write_text(text)
    return name


def leaves(raw, prefix=""):
    """Dotted key -> value of every leaf (lists are leaves: they replace whole)."""
    if isinstance(raw, dict) and raw:
        return {k: v for key, value in raw.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): raw}


def changed(before: dict, after: dict) -> dict:
    old, new = leaves(before), leaves(after)
    return {key: (old.get(key, "<absent>"), new.get(key, "<absent>")) for key in old.keys() | new.keys()
            if old.get(key, "<absent>") != new.get(key, "<absent>")}


def one_line_error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name", names())
def test_every_shipped_overlay_composes_validates_and_is_written_as_composed(name, checkout):
    target = write_params(name, checkout)
    assert target.read_text().startswith(f"# profile: {name} ")
    load_params(target)
    assert yaml.safe_load(target.read_text()) == profile_params(name)


def test_the_default_is_the_shipped_params_yaml():
    assert read_default() == DEFAULT


def test_an_overlay_of_one_key_changes_exactly_that_key(checkout):
    name = overlay(checkout, "lr", "transfer:\n  metric_learning:\n    train:\n      optimizer: {lr: 0.005}\n")
    composed = compose(name, read_default(checkout), checkout)
    assert changed(DEFAULT, composed) == {"transfer.metric_learning.train.optimizer.lr": (0.002, 0.005)}


SMALL = "  small: {model: {backbone: small_resnet, widths: [16, 32, 64], embedding_dim: 64}, role: compression}\n"
REST = ("transfer: {metric_learning: {grid: {student: [small]}}, self_taught: {grid: {student: [small]}}}\n"
        "classification: {grid: {method: [alone]}}\n")


def test_lists_replace_and_the_replace_and_delete_tags_act_on_their_node_only(checkout):
    tagged = overlay(checkout, "tagged", "students: !replace\n" + SMALL + REST + "mlflow: !delete\n")
    composed = compose(tagged, DEFAULT, checkout)
    gone = {key for key in leaves(DEFAULT) if key.startswith(("students.same.", "students.dim32."))}
    assert changed(DEFAULT, composed).keys() == gone | {"transfer.metric_learning.grid.student",
                                                        "transfer.self_taught.grid.student",
                                                        "classification.grid.method", "mlflow.experiment"}
    assert composed["classification"]["grid"]["method"] == ["alone"] and "mlflow" not in composed
    merged = overlay(checkout, "merged", "students:\n" + SMALL + REST)  # untagged: merges, keeps the others
    assert compose(merged, DEFAULT, checkout)["students"] == DEFAULT["students"]


@pytest.mark.parametrize("text, key", [
    ("evaluation: {tsne_point: 3}\n", "evaluation.tsne_point"),            # a misspelt key: the schema's error
    ("data: {image_size: -1}\n", "data.image_size"),                    # a bad value: the schema's error
    ("evaluation:\n  nope: !delete\n", "evaluation.nope"),                 # nothing to delete
    ("extends: cpu_study\nseeds: [1]\n", "extends"),                       # fine: one level
    ("extends: twice\nseeds: [2]\n", "extends"),                          # fine: a chain
    ("extends: loop\n", "closes a cycle (bad -> loop -> bad)"),            # a chain back to itself: refused
    ("seeds: !replace [1]\n", "line 1"),                                   # !replace takes a mapping
    ("- a list\n", "expected a mapping"),
])
def test_a_bad_overlay_is_refused_on_one_line_naming_the_file_and_key(checkout, text, key):
    overlay(checkout, "twice", "extends: cpu_study\nevaluation: {tsne_points: 7}\n")
    overlay(checkout, "loop", "extends: bad\n")
    name = overlay(checkout, "bad", text)
    if text.startswith("extends: cpu_study") or text.startswith("extends: twice"):
        composed = compose(name, DEFAULT, checkout)
        assert composed["seeds"] == ([1] if "cpu_study" in text else [2])
        if "twice" in text:  # each level merged in turn: the middle one's key, the base's grid
            assert composed["evaluation"]["tsne_points"] == 7
            assert composed["transfer"]["metric_learning"]["views"] == 2
        return
    before = (checkout / "params.yaml").read_bytes()
    message = one_line_error(lambda: write_params(name, checkout))
    named = "profiles/loop.yaml" if "loop" in text else "profiles/bad.yaml"  # the file whose `extends` closes it
    assert message.startswith(named) and key in message, message
    assert (checkout / "params.yaml").read_bytes() == before  # nothing written
    assert not list(checkout.glob(".params.*"))                # nor left behind


def test_an_unknown_profile_is_refused_naming_the_profiles(checkout):
    message = one_line_error(lambda: write_params("cub", checkout))
    assert message.startswith("profiles/cub.yaml: no such profile") and "cub200_compression" in message


def test_a_tagged_overlay_is_not_taken_for_data_by_a_plain_yaml_reader():
    with pytest.raises(yaml.YAMLError, match="!replace"):
        yaml.safe_load((ROOT / "profiles/cub200.yaml").read_text())


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.profiles", *args], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_profiles_never_stack_and_from_default_reads_the_committed_default(checkout):
    assert cli(checkout, "cpu_study").returncode == 0
    composed = (checkout / "params.yaml").read_text()
    refused = cli(checkout, "cub200")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "already composed from profile cpu_study" in refused.stderr and "--from-default" in refused.stderr
    assert (checkout / "params.yaml").read_text() == composed
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (checkout / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    subprocess.run([*git, "init", "-q"], cwd=checkout, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=checkout, check=True)
    subprocess.run([*git, "commit", "-qm", "default"], cwd=checkout, check=True)
    (checkout / "params.yaml").write_text(composed)
    done = cli(checkout, "cub200", "--from-default")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((checkout / "params.yaml").read_text()) == profile_params("cub200")
