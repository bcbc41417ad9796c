"""The loss registry: every name builds, and bad names or parameters fail clearly."""

import pytest
from torch import nn

from pipeline.losses import NAMES, NEEDS_PROXY_ANCHOR, build

REQUIRED = {
    "fitnet": {"student_channels": [2], "teacher_channels": [3]},
    "crd": {"student_dim": 3, "teacher_dim": 4, "n_data": 10},
    "proxy_anchor": {"num_classes": 3, "embedding_dim": 4},
}


def test_names_are_the_published_set():
    assert set(NAMES) == {
        "relaxed_contrastive", "contrastive", "rkd", "pkt", "darkrank", "fitnet", "attention", "crd",
        "hinton_kd", "proxy_anchor", "ntxent", "moco",
    }
    assert NEEDS_PROXY_ANCHOR == {"fitnet", "attention", "crd"}


@pytest.mark.parametrize("name", sorted({"relaxed_contrastive", "contrastive", "rkd", "pkt", "darkrank", "fitnet",
                                         "attention", "crd", "hinton_kd", "proxy_anchor", "ntxent", "moco"}))
def test_every_name_builds_a_module(name):
    assert isinstance(build(name, **REQUIRED.get(name, {})), nn.Module)


def test_published_defaults():
    relaxed = build("relaxed_contrastive")
    assert (relaxed.sigma, relaxed.delta, relaxed.normalize, relaxed.student_l2) == (1.0, 1.0, "row", False)
    rkd = build("rkd")
    assert (rkd.distance_weight, rkd.angle_weight, rkd.angle_max_rows) == (1.0, 2.0, None)
    dark = build("darkrank")
    assert (dark.alpha, dark.beta, dark.list_length, dark.triplet_margin) == (3.0, 3.0, 4, 0.2)
    crd = build("crd", **REQUIRED["crd"])
    assert (crd.num_negatives, crd.temperature, crd.momentum, crd.student_memory.shape[1]) == (4096, 0.07, 0.5, 128)
    assert build("hinton_kd").temperature == 4.0
    proxy = build("proxy_anchor", **REQUIRED["proxy_anchor"])
    assert (proxy.margin, proxy.alpha) == (0.1, 32.0)


def test_unknown_name_lists_names_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown loss name 'relaxed_contrastiv'.*Did you mean 'relaxed_contrastive'"):
        build("relaxed_contrastiv")
    with pytest.raises(ValueError, match="allowed: relaxed_contrastive, contrastive"):
        build("triplet_of_doom")


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="unknown parameter.*'sigmaa'.*accepted: sigma, delta"):
        build("relaxed_contrastive", sigmaa=2.0)
