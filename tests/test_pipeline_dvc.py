"""The real `dvc repro` on a tiny profile (digits, two steps per model) in a temporary git repository.

Checks what users rely on: the chain completes; metrics files, the report and the MLflow runs agree;
a second repro runs nothing; a parameter change re-runs only its branch; `dvc exp run -S` shows up in
`dvc exp show` and in MLflow with the matching param and `dvc.exp_name`. The stages track to a real
`mlflow server` on 127.0.0.1 (SQLite behind it, artifacts proxied), as a lab's shared server would be,
and the comparison views are checked through it: runs found by their tags, the report on the parent
run, `dvc plots show` and the headline `dvc exp show` command of docs/pipeline.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from faults_support import make_repo, tiny_params
from team_support import local_mlflow_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def stage_names(root: Path, env: dict) -> set[str]:
    out = run([str(BIN / "dvc"), "stage", "list", "--name-only"], root, env).stdout
    return set(out.split())


def changed_stages(root: Path, env: dict) -> set[str]:
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], root, env).stdout or "{}")
    return {name.split(":")[-1] for name in status}


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """The tiny `dvc repro`, tracked by a real `mlflow server` over the repository's mlflow.db (so
    `mlflow_runs` also reads it directly); the server lives as long as the module's tests."""
    root = tmp_path_factory.mktemp("pipeline")
    env = make_repo(root, tiny_params())
    with local_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", tmp_path_factory.mktemp("mlflow-server")) as server:
        env["MLFLOW_TRACKING_URI"] = server.uri
        first = run([str(BIN / "dvc"), "repro"], root, env)
        yield root, env, first


def mlflow_runs(root: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipeline-test")
    assert experiment is not None, "the pipeline wrote no MLflow experiment"
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def test_repro_writes_metrics_report_and_mlflow_runs_that_agree(repro):
    root, env, _ = repro
    stages = stage_names(root, env)
    assert "teacher@simclr" in stages and "transfer@simclr-small-relaxed-0" in stages
    assert "metric_transfer@proxy_anchor-small-relaxed-0" in stages and "report" in stages

    evaluation = json.loads((root / "outputs/eval/simclr-small-relaxed-seed0/metrics.json").read_text())
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "nmi", "probe_top1", "knn_top1", "parameters"):
        assert key in evaluation, key
    assert 0.0 <= evaluation["recall@1"] <= evaluation["recall@8"] <= 1.0

    report = (root / "reports/results.md").read_text()
    assert f"{100 * evaluation['recall@1']:.2f}" in report
    assert "proxy_anchor teacher" in report and "raw pixels" in report

    client, runs = mlflow_runs(root)
    parents = [r for r in runs if r.data.tags.get("pipeline.parent") == "true"]
    children = [r for r in runs if "dvc.stage" in r.data.tags]
    assert len(parents) == 1, "one dvc repro must make exactly one parent run"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # Every stage but `code` (it writes code manifests, trains and scores nothing) is an MLflow run.
    assert {r.data.tags["dvc.stage"] for r in children} == stages - {"code"}
    assert all(r.info.status == "FINISHED" for r in runs)

    # One run per model: the student's training parameters and its evaluation metrics together.
    transfer = next(r for r in children if r.data.tags["dvc.stage"] == "transfer@simclr-small-relaxed-0")
    assert transfer.data.metrics["recall_at_1"] == pytest.approx(evaluation["recall@1"])
    assert transfer.data.metrics["map_at_r"] == pytest.approx(evaluation["map@r"])
    assert transfer.data.params["losses.relaxed.params.sigma"] == "1.0"
    declared = yaml.safe_load((root / "params.yaml").read_text())["evaluation"]
    assert transfer.data.params["evaluation.knn.k"] == str(declared["knn"]["k"])
    assert {k: transfer.data.tags[k] for k in ("setting", "teacher", "student", "method", "seed")} == {
        "setting": "self_supervised", "teacher": "simclr", "student": "small", "method": "relaxed", "seed": "0"}
    assert transfer.data.params["transfer.self_supervised.train.max_steps"] == "2"
    assert transfer.data.params["student_seed"] == "0" and transfer.data.params["seed"] == "0"
    history = client.get_metric_history(transfer.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]


