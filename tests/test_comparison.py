"""The comparison views without a pipeline run (seconds): class names in the figures, the per-step loss
file a training session writes, the headline file and plot tables the report stage writes, and the
dvc.yaml declarations `dvc plots show` / `dvc exp show` read. The end-to-end checks (a real tracking
server, `dvc plots show`, docs/pipeline.md's `dvc exp show` command) are in test_pipeline_dvc.py."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest
import torch
import yaml
from threadpoolctl import threadpool_limits

from pipeline.comparison import headline, models, plot_tables, write_comparison
from pipeline.config import load_params
from pipeline.data import class_names
from pipeline.eval.plots import class_label, embedding_map_png, retrieval_grid_png
from pipeline.stage_spec import LOSS_CURVE
from pipeline.train.session import loss_curve

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "assets" / "tiny_params.yaml"


def test_class_names_follow_a_relabelled_subset():
    assert class_names("fashion_mnist")[0] == "T-shirt/top" and class_names("fashion_mnist")[9] == "Ankle boot"
    assert class_names("fashion_mnist", (5, 6, 7, 8, 9)) == ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert class_names("digits", (5, 6)) == ("5", "6")
    assert class_names("cub200") is None
    assert class_label(2, None) == "class 2" and class_label(1, ("a", "b")) == "b"


def svg_text(draw) -> str:
    """What a figure writes as text: matplotlib's SVG with text kept as <text> elements."""
    with matplotlib.rc_context({"svg.fonttype": "none"}), threadpool_limits(1):
        return draw()


def test_retrieval_grid_and_tsne_name_the_classes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    embeddings = 3 * torch.randn(4, 5, generator=generator)[labels] + torch.randn(40, 5, generator=generator)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    names = class_names("fashion_mnist", (5, 6, 7, 9))

    queries, neighbours, _, captions = retrieval_grid_png(tmp_path / "grid.png", images, embeddings, labels,
                                                          n_queries=4, k=3, class_names=names)

    def tsne(names_given):
        embedding_map_png(tmp_path / "tsne.svg", embeddings, labels, max_points=40, class_names=names_given)
        return (tmp_path / "tsne.svg").read_text()

    for row, query in enumerate(queries.tolist()):
        assert captions[row] == [names[int(labels[i])] for i in [query, *neighbours[row].tolist()]]
    assert len({text for row in captions for text in row}) > 1
    legend = svg_text(lambda: tsne(names))
    assert all(name in legend for name in ("Sandal", "Shirt", "Sneaker", "Ankle boot"))
    assert "class 3" in svg_text(lambda: tsne(None))  # no names: numbered


def test_loss_curve_keeps_every_step_then_thins_and_keeps_the_last():
    short = [(s, 1.0 / s) for s in range(1, 101)]
    assert loss_curve(short) == [{"step": s, "loss": 1.0 / s} for s in range(1, 101)]
    long = [(s, float(s)) for s in range(1, 5002)]
    thinned = loss_curve(long, max_points=1000)
    steps = [row["step"] for row in thinned]
    assert len(thinned) <= 1001 and steps[0] == 1 and steps[-1] == 5001 and steps == sorted(set(steps))
    assert loss_curve([]) == []


def fake_outputs(root: Path, params) -> dict[str, float]:
    """Metrics and loss files for every model of `params`' grids, each with its own numbers."""
    values = {}
    for index, model in enumerate(models(params)):
        value = 0.1 + 0.01 * index
        values[model.model_id] = value
        metrics = ({"top1": value, "top5": 0.99} if model.kind.startswith("classifier") else
                   {"map@r": value, "recall@1": value + 0.1, "recall@2": value + 0.2, "probe_top1": 0.5,
                    "knn_top1": 0.4, "nmi": 0.3})
        (root / model.folder).mkdir(parents=True, exist_ok=True)
        (root / model.folder / "metrics.json").write_text(json.dumps(metrics))
        if model.train_folder is not None:
            (root / model.train_folder).mkdir(parents=True, exist_ok=True)
            (root / model.train_folder / LOSS_CURVE).write_text(json.dumps([{"step": 1, "loss": value},
                                                                            {"step": 2, "loss": value / 2}]))
    return values


