"""`evaluation.nmi`: false skips the k-means behind NMI in every evaluation, and the report says "NMI off"
where the number would be."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import EvaluationConfig, validate_params
from pipeline.data import ImageSet
from pipeline.eval.protocol import evaluate


def tiny_set(seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageSet("tiny", images, torch.arange(40) % 4, 4, (0.5,), (0.25,))


@pytest.mark.parametrize("nmi", [True, False])
def test_evaluate_computes_nmi_only_when_asked(nmi, monkeypatch):
    from pipeline.eval import retrieval

    clustered, real = [], retrieval.kmeans

    def recording(points, num_clusters, **kwargs):
        clustered.append(num_clusters)
        return real(points, num_clusters, **kwargs)

    monkeypatch.setattr(retrieval, "kmeans", recording)
    evaluation = EvaluationConfig(nmi=nmi, probe={"enabled": False}, knn={"enabled": False},
                                  retrieval={"ks": [1, 2]})
    metrics, _ = evaluate(None, tiny_set(0), tiny_set(1), evaluation, 8, seed=0)
    assert ("nmi" in metrics) is nmi and clustered == ([4] if nmi else [])
    assert 0.0 <= metrics["recall@1"] <= 1.0


def test_without_probe_and_knn_the_train_split_is_not_needed():
    """SOP-sized profiles switch both off: no train features are extracted (for SOP's raw pixels that
    would be 36 GB), and a train split is only required by the probe or kNN."""
    off = EvaluationConfig(probe={"enabled": False}, knn={"enabled": False}, retrieval={"ks": [1]})
    metrics, _ = evaluate(None, None, tiny_set(1), off, 8, seed=0)
    assert "recall@1" in metrics and not any(key.startswith(("probe", "knn")) for key in metrics)
    with pytest.raises(ValueError, match="need the train split"):
        evaluate(None, None, tiny_set(1), EvaluationConfig(retrieval={"ks": [1]}), 8, seed=0)


@pytest.mark.parametrize("nmi", [True, False])
def test_the_report_says_nmi_off_instead_of_a_number(nmi, tmp_path, monkeypatch):
    from test_report import _seeded_outputs, _seeded_params

    from pipeline.report import build_report

    monkeypatch.chdir(tmp_path)
    raw = _seeded_params([0]).model_dump(mode="json")
    raw["evaluation"]["nmi"] = nmi
    params = validate_params(raw)
    _seeded_outputs(params)
    markdown, _ = build_report(params, tmp_path / "reports" / "figures")
    headers = [line for line in markdown.splitlines() if line.startswith("| Model |") and "| MAP@R" in line]
    assert headers  # the retrieval tables
    if nmi:  # (the written metrics hold no NMI: a column shows only where a model reports it)
        assert "NMI off" not in markdown
    else:  # said once at the top; no table has an NMI column
        assert markdown.count("NMI off (`evaluation.nmi: false`)") == 1
        assert not any("NMI" in line for line in headers)
