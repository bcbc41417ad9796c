"""The study's parts (scripts/study_profile.py): each is one setting of the cpu_study profile with every
seed and hyper-parameter unchanged, and together they hold every stage of the whole study."""
import importlib.util
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, validate_params
from pipeline.profiles import profile_params

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study_profile", ROOT / "scripts/study_profile.py")
study_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_profile)
WHOLE = profile_params("cpu_study")


def stages(params) -> set[tuple]:
    """(setting, teacher, student, loss or method, seed) of every student stage, and every teacher."""
    found = {("teacher", name) for name in params.teachers}
    found |= {("classification_teacher", name) for name in params.classification.grid.teacher}
    for setting in ("self_supervised", "metric_learning", "self_taught"):
        grid = params.transfer.of(setting).grid
        found |= {(setting, t, s, loss, seed) for t in grid.teacher for s in grid.student for loss in grid.loss
                  for seed in params.seeds}
    grid = params.classification.grid
    found |= {("classification", t, s, m, seed) for t in grid.teacher for s in grid.student for m in grid.method
              for seed in params.seeds}
    return found


def test_the_parts_partition_the_whole_study_by_setting():
    whole = validate_params(WHOLE)
    parts = {part: validate_params(yaml.safe_load(yaml.safe_dump(study_profile.part_profile(WHOLE, part))))
             for part in ("self_supervised", "metric_learning", "self_taught", "classification")}
    found = [stages(params) for params in parts.values()]
    assert set().union(*found) == stages(whole)
    students = [{key for key in keys if key[0] != "teacher"} for keys in found]
    assert sum(map(len, students)) == len({key for key in stages(whole) if key[0] != "teacher"})
    # every teacher trains in the part of its grid; the Proxy-Anchor teacher also in the self-taught part,
    # whose report shows it as the labelled reference
    assert {name for name in parts["self_taught"].teachers} == {"simclr_unlabelled", "proxy_anchor"}
    for part, params in parts.items():
        assert params.seeds == whole.seeds and params.evaluation == whole.evaluation and params.data == whole.data
        if part != "self_taught":
            assert all(teacher.setting == part for teacher in params.teachers.values())
        assert {key[0] for key in stages(params)} - {"teacher", "classification_teacher"} == {part}
    assert parts["metric_learning"].transfer.metric_learning == whole.transfer.metric_learning
    assert study_profile.part_profile(WHOLE, "all") == WHOLE


def test_an_unknown_part_is_refused_naming_it():
    with pytest.raises(ConfigError, match="'table1' is not one of all, self_supervised"):
        study_profile.part_profile(WHOLE, "table1")
