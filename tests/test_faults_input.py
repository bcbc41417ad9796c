"""Bad input is refused by the real stage commands before any compute: one readable line naming the key,
file or value, exit 2, and nothing written that looks like a result (no summary.json, model.pt,
metrics.json, no MLflow run for a params error).

Malformed params.yaml cases run through `python -m stages.prepare` (the first stage of `dvc repro`) or
`stages.teacher` / `stages.transfer`; dataset cases through prepare; damaged or mismatched checkpoints
through the stages that load them.
"""
from __future__ import annotations

import copy
import gzip
import os
import pickle
from pathlib import Path

import pytest

from faults_support import (
    ROOT,
    assert_one_line_refusal,
    clean_env,
    error_lines,
    in_fork,
    make_repo,
    overwrite_tensor_data,
    read_json,
    run_all,
    stage_forked,
    stage_runs,
    tiny_params,
    warm_up,
    write_params,
)

pytestmark = pytest.mark.faults

PREPARE = ["stages.prepare"]
TEACHER = ["stages.teacher", "simclr"]
TRANSFER = ["stages.transfer", "--teacher", "simclr", "--student", "small", "--loss", "relaxed", "--seed", "0"]


def setting(path: str, value):
    """A change that sets the dotted key `path` to `value`."""
    def change(params: dict) -> None:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def renaming(path: str, new_name: str):
    """A change that renames the key at dotted `path` (a misspelling), keeping its value."""
    def change(params: dict) -> None:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[new_name] = node.pop(last)
    return change


def removing(path: str):
    def change(params: dict) -> None:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node[key]
        del node[last]
    return change


def renaming_teacher(new_name: str):
    """Teacher `simclr` declared as `new_name` (and the transfer grid pointing at it)."""
    def change(params: dict) -> None:
        params["teachers"][new_name] = params["teachers"].pop("simclr")
        params["transfer"]["self_supervised"]["grid"]["teacher"] = [new_name]
    return change