STUDENTS = {  # the tiny grids' students: (tags), the loss param their run must hold, and their metrics file
    "simclr-small-relaxed": ({"setting": "self_supervised", "teacher": "simclr", "method": "relaxed"},
                             "losses.relaxed.params.sigma", "outputs/eval/simclr-small-relaxed-seed0/metrics.json"),
    "simclr-small-own_objective": ({"setting": "self_supervised", "teacher": "simclr", "method": "own_objective"},
                                   "losses.own_objective.name", "outputs/eval/simclr-small-own_objective-seed0/metrics.json"),
    "proxy_anchor-small-relaxed": ({"setting": "metric_learning", "teacher": "proxy_anchor", "method": "relaxed"},
                                   "losses.relaxed.params.delta", "outputs/eval/proxy_anchor-small-relaxed-seed0/metrics.json"),
    "wide-small-kd": ({"setting": "classification", "teacher": "wide", "method": "kd"},
                      "classification.methods.kd.params.temperature", "outputs/classification/wide-small-kd-seed0/metrics.json"),
}


def server_client(env: dict):
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    return client, client.get_experiment_by_name("pipeline-test")


def test_the_server_finds_each_student_by_its_tags_with_its_loss_params_and_its_scores(repro):
    """What the UI's search box and Group-by run on: `tags.method = 'relaxed'` and friends, answered by
    the tracking server. Each student is exactly one training run holding its training params and its
    metrics, and (an embedding student) one export run, `tags.kind = 'export'`, holding what it costs
    deployed and naming its registered model."""
    root, env, _ = repro
    client, experiment = server_client(env)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    relaxed = client.search_runs([experiment.experiment_id], filter_string="tags.method = 'relaxed'")
    assert {r.data.tags["dvc.stage"] for r in relaxed} == {
        "transfer@simclr-small-relaxed-0", "metric_transfer@proxy_anchor-small-relaxed-0",
        "transfer_export@simclr-small-relaxed-0", "metric_transfer_export@proxy_anchor-small-relaxed-0"}
    for model, (tags, loss_param, metrics_file) in STUDENTS.items():
        query = " and ".join(f"tags.{key} = '{value}'" for key, value in {**tags, "student": "small"}.items())
        every = client.search_runs([experiment.experiment_id], filter_string=query)
        found = [r for r in every if r.data.tags.get("kind") != "export"]
        exported = [r for r in every if r.data.tags.get("kind") == "export"]
        assert len(found) == 1, f"{query}: {[r.data.tags.get('dvc.stage') for r in every]}"
        if tags["setting"] != "classification":
            [export] = exported
            deployed = json.loads((root / f"outputs/deploy/{model}-seed0/deploy.json").read_text())
            assert export.data.metrics["int8.map_at_r"] == pytest.approx(deployed["int8.map@r"])
            name = export.data.tags["registered_model"]
            assert client.get_model_version(name, export.data.tags["registered_version"]).run_id == export.info.run_id
        scored = json.loads((root / metrics_file).read_text())
        student = found[0].data
        assert student.tags["seed"] == "0"
        assert loss_param in student.params, (model, sorted(student.params)[:20])
        key = "top1" if tags["setting"] == "classification" else "map_at_r"
        assert student.metrics[key] == pytest.approx(scored[key.replace("_at_", "@")]), model
    everyone = client.search_runs([experiment.experiment_id], filter_string="tags.`dvc.stage` != ''")
    untagged = [r.data.tags["dvc.stage"] for r in everyone
                if not {"setting", "teacher", "student", "method", "seed"} <= set(r.data.tags)]
    assert not untagged, f"runs without the comparison tags: {untagged}"


