"""The hyperparameter search (pipeline/search): chosen on a validation split that never touches test, every
loss given the same budget and learning-rate range, the chosen values applied through one params entry, and
workers sharing one Optuna study without losing or repeating a trial."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "assets" / "tiny_params.yaml"


def search_params(**search) -> dict:
    """tiny_params with a search: both transfer grids, a few steps, scores every two steps."""
    raw = yaml.safe_load(TINY.read_text())
    for section in raw["transfer"].values():
        section["train"]["max_steps"] = 4
    raw["losses"]["rkd"] = {"name": "rkd", "params": {"angle_max_rows": 8}}
    raw["transfer"]["metric_learning"]["grid"]["loss"] = ["relaxed", "rkd"]
    # P x K batches of 4 classes: the class-disjoint fold leaves 3, so the search's recipe draws 3 x 16.
    raw["transfer"]["metric_learning"]["sampler"] = {"classes_per_batch": 4, "samples_per_class": 16}
    raw["validation"] = {"classes": [3, 4], "fraction": 0.2, "max_images": 300}
    raw["search"] = {"trials": 3, "report_every_steps": 2, "startup_trials": 1, **search}
    return raw


def validated(raw: dict):
    from pipeline.config import validate_params

    return validate_params(copy.deepcopy(raw))


# --- what each loss draws ------------------------------------------------------------------------------------

def test_every_loss_draws_its_declared_dimensions_and_the_same_learning_rate_range():
    from pipeline.search.space import dimensions

    raw = yaml.safe_load((ROOT / "tests/assets/every_recipe_params.yaml").read_text())
    params = validated(raw)
    lr = 0.001
    drawn = {key: {d.name: (d.range.low, d.range.high) for d in dimensions(entry, lr, params.search)}
             for key, entry in params.losses.items()}
    assert set(drawn["relaxed"]) == {"params.sigma", "params.delta", "lr"}
    assert set(drawn["rkd"]) == {"params.distance_weight", "params.angle_weight", "lr"}
    assert set(drawn["darkrank"]) == {"params.alpha", "params.beta", "params.triplet_weight", "lr"}
    # DarkRank's triplet term is off in the self-supervised entry (triplet_weight 0): it stays off.
    assert set(drawn["darkrank_list"]) == {"params.alpha", "params.beta", "lr"}
    # FitNet, Attention and CRD train with the Proxy-Anchor term: its weight is theirs to tune...
    assert set(drawn["fitnet"]) == {"proxy_anchor_weight", "lr"}
    assert set(drawn["crd"]) == {"params.temperature", "proxy_anchor_weight", "lr"}
    # ... except where the entry switches it off (the self-supervised setting has no labels).
    assert set(drawn["fitnet_ssl"]) == {"lr"}
    assert set(drawn["own_objective"]) == {"lr"}
    # A classification method: its loss's dimensions and its transfer weight around the declared one.
    from pipeline.config import DistillationMethodConfig

    kd = DistillationMethodConfig(loss="hinton_kd", params={"temperature": 4}, transfer_weight=0.9)
    assert {d.name: (d.range.low, d.range.high) for d in dimensions(kd, lr, params.search)} == {
        "params.temperature": (1.0, 16.0), "transfer_weight": (0.09, 9.0), "lr": (lr / 4, lr * 4)}
    assert [d.name for d in dimensions(DistillationMethodConfig(), lr, params.search)] == ["lr"]
    # The same learning-rate range for every method: [lr / 4, lr * 4] (search.lr_factor's default).
    assert {d["lr"] for d in drawn.values()} == {(lr / 4, lr * 4)}
    # Each declared range holds the authors' default (the paper's values are trial 0 of every study).
    from pipeline.losses import loss_class

    for key, entry in params.losses.items():
        if entry.name == "teacher_objective":
            continue
        defaults = loss_class(entry.name).Params()
        for name, span in loss_class(entry.name).search_space.items():
            assert span.low <= getattr(defaults, name) <= span.high, (key, name)


def test_chosen_values_reach_training_through_the_losses_entry_and_an_untuned_entry_dumps_as_written():
    from pipeline.config import ConfigError
    from pipeline.contracts import check_contracts, effective_proxy_anchor_weight
    from pipeline.setting import Setting

    raw = search_params()
    untuned = validated(raw)
    assert "tuned" not in untuned.model_dump(mode="json")["losses"]["relaxed"]  # fingerprints unchanged
    raw["losses"]["relaxed"]["tuned"] = {"metric_learning": {"params": {"sigma": 0.25}, "lr": 0.0005}}
    raw["losses"]["crd"] = {"name": "crd", "params": {"num_negatives": 64},
                            "tuned": {"metric_learning": {"params": {"temperature": 0.1}, "proxy_anchor_weight": 3.0}}}
    params = validated(raw)
    relaxed = params.losses["relaxed"]
    assert relaxed.in_setting(Setting.METRIC_LEARNING).params == {"sigma": 0.25, "delta": 1.0}
    assert relaxed.in_setting(Setting.SELF_SUPERVISED).params == {"sigma": 1.0, "delta": 1.0}
    section = params.transfer.metric_learning.train
    assert relaxed.train_in(Setting.METRIC_LEARNING, section).optimizer.lr == 0.0005
    assert relaxed.train_in(Setting.SELF_SUPERVISED, params.transfer.self_supervised.train).optimizer.lr == 0.001
    assert effective_proxy_anchor_weight(params.losses["crd"].in_setting(Setting.METRIC_LEARNING)) == 3.0
    assert effective_proxy_anchor_weight(params.losses["crd"].in_setting(Setting.SELF_SUPERVISED)) == 1.0
    # A tuned value is held to the loss's contract like a declared one, in one line naming its key.
    raw["losses"]["relaxed"]["tuned"]["metric_learning"]["params"] = {"sigma": -1.0}
    with pytest.raises(ConfigError, match=r"losses\.relaxed\.tuned\.metric_learning\.params\.sigma: Input should be "
                                          r"greater than 0"):
        check_contracts(validated(raw))


def test_a_tuned_value_builds_the_loss_the_student_trains_with():
    """Through the recipe the stages call: the relaxed student's loss carries the tuned sigma."""
    from pipeline.data.loading import load_images
    from pipeline.replica import Replica
    from pipeline.setting import Setting
    from pipeline.train.recipes import teacher_objective, transfer_objective

    raw = search_params()
    raw["losses"]["relaxed"]["tuned"] = {"metric_learning": {"params": {"sigma": 0.25}}}
    params = validated(raw)
    images = load_images(params.data, "train", (0, 1, 2, 3, 4))
    teacher, _ = teacher_objective(params, "proxy_anchor", images)
    objective, _ = transfer_objective(params, Replica(Setting.METRIC_LEARNING, "proxy_anchor", "small", "relaxed", 0),
                                      teacher.model.eval(), images)
    assert objective.criterion.sigma == 0.25