# (case id, stage command, change to the tiny profile or raw params.yaml text, texts the line must name)
PARAM_CASES = [
    ("misspelt top-level key", PREPARE, renaming("seed", "sed"), ["sed", "unknown key", "'seed'"]),
    ("misspelt key at depth 2", PREPARE, renaming("data.image_size", "image_sise"),
     ["data.image_sise", "data.image_size"]),
    ("misspelt key at depth 4", TEACHER, renaming("teachers.simclr.model.widths", "widhts"),
     ["teachers.simclr.model.widhts", "widths"]),
    ("misspelt key at depth 5", TEACHER, renaming("teachers.simclr.train.optimizer.lr", "learning_rate"),
     ["teachers.simclr.train.optimizer.learning_rate"]),
    ("misspelt section", PREPARE, renaming("evaluation.retrieval", "retreival"), ["evaluation.retreival", "retrieval"]),
    ("misspelt loss parameter", PREPARE, setting("losses.relaxed.params", {"sigmaa": 1.0}),
     ["losses.relaxed", "sigmaa"]),
    ("missing required key", PREPARE, removing("data.image_size"), ["data.image_size", "missing"]),
    ("string for an int", PREPARE, setting("data.image_size", "eight"), ["data.image_size", "'eight'"]),
    ("list for an int", TEACHER, setting("teachers.simclr.train.batch_size", [64]),
     ["teachers.simclr.train.batch_size"]),
    ("string for a bool", PREPARE, setting("data.download", "maybe"), ["data.download", "'maybe'"]),
    ("negative seed", PREPARE, setting("seed", -1), ["seed", "-1"]),
    ("zero learning rate", TEACHER, setting("teachers.simclr.train.optimizer.lr", 0), ["optimizer.lr", "0"]),
    ("fraction above 1", PREPARE, setting("evaluation.probe.val_fraction", 1.5),
     ["evaluation.probe.val_fraction", "1.5"]),
    ("batch of one", PREPARE, setting("transfer.self_supervised.train.batch_size", 1), ["transfer.self_supervised.train.batch_size", "1"]),
    ("loss parameter out of range", PREPARE, setting("losses.relaxed.params", {"sigma": -1.0}),
     ["losses.relaxed", "sigma", "-1.0"]),
    ("unknown dataset", PREPARE, setting("data.name", "fashionmnist"), ["data.name", "'fashionmnist'", "fashion_mnist"]),
    ("unknown backbone", TEACHER, setting("teachers.simclr.model.backbone", "resnet_tiny"),
     ["teachers.simclr.model.backbone", "'resnet_tiny'"]),
    ("unknown loss", PREPARE, setting("losses.relaxed.name", "relaxed_contrastiv"),
     ["losses.relaxed.name", "'relaxed_contrastiv'", "relaxed_contrastive"]),
    ("unknown augmentation", TEACHER, setting("teachers.simclr.augmentation", "simclr2"),
     ["teachers.simclr.augmentation", "'simclr2'"]),
    ("unknown teacher method", PREPARE, setting("teachers.simclr.method", "byol"), ["teachers.simclr.method", "'byol'"]),
    ("batch not split by the processes", TEACHER, setting("teachers.simclr.train.processes", 3),
     ["teachers.simclr.train.batch_size", "64", "3 processes"]),
    ("processes neither a count nor auto", TEACHER, setting("teachers.simclr.train.processes", "all"),
     ["teachers.simclr.train.processes", "'all'"]),
    ("unknown amp mode", PREPARE, setting("transfer.self_supervised.train.amp", "fp8"), ["transfer.self_supervised.train.amp", "'fp8'"]),
    ("grid names an undeclared teacher", PREPARE, setting("transfer.self_supervised.grid.teacher", ["simclr", "byol"]),
     ["transfer.self_supervised.grid.teacher", "'byol'", "simclr"]),
    ("grid names an undeclared student", TRANSFER, setting("transfer.self_supervised.grid.student", ["tiny"]),
     ["transfer.self_supervised.grid.student", "'tiny'"]),
    ("metric grid names an SSL teacher", PREPARE, setting("transfer.metric_learning.grid.teacher", ["simclr"]),
     ["transfer.metric_learning.grid.teacher", "simclr"]),
    ("widths on a torchvision backbone", PREPARE, setting("students.small.model.backbone", "resnet18"),
     ["students.small.model", "widths", "resnet18"]),
    ("load_size below image_size", PREPARE, setting("data.load_size", 4), ["data", "load_size", "4", "8"]),
    ("train_classes beyond the dataset", PREPARE, setting("teachers.proxy_anchor.train_classes", [0, 1, 12]),
     ["teachers.proxy_anchor.train_classes", "12", "10 classes"]),
    ("image_size above the images", PREPARE, setting("data.image_size", 16), ["data.image_size", "16"]),
    ("sampler batch mismatch", PREPARE, setting("transfer.metric_learning.sampler",
                                                {"classes_per_batch": 5, "samples_per_class": 4}),
     ["transfer.metric_learning.sampler", "20", "64"]),
    ("sampler in the self-supervised section", TRANSFER, setting("transfer.self_supervised.sampler",
                                                                 {"classes_per_batch": 4, "samples_per_class": 16}),
     ["transfer.self_supervised.sampler", "not allowed", "labels"]),
    ("proxy_anchor teacher without projection", PREPARE, setting("teachers.proxy_anchor.transfer_embedding", "projection"),
     ["teachers.proxy_anchor", "transfer_embedding"]),
    ("teacher name with a path", PREPARE, renaming_teacher("../escape"), ["teachers.../escape", "names must match"]),
    ("teacher name with a slash", TEACHER, renaming_teacher("simclr/evil"), ["simclr/evil", "names must match"]),
    ("invalid YAML", PREPARE, "seed: 0\ndata: {name: digits, image_size: 8\n", ["params.yaml", "invalid YAML", "line"]),
    ("not a mapping", PREPARE, "- seed\n- data\n", ["params.yaml", "mapping"]),
    ("unknown teacher on the command line", ["stages.teacher", "../../etc"], None,
     ["teachers.../../etc", "not in params.yaml"]),
    ("unknown loss on the command line", ["stages.transfer", "--teacher", "simclr", "--student", "small", "--loss",
                                          "../x", "--seed", "0"], None, ["losses.../x", "not in params.yaml"]),
    # Seeds: the replicas of the student stages (params.yaml `seeds`; a stage's --seed must be one of them).
    ("no seeds", PREPARE, setting("seeds", []), ["seeds", "at least one seed"]),
    ("a seed listed twice", PREPARE, setting("seeds", [0, 1, 1]), ["seeds", "[1]", "twice"]),
    ("a seed that is not an integer", PREPARE, setting("seeds", [0, "1"]), ["seeds.1", "valid integer"]),
    ("a replica seed outside seeds", TRANSFER[:-1] + ["7"], None, ["--seed 7", "seeds [0]"]),
    ("a classifier replica seed outside seeds", ["stages.classify", "student", "--teacher", "wide", "--student",
                                                  "small", "--method", "kd", "--seed", "3"], None,
     ["--seed 3", "seeds [0]"]),
    # Loss parameters, typed by the `Params` model each loss declares (pipeline.losses.contract).
    ("loss parameter given a string", PREPARE, setting("losses.relaxed.params", {"sigma": "abc"}),
     ["losses.relaxed.params.sigma", "valid number", "'abc'"]),
    ("loss parameter given a bool", TRANSFER, setting("losses.relaxed.params", {"sigma": True}),
     ["losses.relaxed.params.sigma", "valid number", "True"]),
    ("misspelt loss parameter in the transfer stage", TRANSFER, setting("losses.relaxed.params", {"sigmaa": 1.0}),
     ["losses.relaxed.params.sigmaa", "unknown parameter", "did you mean 'sigma'"]),
    ("integer loss parameter given a string", PREPARE,
     setting("losses.rkd", {"name": "rkd", "params": {"angle_max_rows": "x"}}),
     ["losses.rkd.params.angle_max_rows", "valid integer", "'x'"]),
    ("classification term parameter of the wrong type", ["stages.classify", "student", "--teacher", "wide",
                                                         "--student", "small", "--method", "kd", "--seed", "0"],
     setting("classification.methods.kd.params", {"temperature": "hot"}),
     ["classification.methods.kd.params.temperature", "valid number", "'hot'"]),
    ("teacher objective named as a transfer loss", PREPARE, setting("losses.relaxed.name", "ntxent"),
     ["losses.relaxed.name", "'ntxent'", "not a transfer loss"]),
    # What the filesystem, the data or the evaluation would refuse only later (issue 32).
    ("a student name of 300 characters", PREPARE, setting(f"students.{'s' * 300}", {"model": {
        "backbone": "small_resnet", "widths": [4, 8], "embedding_dim": 8}, "role": "compression"}),
     ["students.sss", "300 characters"]),
    ("a data.root of 5,000 characters", PREPARE, setting("data.root", "d" * 5000), ["data.root", "255 bytes"]),
    ("a data.root that does not exist", PREPARE, setting("data.root", "/nowhere/digits"),
     ["data.root", "/nowhere/digits", "does not exist"]),
    ("Recall@K deeper than the gallery", PREPARE, setting("evaluation.retrieval.ks", [1, 5000]),
     ["evaluation.retrieval.ks", "Recall@5000", "gallery"]),
    ("no Recall@K at all", PREPARE, setting("evaluation.retrieval.ks", []), ["evaluation.retrieval.ks", "at least 1"]),
    ("a blank MLflow experiment", PREPARE, setting("mlflow.experiment", "  "), ["mlflow.experiment"]),
]


