"""params.yaml schema: the shipped file validates; bad input fails on one line naming the dotted key."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, flatten, load_params
from pipeline.config import validate_params as validate_structure
from pipeline.contracts import check_contracts
from pipeline.profiles import names, profile_params

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def validate_params(raw: dict):
    """What the prepare stage checks: the schema, then every loss entry against its loss's contract."""
    params = validate_structure(raw)
    check_contracts(params)
    return params


def broken(edit) -> dict:
    raw = copy.deepcopy(SHIPPED)
    edit(raw)
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(raw)
    message = str(info.value)
    assert "\n" not in message, "the error must be one readable line"
    return message


def test_shipped_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.data.name == "fashion_mnist"
    assert set(params.transfer.self_supervised.grid.teacher) <= set(params.teachers)


@pytest.mark.parametrize("profile", names())
def test_paper_scale_profiles_validate(profile):
    validate_structure(profile_params(profile), f"profiles/{profile}.yaml")


def params_of(name: str):
    """The default (`params.yaml`) or a profile composed over it (`profiles/NAME.yaml`), validated."""
    if name == "params.yaml":
        return load_params(ROOT / name)
    return validate_structure(profile_params(Path(name).stem), name)


def test_every_profile_replicates_its_students_over_seeds():
    """cpu_study is the multi-seed study (issue 14); the paper-scale profiles and the default run one seed."""
    for path in [f"profiles/{name}.yaml" for name in names()] + ["params.yaml"]:
        assert params_of(path).seeds == ((0, 1, 2, 3, 4) if "cpu_study" in path else (0,)), path


@pytest.mark.parametrize("seeds, key, reason", [
    ([], "seeds", "at least one seed"),
    ([0, 2, 2], "seeds", "seeds [2] are listed twice"),
    ([0, -1], "seeds.1", "greater than or equal to 0"),
    ([0, True], "seeds.1", "valid integer"),
    ([0, "1"], "seeds.1", "valid integer"),
    (0, "seeds", "valid tuple"),
    (None, "seeds", "required key is missing"),
])
def test_bad_seeds_are_refused_on_one_line_naming_seeds(seeds, key, reason):
    def edit(raw):
        raw.pop("seeds") if seeds is None else raw.update(seeds=seeds)

    message = error_of(broken(edit))
    assert message.startswith(f"params.yaml: {key}:") and reason in message, message


def test_a_replica_must_be_declared_in_params():
    from pipeline.replica import Replica
    from pipeline.setting import Setting

    params = validate_params(broken(lambda raw: raw.update(seeds=[3, 5])))
    replica = Replica(Setting.SELF_SUPERVISED, "simclr", "small", "relaxed", 5)
    assert params.checked(replica) is replica
    with pytest.raises(ConfigError, match=r"^--seed 0 is not one of params.yaml's seeds \[3, 5\]$"):
        params.checked(Replica(Setting.SELF_SUPERVISED, "simclr", "small", "relaxed", 0))
    with pytest.raises(KeyError, match=r"^'losses.rkdd is not in params.yaml \(declared: "):
        params.checked(Replica(Setting.SELF_SUPERVISED, "simclr", "small", "rkdd", 5))


def test_misspelt_key_names_dotted_path_and_suggests():
    def edit(raw):
        raw["teachers"]["simclr"]["trian"] = raw["teachers"]["simclr"].pop("train")

    message = error_of(broken(edit))
    assert "teachers.simclr.trian: unknown key" in message
    assert "did you mean 'teachers.simclr.train'" in message


def test_wrong_type_names_key():
    message = error_of(broken(lambda raw: raw["transfer"]["metric_learning"]["train"].update(batch_size="big")))
    assert "transfer.metric_learning.train.batch_size" in message and "'big'" in message


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda raw: raw["teachers"]["simclr"]["train"]["optimizer"].update(lr=-0.1), "teachers.simclr.train.optimizer.lr"),
        (lambda raw: raw["losses"]["relaxed"].update(proxy_anchor_weight=-1), "losses.relaxed.proxy_anchor_weight"),
        (lambda raw: raw["transfer"]["self_supervised"]["train"].update(batch_size=1),
         "transfer.self_supervised.train.batch_size"),
        (lambda raw: raw["teachers"]["simclr"].update(moco={"momentum": 1.5}), "teachers.simclr.moco.momentum"),
        (lambda raw: raw["evaluation"]["probe"].update(val_fraction=1.0), "evaluation.probe.val_fraction"),
    ],
)
def test_out_of_range_values_name_key(edit, key):
    assert error_of(broken(edit)).startswith(f"params.yaml: {key}:")


