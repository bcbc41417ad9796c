"""BN-Inception against the layer list of Cadene's ``pretrainedmodels/models/bninception.py``.

``CADENE_CONVS`` was extracted from that file's ``nn.Conv2d`` lines (name, in, out, kernel, stride,
padding; each conv there is followed by ``<name>_bn = nn.BatchNorm2d(out, affine=True)`` and a ReLU),
not derived from the code under test.
"""

import pytest
import torch

from pipeline.data.metric_sets import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.registry import build_backbone
from pipeline.models.bn_inception import BNInception

CADENE_CONVS = (
    ('conv1_7x7_s2', 3, 64, 7, 2, 3),
    ('conv2_3x3_reduce', 64, 64, 1, 1, 0),
    ('conv2_3x3', 64, 192, 3, 1, 1),
    ('inception_3a_1x1', 192, 64, 1, 1, 0),
    ('inception_3a_3x3_reduce', 192, 64, 1, 1, 0),
    ('inception_3a_3x3', 64, 64, 3, 1, 1),
    ('inception_3a_double_3x3_reduce', 192, 64, 1, 1, 0),
    ('inception_3a_double_3x3_1', 64, 96, 3, 1, 1),
    ('inception_3a_double_3x3_2', 96, 96, 3, 1, 1),
    ('inception_3a_pool_proj', 192, 32, 1, 1, 0),
    ('inception_3b_1x1', 256, 64, 1, 1, 0),
    ('inception_3b_3x3_reduce', 256, 64, 1, 1, 0),
    ('inception_3b_3x3', 64, 96, 3, 1, 1),
    ('inception_3b_double_3x3_reduce', 256, 64, 1, 1, 0),
    ('inception_3b_double_3x3_1', 64, 96, 3, 1, 1),
    ('inception_3b_double_3x3_2', 96, 96, 3, 1, 1),
    ('inception_3b_pool_proj', 256, 64, 1, 1, 0),
    ('inception_3c_3x3_reduce', 320, 128, 1, 1, 0),
    ('inception_3c_3x3', 128, 160, 3, 2, 1),
    ('inception_3c_double_3x3_reduce', 320, 64, 1, 1, 0),
    ('inception_3c_double_3x3_1', 64, 96, 3, 1, 1),
    ('inception_3c_double_3x3_2', 96, 96, 3, 2, 1),
    ('inception_4a_1x1', 576, 224, 1, 1, 0),
    ('inception_4a_3x3_reduce', 576, 64, 1, 1, 0),
    ('inception_4a_3x3', 64, 96, 3, 1, 1),
    ('inception_4a_double_3x3_reduce', 576, 96, 1, 1, 0),
    ('inception_4a_double_3x3_1', 96, 128, 3, 1, 1),
    ('inception_4a_double_3x3_2', 128, 128, 3, 1, 1),
    ('inception_4a_pool_proj', 576, 128, 1, 1, 0),
    ('inception_4b_1x1', 576, 192, 1, 1, 0),
    ('inception_4b_3x3_reduce', 576, 96, 1, 1, 0),
    ('inception_4b_3x3', 96, 128, 3, 1, 1),
    ('inception_4b_double_3x3_reduce', 576, 96, 1, 1, 0),
    ('inception_4b_double_3x3_1', 96, 128, 3, 1, 1),
    ('inception_4b_double_3x3_2', 128, 128, 3, 1, 1),
    ('inception_4b_pool_proj', 576, 128, 1, 1, 0),
    ('inception_4c_1x1', 576, 160, 1, 1, 0),
    ('inception_4c_3x3_reduce', 576, 128, 1, 1, 0),
    ('inception_4c_3x3', 128, 160, 3, 1, 1),
    ('inception_4c_double_3x3_reduce', 576, 128, 1, 1, 0),
    ('inception_4c_double_3x3_1', 128, 160, 3, 1, 1),
    ('inception_4c_double_3x3_2', 160, 160, 3, 1, 1),
    ('inception_4c_pool_proj', 576, 128, 1, 1, 0),
    ('inception_4d_1x1', 608, 96, 1, 1, 0),
    ('inception_4d_3x3_reduce', 608, 128, 1, 1, 0),
    ('inception_4d_3x3', 128, 192, 3, 1, 1),
    ('inception_4d_double_3x3_reduce', 608, 160, 1, 1, 0),
    ('inception_4d_double_3x3_1', 160, 192, 3, 1, 1),
    ('inception_4d_double_3x3_2', 192, 192, 3, 1, 1),
    ('inception_4d_pool_proj', 608, 128, 1, 1, 0),
    ('inception_4e_3x3_reduce', 608, 128, 1, 1, 0),
    ('inception_4e_3x3', 128, 192, 3, 2, 1),
    ('inception_4e_double_3x3_reduce', 608, 192, 1, 1, 0),
    ('inception_4e_double_3x3_1', 192, 256, 3, 1, 1),
    ('inception_4e_double_3x3_2', 256, 256, 3, 2, 1),
    ('inception_5a_1x1', 1056, 352, 1, 1, 0),
    ('inception_5a_3x3_reduce', 1056, 192, 1, 1, 0),
    ('inception_5a_3x3', 192, 320, 3, 1, 1),
    ('inception_5a_double_3x3_reduce', 1056, 160, 1, 1, 0),
    ('inception_5a_double_3x3_1', 160, 224, 3, 1, 1),
    ('inception_5a_double_3x3_2', 224, 224, 3, 1, 1),
    ('inception_5a_pool_proj', 1056, 128, 1, 1, 0),
    ('inception_5b_1x1', 1024, 352, 1, 1, 0),
    ('inception_5b_3x3_reduce', 1024, 192, 1, 1, 0),
    ('inception_5b_3x3', 192, 320, 3, 1, 1),
    ('inception_5b_double_3x3_reduce', 1024, 192, 1, 1, 0),
    ('inception_5b_double_3x3_1', 192, 224, 3, 1, 1),
    ('inception_5b_double_3x3_2', 224, 224, 3, 1, 1),
    ('inception_5b_pool_proj', 1024, 128, 1, 1, 0),
)
# Cadene's classifier, which the backbone leaves out: nn.Linear(1024, 1000).
LAST_LINEAR_PARAMS = 1024 * 1000 + 1000


