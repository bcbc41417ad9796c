"""What a trained model costs deployed (pipeline/deploy): the ONNX graph computes the PyTorch model's embeddings,
a damaged, foreign or stale file is refused in one line, `mlflow models serve` answers with the same
embeddings, the exact faiss index finds the evaluation's neighbours and the approximate one's recall is
measured. References are independent of the code under test: scikit-learn's brute-force neighbours, numpy
distances, the convolution FLOPs formula."""
from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    """A small embedding model of the pipeline (random weights, BatchNorm statistics moved off their
    defaults) and the digits test images of classes 5-9."""
    from pipeline.config import DataConfig, ModelConfig
    from pipeline.data.loading import load_images
    from pipeline.models.embedding_model import build_model
    from pipeline.models.loading import model_spec

    torch.manual_seed(0)
    test = load_images(DataConfig(name="digits", image_size=8), "test", (5, 6, 7, 8, 9))
    spec = model_spec(ModelConfig(backbone="small_resnet", widths=[8, 16], embedding_dim=16), test.channels)
    spec.pooling = "avg"
    model = build_model(spec)
    model.train()
    with torch.no_grad():  # running statistics of real batches, so eval-mode BatchNorm is not the identity
        model(test.images[:128].float() / 255)
    return model.eval(), test


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from pipeline.deploy.graph import Deployable, export_onnx

    model, test = tiny
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    deployable = Deployable(model, test, 8)
    check = export_onnx(deployable, test, path, "a" * 64, "euclidean")
    return path, deployable, check