# --- the validation split ------------------------------------------------------------------------------------

def test_the_metric_split_is_class_disjoint_and_the_self_supervised_split_holds_images_out():
    import torch

    from pipeline.data.loading import load_images
    from pipeline.search.split import validation_split
    from pipeline.setting import Setting

    params = validated(search_params())
    metric = validation_split(params, Setting.METRIC_LEARNING, "proxy_anchor")
    full = load_images(params.data, "train")
    # Fit on classes 0-2, score on 3-4 (relabelled 0..n-1 each): counts match the dataset's per class.
    per_class = torch.bincount(full.labels)
    assert len(metric.fit) == int(per_class[:3].sum()) and metric.fit.labels.unique().tolist() == [0, 1, 2]
    assert len(metric.validation) == min(300, int(per_class[3:5].sum()))
    assert "class-disjoint" in metric.description
    ssl = validation_split(params, Setting.SELF_SUPERVISED, "simclr")
    held = round(0.2 * len(full))
    assert len(ssl.fit) == len(full) - held and len(ssl.validation) == min(300, held)
    # No validation image is a fit image (digits has no exact duplicates among its 1797 images).
    fit_rows = {bytes(row) for row in ssl.fit.images.flatten(1).numpy()}
    assert not any(bytes(row) in fit_rows for row in ssl.validation.images.flatten(1).numpy())
    again = validation_split(params, Setting.SELF_SUPERVISED, "simclr")
    assert torch.equal(again.validation.images, ssl.validation.images)  # seeded


def test_a_validation_fold_is_refused_in_one_line_where_it_cannot_be_class_disjoint():
    from pipeline.config import ConfigError

    raw = search_params()
    raw["validation"]["classes"] = [4, 7]  # 7 is a test class of the Proxy-Anchor teacher
    with pytest.raises(ConfigError, match=r"validation\.classes: \[4, 7\] must be two or more of "
                                          r"teachers\.proxy_anchor\.train_classes"):
        validated(raw)
    raw["search"]["student"] = "tiny"
    raw["validation"]["classes"] = [3, 4]
    with pytest.raises(ConfigError, match=r"search\.student: 'tiny' is not in students"):
        validated(raw)