def cadene_state_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Key and shape of every tensor of Cadene's module without ``last_linear``, in definition order."""
    shapes = []
    for name, cin, cout, k, _, _ in CADENE_CONVS:
        shapes += [(f"{name}.weight", (cout, cin, k, k)), (f"{name}.bias", (cout,))]
        shapes += [(f"{name}_bn.{t}", (cout,)) for t in ("weight", "bias", "running_mean", "running_var")]
        shapes.append((f"{name}_bn.num_batches_tracked", ()))
    return shapes


@pytest.fixture(scope="module")
def model() -> BNInception:
    torch.manual_seed(0)
    return build_backbone("bn_inception").eval()


def test_every_tensor_name_and_shape_matches_cadene(model):
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == cadene_state_shapes()


def test_strides_paddings_and_batch_norm_settings_match_cadene(model):
    for name, _, _, k, stride, padding in CADENE_CONVS:
        conv, bn = getattr(model, name), getattr(model, f"{name}_bn")
        assert conv.kernel_size == (k, k) and conv.stride == (stride, stride), name
        assert conv.padding == (padding, padding), name
        assert conv.bias is not None, name
        # Cadene's nn.BatchNorm2d(c, affine=True): PyTorch defaults eps 1e-5, momentum 0.1.
        assert (bn.eps, bn.momentum, bn.affine) == (1e-5, 0.1, True), name


def test_parameter_count_matches_the_layer_list(model):
    expected = sum(cout * cin * k * k + cout + 2 * cout for _, cin, cout, k, _, _ in CADENE_CONVS)
    assert sum(p.numel() for p in model.parameters()) == expected
    # BN-Inception has about 11.3M parameters with its 1000-way classifier, about 10.3M without.
    assert round((expected + LAST_LINEAR_PARAMS) / 1e5) == 113
    assert round(expected / 1e5) == 103


def test_forward_at_224_gives_the_7x7_map_and_the_three_stages(model):
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 224, 224))
        small = torch.randn(2, 3, 64, 64)
        assert torch.equal(model(small), model.forward_stages(small)[-1])
    # inception_3c, 4e and 5b: 224 / 16, / 32, / 32.
    assert [tuple(s.shape) for s in stages] == [(1, 576, 14, 14), (1, 1056, 7, 7), (1, 1024, 7, 7)]
    assert model.stage_channels == (576, 1056, 1024) and model.num_features == 1024


def test_rgb_input_is_converted_to_caffe_bgr(model):
    """Proxy-Anchor's inception transform: RGB -> BGR, [0, 1] -> [0, 255], minus (104, 117, 128)."""
    rgb01 = torch.rand(2, 3, 8, 8)
    # The default statistics must be those the metric-learning datasets normalise with.
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    normalised = (rgb01 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    caffe = rgb01[:, [2, 1, 0]] * 255 - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.to_caffe_input(normalised), caffe, atol=1e-4, rtol=0)
    assert torch.equal(build_backbone("bn_inception", input_space="caffe_bgr").to_caffe_input(caffe), caffe)
    # The forward on converted input is checked end to end against the official one, with weights that
    # make the input matter, in test_released_teachers.py.


def test_cadene_imagenet_file_loads_strictly(tmp_path):
    """The released file's quirks: BN tensors stored as (1, C) (Caffe port, pre-PyTorch-0.4), no
    ``num_batches_tracked``, and the ``last_linear`` classifier."""
    torch.manual_seed(1)
    source = {}
    for name, cin, cout, k, _, _ in CADENE_CONVS:
        source[f"{name}.weight"] = torch.randn(cout, cin, k, k)
        source[f"{name}.bias"] = torch.randn(cout)
        for t in ("weight", "bias", "running_mean", "running_var"):
            source[f"{name}_bn.{t}"] = torch.rand(1, cout) + 0.5
    source["last_linear.weight"] = torch.randn(1000, 1024)
    source["last_linear.bias"] = torch.randn(1000)
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(source, path)

    loaded = build_backbone("bn_inception", weights_path=path).state_dict()
    for key, value in source.items():
        if not key.startswith("last_linear."):
            assert torch.equal(loaded[key], value.reshape(loaded[key].shape)), key

    del source["inception_5b_pool_proj_bn.running_var"]
    torch.save(source, path)
    with pytest.raises(RuntimeError, match="inception_5b_pool_proj_bn.running_var"):
        build_backbone("bn_inception", weights_path=path)


def test_grey_inputs_are_refused():
    with pytest.raises(ValueError, match="3-channel"):
        build_backbone("bn_inception", 1)