@pytest.mark.parametrize(
    "edit, key, suggestion",
    [
        (lambda raw: raw["data"].update(name="fashion_minst"), "data.name", "fashion_mnist"),
        (lambda raw: raw["students"]["small"]["model"].update(backbone="small_resnt"), "students.small.model.backbone", "small_resnet"),
        (lambda raw: raw["losses"]["rkd"].update(name="rkdd"), "losses.rkd.name", "rkd"),
        (lambda raw: raw["transfer"]["self_supervised"].update(augmentation="simclr2"),
         "transfer.self_supervised.augmentation", "simclr"),
    ],
)
def test_unknown_names_list_allowed_values(edit, key, suggestion):
    message = error_of(broken(edit))
    assert key in message and f"did you mean {suggestion!r}" in message and "allowed:" in message


def test_grid_pointing_at_undeclared_teacher():
    message = error_of(broken(lambda raw: raw["transfer"]["self_supervised"]["grid"].update(teacher=["simclr", "byol"])))
    assert "transfer.self_supervised.grid.teacher" in message and "'byol'" in message


def test_metric_learning_grid_refuses_ssl_teacher():
    message = error_of(broken(lambda raw: raw["transfer"]["metric_learning"]["grid"].update(teacher=["simclr"])))
    assert message.startswith("params.yaml: transfer.metric_learning.grid.teacher: 'simclr' is a simclr teacher")
    assert "proxy_anchor" in message


def test_self_supervised_grid_refuses_proxy_anchor_teacher():
    message = error_of(broken(lambda raw: raw["transfer"]["self_supervised"]["grid"].update(teacher=["proxy_anchor"])))
    assert message.startswith("params.yaml: transfer.self_supervised.grid.teacher: 'proxy_anchor' is a proxy_anchor")
    assert "transfer.metric_learning.grid" in message


def test_self_supervised_section_refuses_a_sampler():
    """Class-balanced batches read labels, which the self-supervised setting does not have."""
    message = error_of(broken(lambda raw: raw["transfer"]["self_supervised"].update(
        sampler={"classes_per_batch": 4, "samples_per_class": 64})))
    assert message.startswith("params.yaml: transfer.self_supervised.sampler: not allowed here")
    assert "transfer.metric_learning" in message


def test_metric_learning_sampler_must_fill_the_batch():
    message = error_of(broken(lambda raw: raw["transfer"]["metric_learning"]["sampler"].update(samples_per_class=5)))
    assert message.startswith("params.yaml: transfer.metric_learning.sampler: classes_per_batch x samples_per_class = 20")


@pytest.mark.parametrize("key", ["augmentation", "views", "train", "sampler"])
def test_a_section_with_stages_needs_every_key_its_stages_depend_on(key):
    """dvc.yaml's transfer stages depend on these keys by name; DVC would fail on a missing one later."""
    message = error_of(broken(lambda raw: raw["transfer"]["metric_learning"].pop(key)))
    assert message.startswith(f"params.yaml: transfer.metric_learning.{key}: required key is missing")


def test_a_section_without_stages_needs_only_its_grid():
    def edit(raw):
        raw["transfer"]["self_supervised"] = {"grid": {"teacher": [], "student": [], "loss": []}}

    params = validate_params(broken(edit))
    assert params.transfer.self_supervised.train is None


def test_views_are_one_or_two():
    message = error_of(broken(lambda raw: raw["transfer"]["metric_learning"].update(views=3)))
    assert message.startswith("params.yaml: transfer.metric_learning.views:")


def test_names_that_would_escape_output_folder_are_refused():
    message = error_of(broken(lambda raw: raw["students"].update({"../evil": raw["students"]["small"]})))
    assert "students.../evil" in message


def test_missing_required_key():
    message = error_of(broken(lambda raw: raw["data"].pop("image_size")))
    assert "data.image_size: required key is missing" in message