def test_the_parent_run_carries_the_report(repro):
    root, env, _ = repro
    client, experiment = server_client(env)
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.parent` = 'true'")
    listed = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "headline.json", "figures"} <= listed, listed
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in (root / "reports/figures").glob("*.png")} and figures
    downloaded = Path(client.download_artifacts(parent.info.run_id, "results.md", str(root.parent)))
    assert downloaded.read_text() == (root / "reports/results.md").read_text()
    headline = json.loads((root / "reports/headline.json").read_text())["headline"]
    assert parent.data.metrics["headline.simclr-small-relaxed-seed0.map_at_r"] == pytest.approx(
        headline["simclr-small-relaxed-seed0"]["map@r"])
    assert parent.data.tags["method"] == "pipeline"


def test_dvc_plots_show_draws_every_method_offline(repro, tmp_path):
    root, env, _ = repro
    shown = run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")], root, env)
    said = shown.stdout + shown.stderr
    assert "failed to load" not in said.lower() and "ERROR" not in said and "WARNING" not in said, said
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "<script src=" not in page and "vegaEmbed" in page  # the inlined libraries, no CDN
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root, env).stdout)
    assert not shown.get("errors"), shown.get("errors")
    specs = shown["data"]
    for plot in ("recall_at_k", "train_loss", "classifier_loss"):
        assert plot in specs, sorted(specs)
    def models_in(plot: str) -> set[str]:
        return {row["model"] for rendered in specs[plot] for row in rendered["content"]["data"]["values"]}
    students = {"simclr-small-relaxed-seed0", "simclr-small-own_objective-seed0", "proxy_anchor-small-relaxed-seed0",
                "simclr-small-stml-seed0"}
    teachers = {"teacher-simclr", "teacher-proxy_anchor", "teacher-simclr-transferred",
                "teacher-proxy_anchor-transferred"}
    assert models_in("recall_at_k") == {"pixels-simclr", "pixels-proxy_anchor"} | teachers | students
    assert models_in("train_loss") == students
    assert models_in("classifier_loss") == {"wide-small-kd-seed0"}
    for method in ("relaxed", "own_objective", "kd"):
        assert method in page


HEADLINE_COMMAND = "dvc exp show --no-pager --md --drop '.*' --keep 'Experiment$' --keep 'headline\\.'"


def test_the_documented_exp_show_command_prints_the_headline_only(repro):
    root, env, _ = repro
    assert HEADLINE_COMMAND in (ROOT / "docs" / "pipeline.md").read_text()  # "Looking at the results"
    printed = subprocess.run(HEADLINE_COMMAND.replace("dvc ", f"{BIN / 'dvc'} ", 1), shell=True, cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    header = printed.stdout.splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    headline = json.loads((root / "reports/headline.json").read_text())["headline"]
    expected = {f"headline.{model}.{key}" for model, keys in headline.items() for key in keys}
    assert columns[0] == "Experiment" and set(columns[1:]) == expected, columns
    assert "headline.simclr-small-relaxed-seed0.map@r" in expected


def test_second_repro_runs_nothing(repro):
    root, env, _ = repro
    before = len(mlflow_runs(root)[1])
    second = run([str(BIN / "dvc"), "repro"], root, env)
    assert "Running stage" not in second.stdout
    assert len(mlflow_runs(root)[1]) == before


def test_changing_one_loss_parameter_invalidates_only_its_branch(repro):
    root, env, _ = repro
    params_path = root / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["losses"]["relaxed"]["params"]["sigma"] = 0.5
    params_path.write_text(yaml.safe_dump(params))
    try:
        changed = changed_stages(root, env)
    finally:
        params_path.write_text(original)
    # prepare validates the whole file (its params dep is params.yaml), so it re-checks every change first;
    assert changed == {"prepare", "transfer@simclr-small-relaxed-0", "metric_transfer@proxy_anchor-small-relaxed-0",
                       "report"}  # the report labels rows by loss name (params: losses)


# Which stage families run each file, from the design (not from the import reading under test): the
# report alone draws the report, every stage that scores a model runs kNN, the classifiers alone their recipes.
EDITS = {
    "pipeline/report.py": {"report"},
    "pipeline/eval/knn.py": {"teacher", "transfer", "metric_transfer", "self_taught", "evaluate_pixels"},
    "pipeline/train/classifier_recipes.py": {"classifier_teacher", "classifier_student"},
}


@pytest.mark.parametrize("edited", list(EDITS))
def test_a_code_change_invalidates_exactly_the_stages_that_import_it(repro, edited):
    """DVC's promise: after editing a file, the `code` stage rewrites the manifests of the commands that
    import it, and `dvc status` then lists exactly the stages that run it, no others."""
    root, env, _ = repro
    expected = {name for name in stage_names(root, env) if name.split("@")[0] in EDITS[edited]}
    assert expected, f"no stage of {EDITS[edited]} in the pipeline"
    path = root / edited
    original = path.read_text()
    path.write_text(original + "\n_EDITED = True\n")
    try:
        assert changed_stages(root, env) == {"code"}  # before the manifests are rewritten
        run([str(BIN / "dvc"), "repro", "code"], root, env)
        changed = changed_stages(root, env)
    finally:
        path.write_text(original)
        run([str(BIN / "dvc"), "repro", "code"], root, env)
    assert changed == expected
    assert not changed_stages(root, env)


@pytest.mark.slow  # minutes on 2 cores; run with -m slow (passed in the full run of this commit)
def test_exp_run_is_visible_in_dvc_and_mlflow(repro):
    root, env, _ = repro
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline results"], root, env)
    run([str(BIN / "dvc"), "exp", "run", "-n", "sigma-half", "-S", "losses.relaxed.params.sigma=0.5"], root, env)

    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], root, env).stdout)
    names = json.dumps(shown)
    assert "sigma-half" in names

    _, runs = mlflow_runs(root)
    tagged = [r for r in runs if r.data.tags.get("dvc.exp_name") == "sigma-half"]
    stages = {r.data.tags.get("dvc.stage") for r in tagged}
    assert "transfer@simclr-small-relaxed-0" in stages
    assert "transfer@simclr-small-own_objective-0" not in stages, "unchanged branches must not re-run"
    transfer = next(r for r in tagged if r.data.tags.get("dvc.stage") == "transfer@simclr-small-relaxed-0")
    assert transfer.data.params["losses.relaxed.params.sigma"] == "0.5"


def two_seed_params() -> dict:
    """The tiny profile cut to one SSL teacher and one student under two losses, over seeds 0 and 1."""
    params = tiny_params()
    params["seeds"] = [0, 1]
    params["teachers"] = {"simclr": params["teachers"]["simclr"]}
    params["transfer"]["metric_learning"]["grid"] = {"teacher": [], "student": [], "loss": []}
    params["classification"].update(teachers={}, grid={"teacher": [], "student": [], "method": []})
    params["evaluation"]["tsne_points"] = 0
    return params


@pytest.mark.slow  # 91 s on 2 shared cores (8 stages); run with -m slow
def test_two_seeds_give_a_stage_a_model_and_a_run_per_replica_and_a_report_over_them(tmp_path):
    """Issue 14: each seed of `seeds` is its own stage, model, metrics file and MLflow run (tagged with its
    seed), and the report's means are the means of the per-seed metrics files."""
    import statistics

    root = tmp_path / "repo"
    root.mkdir()
    env = make_repo(root, two_seed_params())
    run([str(BIN / "dvc"), "repro"], root, env)
    replicas = {f"transfer@simclr-small-{loss}-{seed}": (loss, seed)
                for loss in ("relaxed", "own_objective") for seed in (0, 1)}
    assert set(replicas) <= stage_names(root, env)
    _, runs = mlflow_runs(root)
    by_stage = {r.data.tags.get("dvc.stage"): r for r in runs}
    assert len([r for r in runs if r.data.tags.get("dvc.stage", "").startswith("transfer@")]) == 4
    evaluation = {}
    for stage, (loss, seed) in replicas.items():
        model = f"simclr-small-{loss}-seed{seed}"
        evaluation[loss, seed] = json.loads((root / "outputs/eval" / model / "metrics.json").read_text())
        tracked = by_stage[stage].data
        assert (tracked.tags["seed"], tracked.tags["method"], tracked.params["student_seed"]) == (str(seed), loss, str(seed))
        assert tracked.metrics["map_at_r"] == pytest.approx(evaluation[loss, seed]["map@r"])
    for loss in ("relaxed", "own_objective"):  # the seed moves the student (weights, views, batches)
        models = [(root / f"outputs/students/simclr-small-{loss}-seed{seed}/model.pt").read_bytes() for seed in (0, 1)]
        assert models[0] != models[1], loss
    summary = json.loads((root / "reports/summary.json").read_text())
    for loss in ("relaxed", "own_objective"):
        for metric in ("map@r", "recall@1"):
            key = f"self_supervised.simclr-small-{loss}.{metric}"
            values = [evaluation[loss, seed][metric] for seed in (0, 1)]
            assert summary[f"{key}.mean"] == pytest.approx(statistics.fmean(values), rel=1e-12), key
            assert summary[f"{key}.n"] == 2
    differences = [evaluation["relaxed", s]["map@r"] - evaluation["own_objective", s]["map@r"] for s in (0, 1)]
    paired = "self_supervised.simclr-small.relaxed_vs_own_objective.map@r"
    assert summary[f"{paired}.diff"] == pytest.approx(statistics.fmean(differences), rel=1e-9)
    report = (root / "reports/results.md").read_text()
    assert "## Self-supervised over seeds: simclr" in report and "(n=2)" in report
    assert (root / "reports/figures/seeds_simclr.png").is_file()
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], root, env).stdout)
    assert f"{paired}.diff" in json.dumps(shown)  # dvc metrics show lists the summary


# What a stage must not import: each costs seconds of start-up it has no use for (benchmarks/stage_overhead.py).
IMPORT_GUARDS = {
    ("stages.report",): {"torch", "kornia", "lightly", "torchvision", "sklearn"},
    ("stages.evaluate", "--teacher", "simclr"): {"kornia", "lightly", "torchvision"},
    ("stages.prepare",): {"kornia", "lightly", "torchvision"},
}


@pytest.mark.parametrize("command", list(IMPORT_GUARDS), ids=lambda c: " ".join(c[:2]))
def test_a_stage_imports_only_what_it_runs(repro, command):
    root, env, _ = repro
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", *command], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "pipeline.config" in imported  # the parse found the stage's imports
    loaded = {name for name in imported if name.split(".")[0] in IMPORT_GUARDS[command]}
    assert not loaded, f"{' '.join(command)} imported {sorted(loaded)[:10]}"


@pytest.mark.slow  # minutes on 2 cores; run with -m slow (passed in the full run of this commit)
def test_a_loss_code_change_retrains_its_students_from_step_zero(repro):
    """Changing one line of the relaxed loss: its students train from step 0 and their models change. The
    teachers and the other students re-run too (their commands reach every loss module through the
    registry, so DVC lists the file as their dep) but resume their finished runs, because the code they
    ran is unchanged, and write back the same models. Last in this module: it leaves the repository at
    the edited code."""
    root, env, _ = repro
    student = root / "outputs/students/simclr-small-relaxed-seed0"
    teacher = root / "outputs/teachers/simclr"
    control = root / "outputs/students/simclr-small-own_objective-seed0"
    before = {path: (path / "model.pt").read_bytes() for path in (student, teacher, control)}
    scores_before = {name: json.loads((root / "outputs/eval" / name / "metrics.json").read_text())
                     for name in ("teacher-simclr", "simclr-small-own_objective-seed0")}
    loss = root / "pipeline/losses/relaxed_contrastive.py"
    source = loss.read_text()
    assert "return weighted_contrastive(distances, weights, self.params.delta)" in source
    loss.write_text(source.replace("return weighted_contrastive(distances, weights, self.params.delta)",
                                   "return weighted_contrastive(distances, weights.square(), self.params.delta)"))
    out = run([str(BIN / "dvc"), "repro"], root, env).stdout
    assert "Running stage 'transfer@simclr-small-relaxed-0'" in out
    retrained = json.loads((student / "metrics.json").read_text())
    assert retrained["resumed_from_step"] == 0 and retrained["steps"] == 2
    assert (student / "model.pt").read_bytes() != before[student]
    for unchanged in (teacher, control):
        resumed = json.loads((unchanged / "metrics.json").read_text())
        assert resumed["resumed_from_step"] == resumed["steps"] == 2, unchanged
        assert (unchanged / "model.pt").read_bytes() == before[unchanged], unchanged
    # Each training stage scores its model again (the price of one process per model): same model, same numbers.
    for unchanged in ("teacher-simclr", "simclr-small-own_objective-seed0"):
        rescored = json.loads((root / "outputs/eval" / unchanged / "metrics.json").read_text())
        assert {k: v for k, v in rescored.items() if k != "ms_per_image"} == {
            k: v for k, v in scores_before[unchanged].items() if k != "ms_per_image"}, unchanged


# Each setting of the pipeline, the grid key that empties it, and what the report shows when it ran.
SETTING_GRIDS = {
    "self_supervised": (("transfer", "self_supervised", "grid"), "## Self-supervised over seeds: simclr"),
    "metric_learning": (("transfer", "metric_learning", "grid"), "## Table 1 over seeds: proxy_anchor"),
    "self_taught": (("transfer", "self_taught", "grid"), "## Self-taught metric learning over seeds: simclr_start"),
    "classification": (("classification", "grid"), "## Classification over seeds: wide"),
}


@pytest.mark.slow  # about a minute per setting on 2 cores (7 stages each); run with -m slow
@pytest.mark.parametrize("removed", list(SETTING_GRIDS))
def test_a_params_file_without_one_setting_reproduces_to_a_report_of_what_ran(tmp_path, removed):
    """Issue 26: a user who drops one setting (its grid emptied) gets a report of the others, which says
    once that the dropped one is not in this run, and never a failed `dvc repro` after the training."""
    params = tiny_params()
    params["transfer"]["self_supervised"]["grid"]["loss"] = ["relaxed"]  # one student per setting
    params["teachers"]["simclr_start"] = params["teachers"]["simclr"]  # the self-taught grid's own teacher
    params["transfer"]["self_taught"]["grid"]["teacher"] = ["simclr_start"]
    params["evaluation"]["tsne_points"] = 0
    path, _ = SETTING_GRIDS[removed]
    section = params
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = {field: [] for field in section[path[-1]]}
    if removed == "self_supervised":
        del params["teachers"]["simclr"]
    elif removed == "self_taught":
        del params["teachers"]["simclr_start"]
    elif removed == "metric_learning":
        del params["teachers"]["proxy_anchor"]
    else:
        params["classification"]["teachers"] = {}
    root = tmp_path / "repo"
    root.mkdir()
    env = make_repo(root, params)
    run([str(BIN / "dvc"), "repro"], root, env)
    report = (root / "reports/results.md").read_text()
    for setting, (_, heading) in SETTING_GRIDS.items():
        assert (heading in report) == (setting != removed), (setting, heading)
    assert report.count("Not in this run:") == 1
    absent = report.split("Not in this run:")[1].split("\n")[0]
    assert f"`{'.'.join(path)}." in absent, absent
    summary = json.loads((root / "reports/summary.json").read_text())
    assert {key.split(".")[0] for key in summary} == set(SETTING_GRIDS) - {removed}
    assert not changed_stages(root, env)  # the repro is complete: nothing left to run