# --- the whole search, the test split unreadable -------------------------------------------------------------

def test_the_search_chooses_every_value_without_reading_the_test_split(tmp_path, monkeypatch):
    """The test split is replaced by a loader that raises: the search of both settings completes, and the
    overlay it writes composes into params the study can train."""
    from pipeline import data
    from pipeline.data.small_sets import load_digits
    from pipeline.search.__main__ import main

    def no_test_split(split, **kwargs):
        if split == "test":
            raise AssertionError("the search read the test split")
        return load_digits(split, **kwargs)

    monkeypatch.setitem(data.IN_MEMORY, "digits", no_test_split)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(search_params()))
    main([])

    import json

    record = json.loads((tmp_path / "reports/search/default/trials.json").read_text())
    studies = {(s["setting"], s["method"]): s for s in record["studies"]}
    assert set(studies) == {("self_supervised", "relaxed"), ("self_supervised", "own_objective"),
                            ("metric_learning", "relaxed"), ("metric_learning", "rkd"), ("classification", "kd"),
                            ("self_taught", "stml")}
    assert studies[("self_taught", "stml")]["validated_on"].startswith("class-disjoint")  # Table 1's protocol
    assert studies[("classification", "kd")]["score"] == "top1"
    assert studies[("metric_learning", "rkd")]["validated_on"].startswith("class-disjoint")
    assert studies[("metric_learning", "rkd")]["notes"] == ["students draw 3 classes x 16 images per batch (the "
                                                            "study: 4 x 16)"]
    for found in studies.values():
        assert [t["number"] for t in found["trials"]] == [0, 1, 2]  # the same budget for every loss
        assert found["complete"] + found["pruned"] == 3 and found["failed"] == 0
        assert found["chosen"] is not None and found["best"] >= found["declared"]
    assert studies[("metric_learning", "relaxed")]["trials"][0]["values"]["params.sigma"] == 1.0  # trial 0: declared
    overlay = yaml.load((tmp_path / "profiles/default_tuned.yaml").read_text(), Loader=yaml.SafeLoader)
    chosen = studies[("metric_learning", "rkd")]["chosen"]
    assert overlay["losses"]["rkd"]["tuned"]["metric_learning"]["lr"] == chosen["lr"]
    assert overlay["losses"]["rkd"]["tuned"]["metric_learning"]["params"]["angle_weight"] == chosen["params.angle_weight"]
    # The overlay over the searched params validates, with the chosen values where the study reads them.
    from pipeline.contracts import check_contracts
    from pipeline.profiles import compose

    composed = validated(compose("default_tuned", search_params(), root=tmp_path))
    check_contracts(composed)
    assert composed.losses["rkd"].tuned["metric_learning"].lr == chosen["lr"]
    kd = studies[("classification", "kd")]["chosen"]
    assert composed.classification.methods["kd"].tuned["classification"].transfer_weight == kd["transfer_weight"]
    # Every trial is an MLflow run under the search's parent, tagged with its study and number.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipeline-test")
    runs = client.search_runs([experiment.experiment_id], "tags.`search.trial` != ''", max_results=100)
    assert len(runs) == 18  # six studies x three trials
    assert all(r.data.tags.get("mlflow.parentRunId") for r in runs)
    assert {r.data.tags["search.state"] for r in runs} <= {"complete", "pruned"}


def test_a_study_holds_trials_of_one_setting_only():
    """Another validation fold, budget or loss entry is another study; the storage and a t-SNE setting are not."""
    from pipeline.search.study import study_name
    from pipeline.setting import Setting

    raw = search_params()
    name = study_name(validated(raw), Setting.METRIC_LEARNING, "relaxed")
    assert name.startswith("pipeline-test/metric_learning/relaxed/")
    for change in ({"validation": {**raw["validation"], "classes": [2, 4]}},
                   {"search": {**raw["search"], "trials": 5}},
                   {"losses": {**raw["losses"], "relaxed": {"name": "relaxed_contrastive", "params": {"sigma": 2.0}}}}):
        assert study_name(validated({**raw, **change}), Setting.METRIC_LEARNING, "relaxed") != name, change
    for same in ({"search": {**raw["search"], "storage": "postgresql+psycopg://u:p@127.0.0.1:5432/optuna"}},
                 {"evaluation": {**raw["evaluation"], "tsne_points": 0}}):
        assert study_name(validated({**raw, **same}), Setting.METRIC_LEARNING, "relaxed") == name, same