def recall_at_1(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out Recall@1 by scikit-learn's brute-force search (Euclidean)."""
    _, found = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(x).kneighbors(x)
    nearest = np.where(found[:, 0] == np.arange(len(x)), found[:, 1], found[:, 0])
    return float((labels[nearest] == labels).mean())


def test_the_onnx_graph_gives_the_pytorch_embeddings_on_the_test_images(tiny, exported):
    import onnxruntime as ort

    model, test = tiny
    path, deployable, check = exported
    opened = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [given] = opened.get_inputs()
    assert given.type == "tensor(uint8)" and given.shape[1:] == [1, 8, 8] and isinstance(given.shape[0], str)
    # Two batch sizes through the one graph: the batch axis is dynamic.
    onnx_x = np.concatenate([opened.run(None, {given.name: test.images[i:i + 77].numpy()})[0]
                             for i in range(0, len(test), 77)])
    with torch.inference_mode():  # the evaluation's preprocessing, spelled out: uint8 / 255, normalised
        mean, std = torch.tensor(test.mean).view(1, -1, 1, 1), torch.tensor(test.std).view(1, -1, 1, 1)
        torch_x = model((test.images.float() / 255 - mean) / std).numpy()
    cosine = (onnx_x * torch_x).sum(1) / np.linalg.norm(onnx_x, axis=1) / np.linalg.norm(torch_x, axis=1)
    assert cosine.min() > 0.9999
    # No file path of this checkout inside: the same model exports to the same bytes in any clone.
    assert str(ROOT).encode() not in path.read_bytes()
    labels = test.labels.numpy()
    assert recall_at_1(onnx_x, labels) == recall_at_1(torch_x, labels) == pytest.approx(check["onnx_recall@1"])


def test_a_damaged_foreign_or_stale_onnx_file_is_refused_in_one_line_naming_it(exported, tmp_path):
    from pipeline.deploy.graph import session
    from pipeline.integrity import DamagedFileError

    path, deployable, _ = exported
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(path.read_bytes()[:500])
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(deployable, (torch.zeros(2, 1, 8, 8, dtype=torch.uint8),), str(foreign), dynamo=True,
                      verbose=False)
    cases = [(damaged, None, "cannot be loaded"), (tmp_path / "missing.onnx", None, "cannot be loaded"),
             (foreign, None, "does not name the model file it was exported from"),
             (path, "b" * 64, "is stale: exported from a model file with sha256 aaaaaaaaaaaa")]
    for file, source, message in cases:
        with pytest.raises(DamagedFileError) as refused:
            session(file, source_sha256=source)
        line = str(refused.value)
        assert str(file) in line and message in line and "\n" not in line, line
    session(path, source_sha256="a" * 64)  # the current file opens


def test_the_check_tells_float_ties_from_another_model(tiny, exported):
    """The export's own graph: every nearest neighbour the same (or tied). Another model's weights behind the
    same graph: many queries find another neighbour, and not by a tie."""
    from pipeline.deploy.graph import Deployable, compare_with_torch

    model, test = tiny
    path, deployable, check = exported
    assert check["nearest_differing"] == 0 and check["min_cosine"] > 0.9999
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    changed = compare_with_torch(path, Deployable(other, test, 8), test, "euclidean")
    assert changed["nearest_differing"] > 50 and changed["min_cosine"] < 0.9999


def test_an_export_that_computes_something_else_is_not_written(tiny, tmp_path, monkeypatch):
    from pipeline.deploy import graph

    model, test = tiny
    deployable = graph.Deployable(model, test, 8)
    real = graph.compare_with_torch
    monkeypatch.setattr(graph, "compare_with_torch", lambda *args, **kwargs: {**real(*args, **kwargs),
                                                                               "min_cosine": 0.5})
    with pytest.raises(graph.ExportMismatchError, match="differs from the PyTorch model"):
        graph.export_onnx(deployable, test, tmp_path / "model.onnx", "a" * 64, "euclidean")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_the_int8_variant_is_smaller_close_and_names_its_source(tiny, exported, tmp_path):
    from pipeline.deploy.graph import embed, session
    from pipeline.deploy.quantize import quantize_int8

    model, test = tiny
    path, _, _ = exported
    int8 = tmp_path / "model.int8.onnx"
    quantize_int8(path, int8, test.images[:128], "a" * 64)
    assert int8.stat().st_size < path.stat().st_size
    opened = session(int8, source_sha256="a" * 64)
    ops = {node.op_type for node in __import__("onnx").load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    a, b = embed(session(path), test.images), embed(opened, test.images)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.median(cosine) > 0.95


def test_flops_follow_the_convolution_and_linear_formulas():
    from pipeline.deploy.flops import flops_per_image

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    # 2 FLOPs per multiply-add: conv 10x10 outputs x 8 channels x (3 x 3 x 3) taps; linear 800 x 5.
    assert flops_per_image(net, torch.zeros(1, 3, 10, 10)) == 2 * (10 * 10 * 8 * 27) + 2 * 800 * 5


def test_latency_is_measured_per_batch_size_and_thread_count(exported, tiny):
    from pipeline.deploy.latency import all_cores, latency_ms

    path, _, _ = exported
    timed = latency_ms(path, tiny[1].images, (1, 4), (1, 0), repeats=3)
    assert set(timed) == {"latency_ms_b1_t1", "latency_ms_b4_t1", "latency_ms_b1_t0", "latency_ms_b4_t0",
                          "all_cores"}
    assert timed["all_cores"] == all_cores() >= 1
    assert all(value > 0 for value in timed.values())


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_the_exact_index_finds_the_evaluations_neighbours(distance):
    from pipeline.deploy.index import evaluation_neighbours, exact_index, neighbours

    x = np.random.default_rng(0).normal(size=(600, 12)).astype(np.float32)
    found = neighbours(exact_index(x, distance), x, distance, 5)
    assert (found == evaluation_neighbours(x, distance, 5)).all()
    # ... and numpy's brute force, itself left out.
    y = x / np.linalg.norm(x, axis=1, keepdims=True) if distance == "cosine" else x
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (found == np.argsort(d, axis=1, kind="stable")[:, :5]).all()


def test_the_approximate_index_reports_the_recall_it_reaches():
    """A deliberately poor HNSW (2 links, search breadth 1) on clustered points: its recall is below 1, and the
    reported figure is the recall an independent count finds."""
    import faiss

    from pipeline.config import IndexConfig
    from pipeline.deploy.index import approximate_index, index_costs

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(40, 16)).repeat(25, axis=0) + 0.3 * rng.normal(size=(1000, 16))).astype(np.float32)
    config = IndexConfig(k=10, hnsw_m=2, ef_construction=8, ef_search=1)
    costs = index_costs(x, "euclidean", config)
    faiss.omp_set_num_threads(1)
    _, approx = approximate_index(x, "euclidean", config).search(x, 11)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    truth = np.argsort(d, axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(a[a != i][:10]) & set(t)) / 10 for i, (a, t) in enumerate(zip(approx, truth))])
    assert costs["hnsw_recall_at_k"] == pytest.approx(recall)
    assert costs["hnsw_recall_at_k"] < 0.99
    assert costs["exact_agrees_with_evaluation"] == 1.0
    assert costs["exact_bytes_per_item"] >= 16 * 4  # at least the float32 vector
    assert costs["embedding_bytes"] == 64 and costs["gallery_items"] == 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_embeddings_of_the_registered_model(tiny, exported, tmp_path):
    """Registered as the export stage registers it; `mlflow models serve` on loopback, started here; its answer
    to the test images is the PyTorch model's embedding of them."""
    from pipeline.infra.models import register_onnx_model

    model, test = tiny
    path, deployable, _ = exported
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The server execs `uvicorn` by name: the environment's bin on PATH, as `.venv/bin/python -m pytest` on a
    # fresh machine does not put it (CI found this).
    bin_dir = str(Path(sys.executable).parent)
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{bin_dir}:{__import__('os').environ.get('PATH', '')}"}
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("deploy-test"))
    np.save(tmp_path / "example.npy", test.images[:2].numpy())
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        registered = register_onnx_model(run.info.run_id, str(path), str(tmp_path / "example.npy"), "deploy-test.tiny",
                                         {"student": "tiny", "seed": "0"})
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    version = client.get_model_version("deploy-test.tiny", registered["version"])
    assert version.tags["student"] == "tiny" and version.run_id == run.info.run_id
    assert client.get_registered_model("deploy-test.tiny").tags == {"student": "tiny", "seed": "0"}
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               "models:/deploy-test.tiny/1", "--env-manager", "local", "-h", "127.0.0.1", "-p",
                               str(port)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 90 s"
                time.sleep(0.3)
        images = test.images[:5]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.numpy().tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
        served = np.asarray(answer["embedding"] if isinstance(answer, dict) else answer, dtype=np.float32)
        with torch.inference_mode():
            expected = deployable(images).numpy()
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_what_transfer_buys_sets_each_student_beside_its_teacher(tmp_path, monkeypatch):
    """Hand-worked: a teacher at 0.4 ms and 1024 index bytes per item; a student at 0.1 ms and 256 bytes,
    MAP@R 0.30 of the teacher's 0.40 (75% kept), over two seeds whose figures average to those."""
    from test_report import _seeded_outputs, _seeded_params, write_deployed

    from pipeline.deploy.report import deploy_section

    monkeypatch.chdir(tmp_path)
    params = _seeded_params([0, 1])
    _seeded_outputs(params)
    write_deployed("teacher-proxy_anchor", 16, ms=0.4, index_bytes=1024)
    for seed, (ms, size, map_r) in enumerate(((0.08, 200, 0.28), (0.12, 312, 0.32))):
        write_deployed(f"proxy_anchor-small-pkt-seed{seed}", 8, ms=ms, index_bytes=size)
        metrics = tmp_path / f"outputs/eval/proxy_anchor-small-pkt-seed{seed}/metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "map@r": map_r}))
    metrics = tmp_path / "outputs/eval/teacher-proxy_anchor/metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "map@r": 0.40}))
    lines = deploy_section(params, tmp_path / "reports" / "figures")
    [row] = [line for line in lines if line.startswith("| small, pkt |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:3] == ["30.00", "75%"]
    assert cells[5:9] == ["0.1000", "4.00", "0.1000", "4.00"]  # 0.4 / 0.1 at both latencies
    assert cells[9:11] == ["256", "4.0"]  # 1024 / 256
    assert cells[12:] == ["-1.00", "2.00"]  # int8: 0.49 - 0.50 MAP@R, twice as fast
    [teacher] = [line for line in lines if line.startswith("| teacher proxy_anchor |")]
    assert "| 100% |" in teacher
    assert (tmp_path / "reports/figures/pareto_proxy_anchor.png").stat().st_size > 10_000