@pytest.fixture(scope="module")
def param_results(tmp_path_factory):
    """Every case in its own folder (params.yaml + nothing else), all run side by side once."""
    env = {**clean_env(), "PYTHONPATH": str(ROOT)}
    jobs = {}
    for case, args, change, _ in PARAM_CASES:
        folder = tmp_path_factory.mktemp("badparams")
        if isinstance(change, str):
            (folder / "params.yaml").write_text(change)
        else:
            params = tiny_params()
            if change is not None:
                change(params)
            write_params(folder, params)
        jobs[case] = (args, folder, env)
    warm_up()
    return {case: (result, jobs[case][1]) for case, result in run_all(jobs, runner=stage_forked).items()}


def test_there_are_at_least_twenty_malformed_params_cases():
    assert len({case for case, _, change, _ in PARAM_CASES if change is not None}) >= 20


@pytest.mark.parametrize("case, expected", [(c, e) for c, _, _, e in PARAM_CASES], ids=[c for c, *_ in PARAM_CASES])
def test_malformed_params_are_refused_before_any_compute(param_results, case, expected):
    result, folder = param_results[case]
    assert_one_line_refusal(result, *expected)
    written = [p.relative_to(folder) for p in folder.rglob("*") if p.name != "params.yaml"]
    assert written == [], f"a refused run left {written}"  # no outputs, no checkpoints, no mlflow.db