def test_an_unreachable_storage_is_refused_in_one_line_before_anything_trains(tmp_path, monkeypatch, capsys):
    from pipeline.search.__main__ import main

    monkeypatch.chdir(tmp_path)
    raw = search_params(storage="postgresql+psycopg://bob:secret@127.0.0.1:1/optuna")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exited:
        main([])
    message = str(exited.value)
    assert message.startswith("error: search.storage postgresql+psycopg://bob:***@127.0.0.1:1/optuna: cannot open it")
    assert "\n" not in message and "secret" not in message
    assert not (tmp_path / "outputs").exists()


def test_a_trial_numbered_past_the_budget_by_a_race_is_failed_and_never_run(tmp_path, monkeypatch):
    """Two workers both count one free place and both ask: the later number is told FAIL, not run."""
    import optuna

    from pipeline.search.study import OVER_BUDGET, claim, open_study
    from pipeline.setting import Setting

    monkeypatch.chdir(tmp_path)
    params = validated(search_params(trials=2))
    study = open_study(params, Setting.METRIC_LEARNING, "relaxed")
    assert claim(study, 2).number == 0
    ask = study.ask

    def other_worker_asks_first(*args, **kwargs):
        ask()  # the other worker's trial 1, asked after our count and before our ask
        return ask(*args, **kwargs)

    monkeypatch.setattr(study, "ask", other_worker_asks_first)
    assert claim(study, 2) is None
    states = {t.number: (t.state, t.user_attrs.get(OVER_BUDGET)) for t in study.get_trials()}
    assert states == {0: (optuna.trial.TrialState.RUNNING, None), 1: (optuna.trial.TrialState.RUNNING, None),
                      2: (optuna.trial.TrialState.FAIL, True)}
    monkeypatch.setattr(study, "ask", ask)
    assert claim(study, 2) is None  # two running: the budget is taken


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql_without_losing_or_repeating_a_trial(tmp_path):
    """Two `python -m pipeline.search` processes on one PostgreSQL storage (a throw-away server on loopback)."""
    pytest.importorskip("psycopg")
    import optuna

    from team_support import postgres

    with postgres(databases=("optuna",)) as database:
        raw = search_params(trials=8, storage=database.uri("optuna"))
        raw["transfer"]["metric_learning"]["grid"]["loss"] = ["relaxed"]
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PATH": str(Path(sys.executable).parent)}
        workers = [subprocess.Popen([sys.executable, "-m", "pipeline.search", "--setting", "metric_learning",
                                     "--worker", str(k)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
        outputs = [w.communicate(timeout=900)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], [o[-3000:] for o in outputs]
        names = optuna.get_all_study_names(storage=database.uri("optuna"))
        assert len(names) == 1 and names[0].startswith("pipeline-test/metric_learning/relaxed/")
        study = optuna.load_study(study_name=names[0], storage=database.uri("optuna"))
        trials = study.get_trials()
        counted = [t for t in trials if not t.user_attrs.get("over_budget")]
        assert sorted(t.number for t in counted) == list(range(8))  # none lost, none repeated
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in counted)
        assert all(t.number >= 8 and t.state.name == "FAIL" for t in trials if t.user_attrs.get("over_budget"))
        owners = {t.user_attrs["owner"].rsplit(":", 2)[1] for t in counted}
        assert owners == {str(w.pid) for w in workers}  # both workers ran trials of the one study


def test_the_report_says_per_setting_whether_its_values_were_chosen_on_validation():
    from pipeline.report import hyperparameters_line
    from pipeline.setting import Setting

    raw = search_params()
    assert hyperparameters_line(validated(raw), Setting.METRIC_LEARNING).startswith(
        "Hyperparameters: as declared in params.yaml, not searched")
    raw["losses"]["relaxed"]["tuned"] = {"metric_learning": {"lr": 0.002}}
    assert hyperparameters_line(validated(raw), Setting.METRIC_LEARNING).startswith(
        "Hyperparameters: relaxed chosen on the validation split")
    assert "; rkd as declared" in hyperparameters_line(validated(raw), Setting.METRIC_LEARNING)
    raw["losses"]["rkd"]["tuned"] = {"metric_learning": {"lr": 0.002}}
    assert hyperparameters_line(validated(raw), Setting.METRIC_LEARNING).startswith(
        "Hyperparameters: every method's chosen on the validation split")
    # The other setting's students are untouched by a metric-learning choice.
    assert "not searched" in hyperparameters_line(validated(raw), Setting.SELF_SUPERVISED)