def test_yaml_syntax_error_reports_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\ndata: {name: digits\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_params(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read parameters file"):
        load_params(tmp_path / "nope.yaml")


def test_flatten_matches_dvc_dotted_keys():
    """Every key `dvc params diff` shows for params.yaml appears under the same dotted name and value."""
    from dvc.utils.flatten import flatten as dvc_flatten

    ours = flatten(load_params(ROOT / "params.yaml"))
    theirs = dvc_flatten(SHIPPED)
    scalars = {k: v for k, v in theirs.items() if not isinstance(v, (list, dict))}
    assert scalars, "params.yaml should have scalar keys"
    for key, value in scalars.items():
        assert key in ours, key
        assert ours[key] == value, key


@pytest.mark.parametrize(
    "loss",
    [
        {"name": "darkrank"},  # its triplet term is label-based by default
        {"name": "fitnet"},  # trained with a Proxy-Anchor term, as in the paper
        {"name": "relaxed_contrastive", "proxy_anchor_weight": 0.5},
    ],
)
def test_self_supervised_grid_refuses_losses_that_read_labels(loss):
    def edit(raw):
        raw["losses"]["labelled"] = loss
        raw["transfer"]["self_supervised"]["grid"]["loss"] = ["relaxed", "labelled"]

    message = error_of(broken(edit))
    assert message.startswith("params.yaml: transfer.self_supervised.grid.loss: 'labelled' reads class labels")


def test_metric_learning_grid_accepts_losses_that_read_labels():
    def edit(raw):
        raw["losses"]["fitnet"] = {"name": "fitnet"}
        raw["transfer"]["metric_learning"]["grid"]["loss"] = ["relaxed", "fitnet"]

    validate_params(broken(edit))


def images_seen(train, n_images: int) -> int:
    """Images a `train` section draws from a set of `n_images` (full batches; max_steps caps the epochs)."""
    steps = train.epochs * (n_images // train.batch_size)
    return min(steps, train.max_steps or steps) * train.batch_size


# Training images of the Proxy-Anchor teachers' classes: Fashion-MNIST 0-4 (6000 per class), CUB-200 0-99,
# Cars-196 0-97, SOP Ebay_train (the standard splits' counts).
TRAIN_IMAGES = {"params.yaml": 30_000, "profiles/cpu_study.yaml": 30_000, "profiles/cub200.yaml": 5_864,
                "profiles/cars196.yaml": 8_054, "profiles/sop.yaml": 59_551}


@pytest.mark.parametrize("path", sorted(TRAIN_IMAGES))
def test_metric_learning_students_train_at_least_as_long_as_their_teacher(path):
    """Issue 13: "the student beats its teacher" can only show when the student saw no fewer images."""
    params = params_of(path)
    section = params.transfer.metric_learning
    assert section.grid.teacher
    for teacher in section.grid.teacher:
        n = TRAIN_IMAGES[path]
        assert images_seen(section.train, n) >= images_seen(params.teachers[teacher].train, n), teacher


@pytest.mark.parametrize("augmentation, key, reason", [
    ({"name": "simclr", "jiter_strength": 0.5}, "teachers.simclr.augmentation.jiter_strength", "unknown key"),
    ({"name": "cifar", "jitter_strength": 0.5}, "teachers.simclr.augmentation.jitter_strength", "no strengths"),
    ({"name": "simclr", "crop_scale": [0.9, 0.2]}, "teachers.simclr.augmentation.crop_scale", "min <= max"),
    ({"name": "simclr", "grayscale_probability": 1.5}, "teachers.simclr.augmentation.grayscale_probability", "1"),
])
def test_augmentation_strengths_are_checked(augmentation, key, reason):
    message = error_of(broken(lambda raw: raw["teachers"]["simclr"].update(augmentation=augmentation)))
    assert message.startswith(f"params.yaml: {key}:") and reason in message


def test_augmentation_strengths_dump_as_written():
    """A plain name stays a plain name in the dotted keys (as DVC shows it); set strengths appear under it."""
    params = validate_params(broken(lambda raw: raw["teachers"]["simclr"].update(
        augmentation={"name": "simclr", "jitter_strength": 0.5})))
    flat = flatten(params)
    assert flat["teachers.simclr.augmentation.jitter_strength"] == 0.5
    assert flat["teachers.simclr.augmentation.name"] == "simclr"
    assert flat["teachers.proxy_anchor.augmentation"] == "metric"


def test_yaml_aliases_that_expand_far_beyond_the_file_are_refused_before_anything_parses_them(tmp_path):
    """A "billion laughs" params.yaml: 327 bytes, each level aliasing the one before ten times, 12 million
    nodes once expanded (what DVC builds before any stage runs). The pre-flight command of the README's quick
    start refuses it in one line; a file that aliases a little (a shared train section) passes."""
    import subprocess
    import sys
    import time

    letters = "abcdefg"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{letters[i + 1]}: &{letters[i + 1]} [" + ", ".join([f"*{letters[i]}"] * 10) + "]\n" for i in range(6))
    path = tmp_path / "params.yaml"
    path.write_text(bomb + "junk: 1\n")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipeline.config", str(path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 2 and time.perf_counter() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "aliases expand to 12,345,687 nodes" in lines[0], lines
    shared = yaml.safe_load((ROOT / "tests/assets/tiny_params.yaml").read_text())
    shared["transfer"]["self_supervised"]["train"] = shared["teachers"]["simclr"]["train"]  # one object: an alias
    text = yaml.safe_dump(shared, sort_keys=False)
    assert "&id001" in text and "*id001" in text
    (tmp_path / "shared.yaml").write_text(text)
    load_params(tmp_path / "shared.yaml")  # a little aliasing is fine