# Also run as literal `python -m` subprocesses: the forked runs above must say exactly what they say.
SUBPROCESS_CASES = ("misspelt key at depth 4", "train_classes beyond the dataset", "unknown teacher on the command line")


def test_forked_runs_match_literal_stage_subprocesses(param_results):
    jobs = {case: (next(a for c, a, _, _ in PARAM_CASES if c == case), param_results[case][1],
                   {**clean_env(), "PYTHONPATH": str(ROOT)}) for case in SUBPROCESS_CASES}
    for case, result in run_all(jobs).items():
        forked = param_results[case][0]
        assert (result.returncode, error_lines(result.stderr)) == (forked.returncode, error_lines(forked.stderr))


def write_idx(path: Path, shape: tuple[int, ...], payload_bytes: int) -> None:
    """An IDX file (magic 0x0803 for uint8 3-d) whose header promises `shape` but carries `payload_bytes`."""
    header = bytes([0, 0, 0x08, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    data = header + bytes(payload_bytes)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture(scope="module")
def dataset_results(tmp_path_factory):
    env = {**clean_env(), "PYTHONPATH": str(ROOT)}
    jobs = {}

    def fashion_case(name: str, build_files) -> None:
        folder = tmp_path_factory.mktemp(name)
        files = folder / "fashion"
        files.mkdir()
        build_files(files)
        params = tiny_params()
        params["data"] = {"name": "fashion_mnist", "image_size": 28}
        write_params(folder, params)
        jobs[name] = (PREPARE, folder, {**env, "FASHION_MNIST_DIR": str(files)})

    def truncated_plain(files: Path) -> None:
        write_idx(files / "train-images-idx3-ubyte", (60000, 28, 28), 1000)  # 47 MB promised, 1 kB there
        write_idx(files / "train-labels-idx1-ubyte", (60000,), 60000)
        write_idx(files / "t10k-images-idx3-ubyte", (10000, 28, 28), 10000 * 784)
        write_idx(files / "t10k-labels-idx1-ubyte", (10000,), 10000)

    def cut_gzip(files: Path) -> None:
        truncated_plain(files)
        whole = gzip.compress((files / "train-labels-idx1-ubyte").read_bytes())
        (files / "train-labels-idx1-ubyte").unlink()
        (files / "train-labels-idx1-ubyte.gz").write_bytes(whole[: len(whole) // 2])  # a download cut short
        write_idx(files / "train-images-idx3-ubyte", (60000, 28, 28), 60000 * 784)

    def labels_missing_one(files: Path) -> None:
        truncated_plain(files)
        write_idx(files / "train-images-idx3-ubyte", (60000, 28, 28), 60000 * 784)
        write_idx(files / "train-labels-idx1-ubyte", (59999,), 59999)

    def label_out_of_range(files: Path) -> None:
        labels_missing_one(files)
        write_idx(files / "train-labels-idx1-ubyte", (60000,), 60000)
        path = files / "train-labels-idx1-ubyte"
        data = bytearray(path.read_bytes())
        data[-1] = 200  # the last image's class: 200 of 10
        path.write_bytes(bytes(data))

    fashion_case("truncated_idx", truncated_plain)
    fashion_case("cut_gzip", cut_gzip)
    fashion_case("labels_missing_one", labels_missing_one)
    fashion_case("label_out_of_range", label_out_of_range)

    folder = tmp_path_factory.mktemp("missing_cifar")
    params = tiny_params()
    params["data"] = {"name": "cifar10", "root": str(folder / "nowhere"), "image_size": 8}
    write_params(folder, params)
    jobs["missing_dataset"] = (PREPARE, folder, env)
    warm_up()
    return {case: (result, jobs[case][1]) for case, result in run_all(jobs, runner=stage_forked).items()}


@pytest.mark.parametrize("case, expected", [
    ("truncated_idx", ["train-images-idx3-ubyte", "truncated"]),
    ("cut_gzip", ["train-labels-idx1-ubyte.gz", "truncated"]),
    ("missing_dataset", ["data.root", "nowhere", "does not exist"]),
    ("labels_missing_one", ["train-labels-idx1-ubyte", "59999 labels", "expected 60000"]),
    ("label_out_of_range", ["train-labels-idx1-ubyte", "label 200", "10 classes"]),
])
def test_missing_or_truncated_dataset_is_refused_naming_the_file(dataset_results, case, expected):
    result, folder = dataset_results[case]
    assert_one_line_refusal(result, *expected)
    assert not (folder / "outputs").exists() and not (folder / "mlflow.db").exists()


# Teachers under several names share the tiny `simclr` settings; each scenario damages its own files.
TEACHER_COPIES = ("wrong_widths", "wrong_dim", "random_bytes", "pickled_code", "torn_model", "model_floats",
                  "ckpt_bytes", "ckpt_torn", "ckpt_floats")
DAMAGED_CHECKPOINTS = ("ckpt_bytes", "ckpt_torn", "ckpt_floats")


class CodeRunningPickle:
    """Unpickling this would create `marker` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def checkpoint_results(tmp_path_factory):
    """Real teacher runs, then each scenario's file damaged, then every stage that reads it run once."""
    from pipeline.models.embedding_model import ModelSpec, build_model, save_model

    root = tmp_path_factory.mktemp("checkpoints")
    params = tiny_params()
    params["teachers"].update({name: copy.deepcopy(params["teachers"]["simclr"]) for name in TEACHER_COPIES})
    env = make_repo(root, params, with_dvc=False)
    warm_up()
    trained = run_all({name: (["stages.teacher", name], root, env)
                       for name in ("simclr", "model_floats", *DAMAGED_CHECKPOINTS)}, runner=stage_forked)
    trained["classifier"] = stage_forked(["stages.classify", "teacher", "--teacher", "wide"], root, env)
    assert all(r.returncode == 0 for r in trained.values()), {k: r.stderr[-2000:] for k, r in trained.items()}

    teachers = root / "outputs" / "teachers"
    real = (teachers / "simclr" / "model.pt").read_bytes()

    def teacher_file(name: str) -> Path:
        (teachers / name).mkdir(parents=True, exist_ok=True)
        return teachers / name / "model.pt"

    def save_mismatched_teachers() -> None:
        # The SSL teacher of the tiny profile has no embedding head (embedding_dim None).
        for name, widths, dim in (("wrong_widths", [4, 8], None), ("wrong_dim", [8, 16], 32)):
            spec = ModelSpec("small_resnet", in_channels=1, embedding_dim=dim, projection="simclr",
                             projection_dim=16, backbone_kwargs={"widths": widths})
            save_model(build_model(spec), spec, teacher_file(name))

    in_fork(save_mismatched_teachers)
    teacher_file("random_bytes").write_bytes(os.urandom(len(real)))
    with open(teacher_file("pickled_code"), "wb") as handle:
        pickle.dump({"spec": CodeRunningPickle(root / "UNPICKLED"), "state_dict": {}}, handle)
    teacher_file("torn_model").write_bytes(real[: len(real) // 2])
    assert overwrite_tensor_data(teachers / "model_floats" / "model.pt") > 0  # still parses: torch.load takes it
    assert overwrite_tensor_data(root / "outputs" / "classification" / "teachers" / "wide" / "model.pt") > 0
    for name, damage in (("ckpt_bytes", lambda p: p.write_bytes(os.urandom(p.stat().st_size))),
                         ("ckpt_torn", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
                         ("ckpt_floats", overwrite_tensor_data)):
        damage(teachers / name / "checkpoints" / "last.pt")
        for finished in ("model.pt", "metrics.json"):  # so a re-created file would show
            (teachers / name / finished).unlink()
        (root / "outputs" / "eval" / f"teacher-{name}" / "metrics.json").unlink()

    def transfer(teacher: str) -> list[str]:
        return ["stages.transfer", "--teacher", teacher, "--student", "small", "--loss", "relaxed", "--seed", "0"]

    jobs = {name: (transfer(name), root, env)
            for name in ("wrong_widths", "wrong_dim", "random_bytes", "pickled_code", "torn_model", "model_floats")}
    jobs.update({name: (["stages.teacher", name], root, env) for name in DAMAGED_CHECKPOINTS})
    jobs["classifier_floats"] = (["stages.classify", "student", "--teacher", "wide", "--student", "small", "--method",
                                  "kd", "--seed", "0"], root, env)
    jobs["control"] = (transfer("simclr"), root, env)  # the undamaged teacher, same settings
    return root, run_all(jobs, runner=stage_forked)


@pytest.mark.parametrize("case, expected", [
    ("wrong_widths", ["outputs/teachers/wrong_widths/model.pt", "[4, 8]", "[8, 16]"]),
    ("wrong_dim", ["outputs/teachers/wrong_dim/model.pt", "32", "16"]),
    ("random_bytes", ["outputs/teachers/random_bytes/model.pt", "cannot be loaded"]),
    ("pickled_code", ["outputs/teachers/pickled_code/model.pt", "cannot be loaded"]),
    ("torn_model", ["outputs/teachers/torn_model/model.pt", "cannot be loaded"]),
    ("model_floats", ["outputs/teachers/model_floats/model.pt", "is damaged", "digest"]),
])
def test_a_damaged_or_mismatched_teacher_is_refused_naming_the_file(checkpoint_results, case, expected):
    """A teacher file that does not load, or loads with other content than was written (bytes of its tensor
    data overwritten with plausible floats), is refused before its student trains."""
    root, results = checkpoint_results
    assert_one_line_refusal(results[case], *expected)
    students = root / "outputs" / "students" / f"{case}-small-relaxed-seed0"
    assert not (students / "model.pt").exists() and not (students / "metrics.json").exists()
    assert sorted(r.info.status for r in stage_runs(root, f"transfer@{case}-small-relaxed-0")) == ["FAILED"]


@pytest.mark.parametrize("case, reason", [("ckpt_bytes", "cannot be loaded"), ("ckpt_torn", "cannot be loaded"),
                                          ("ckpt_floats", "is damaged")])
def test_a_damaged_checkpoint_is_set_aside_named_and_the_stage_trains_from_step_zero(checkpoint_results, case, reason):
    """Random bytes, half a file, or plausible floats over its tensor data: the checkpoint is refused in one
    warning line naming it, renamed beside it (never deleted), and the stage trains from step 0 (there is
    no sound previous checkpoint: the tiny teacher saved once) to a finished model."""
    root, results = checkpoint_results
    result = results[case]
    assert result.returncode == 0, result.stderr[-3000:]
    named = [line for line in result.stderr.splitlines() if f"outputs/teachers/{case}/checkpoints/last.pt" in line]
    assert len(named) == 1 and reason in named[0] and "set aside" in named[0] and "from step 0" in named[0], result.stderr
    assert "weights_only" not in result.stderr and "Traceback" not in result.stderr
    checkpoints = root / "outputs" / "teachers" / case / "checkpoints"
    assert len(list(checkpoints.glob("last.pt.damaged-*"))) == 1
    assert read_json(root / "outputs" / "teachers" / case / "metrics.json")["resumed_from_step"] == 0
    assert sorted(r.info.status for r in stage_runs(root, f"teacher@{case}")) == ["FINISHED", "FINISHED"]


def test_a_damaged_classifier_teacher_is_refused_before_its_student_trains(checkpoint_results):
    root, results = checkpoint_results
    assert_one_line_refusal(results["classifier_floats"], "outputs/classification/teachers/wide/model.pt", "is damaged")
    assert not (root / "outputs" / "classification" / "wide-small-kd-seed0" / "model.pt").exists()


def test_a_checkpoint_carrying_code_is_never_unpickled(checkpoint_results):
    root, results = checkpoint_results
    assert results["pickled_code"].returncode == 2
    assert not (root / "UNPICKLED").exists()


def test_the_undamaged_teacher_transfers_in_the_same_repository(checkpoint_results):
    """Control: the same settings work with an intact teacher, so the refusals above are about the damage."""
    root, results = checkpoint_results
    assert results["control"].returncode == 0, results["control"].stderr[-2000:]
    assert read_json(root / "outputs/students/simclr-small-relaxed-seed0/metrics.json")["steps"] == 2