def test_headline_and_plot_tables_hold_every_model_of_the_grids(tmp_path, monkeypatch):
    params = load_params(TINY)
    monkeypatch.chdir(tmp_path)
    values = fake_outputs(tmp_path, params)
    table = headline(params)["headline"]
    assert set(table) == set(values)
    relaxed = values["simclr-small-relaxed-seed0"]
    assert table["simclr-small-relaxed-seed0"] == {"map@r": relaxed, "recall@1": relaxed + 0.1,
                                                   "probe_top1": 0.5, "knn_top1": 0.4}
    assert table["wide-small-kd-seed0"] == {"top1": values["wide-small-kd-seed0"]}
    tables = plot_tables(params)
    metric = values["proxy_anchor-small-relaxed-seed0"]
    recall = [r for r in tables["recall_at_k.json"] if r["model"] == "proxy_anchor-small-relaxed-seed0"]
    assert [(r["k"], r["recall"]) for r in recall] == [(1, pytest.approx(metric + 0.1)), (2, pytest.approx(metric + 0.2))]
    assert recall[0]["seed"] == 0
    assert recall[0]["method"] == "relaxed" and recall[0]["setting"] == "metric_learning"
    assert {r["model"] for r in tables["train_loss.json"]} == {
        "simclr-small-relaxed-seed0", "simclr-small-own_objective-seed0", "proxy_anchor-small-relaxed-seed0",
        "simclr-small-stml-seed0"}
    assert {(r["model"], r["step"]) for r in tables["classifier_loss.json"]} == {("wide-small-kd-seed0", 1),
                                                                                ("wide-small-kd-seed0", 2)}
    written = write_comparison(params, tmp_path / "reports/headline.json", tmp_path / "reports/plots")
    assert json.loads((tmp_path / "reports/headline.json").read_text()) == written
    assert sorted(p.name for p in (tmp_path / "reports/plots").iterdir()) == sorted(tables) == [
        "classifier_loss.json", "recall_at_k.json", "train_loss.json"]


def test_each_seed_of_a_student_is_a_model_of_its_own():
    from pipeline.config import validate_params

    raw = yaml.safe_load(TINY.read_text())
    raw["seeds"] = [0, 3]
    found = models(validate_params(raw))
    students = [m for m in found if m.kind.endswith("student")]
    assert {m.model_id for m in students if m.method == "kd"} == {"wide-small-kd-seed0", "wide-small-kd-seed3"}
    assert {str(m.folder) for m in students if m.model_id == "simclr-small-relaxed-seed3"} == {
        "outputs/eval/simclr-small-relaxed-seed3"}
    assert len(students) == 2 * 5 and [m.seed for m in found if m.kind == "teacher"] == [0, 0]


def test_a_missing_loss_curve_is_named(tmp_path, monkeypatch):
    params = load_params(TINY)
    monkeypatch.chdir(tmp_path)
    fake_outputs(tmp_path, params)
    (tmp_path / "outputs/students/simclr-small-relaxed-seed0" / LOSS_CURVE).unlink()
    with pytest.raises(FileNotFoundError, match="simclr-small-relaxed-seed0/loss.json"):
        plot_tables(params)


def test_dvc_yaml_declares_what_dvc_plots_and_exp_show_read():
    """results.md is an out, never a plot (DVC cannot parse it); the headline file is a metric; every
    top-level plot reads a table the report writes, with a template that exists; every training stage
    declares its loss curve."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    report = pipeline["stages"]["report"]
    assert "plots" not in report or all("results.md" not in json.dumps(p) for p in report["plots"])
    assert any("reports/headline.json" in m for m in report["metrics"])
    assert any("reports/plots" in o for o in report["outs"])
    names = {"recall_at_k.json", "train_loss.json", "classifier_loss.json"}  # plot_tables' files (tested above)
    read = set()
    for entry in pipeline["plots"]:
        (plot_id, props), = entry.items()
        (source, field), = props["y"].items()
        assert (ROOT / ".dvc" / "plots" / f"{props['template']}.json").is_file(), props["template"]
        read.add(Path(source).name)
        assert source.startswith("reports/plots/") and field in ("recall", "loss"), plot_id
    assert read == names
    for stage in ("teacher", "transfer", "metric_transfer", "classifier_teacher", "classifier_student"):
        body = pipeline["stages"][stage].get("do", pipeline["stages"][stage])
        assert any(LOSS_CURVE in json.dumps(p) for p in body["plots"]), stage
    config = (ROOT / ".dvc" / "config").read_text()
    assert "html_template = plots/offline.html" in config
    page = (ROOT / ".dvc" / "plots" / "offline.html").read_text()
    assert "{plot_divs}" in page and "<script src=" not in page and "vegaEmbed" in page
