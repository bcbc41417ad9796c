"""Batched augmentations: shapes, ranges, per-sample randomness, seeding, the exact "none" transform, CUDA.

References are computed here: (x / 255 - mean) / std in float64 and plain tensor slicing / flipping.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.data.augment import KINDS, build_augmentation

MEAN = {1: (0.3,), 3: (0.5, 0.4, 0.3)}
STD = {1: (0.35,), 3: (0.2, 0.25, 0.3)}


def make(kind: str, size: int, channels: int, **kwargs):
    return build_augmentation(kind, size, channels, MEAN[channels], STD[channels], **kwargs)


def noise_batch(batch: int, channels: int, size: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=generator).to(device)


def seeded(augment, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return augment(x)


def unnormalise(y: torch.Tensor, channels: int) -> torch.Tensor:
    mean = torch.tensor(MEAN[channels], device=y.device).view(1, -1, 1, 1)
    std = torch.tensor(STD[channels], device=y.device).view(1, -1, 1, 1)
    return y * std + mean


CASES = [(kind, channels, size) for kind in KINDS for channels in (1, 3) for size in (16,)]
CASES += [("simclr", 3, 64), ("mocov2", 1, 64)]  # 64 px and up adds the Gaussian blur


@pytest.mark.parametrize("kind, channels, size", CASES)
def test_shapes_dtype_and_value_range(kind, channels, size):
    torch.manual_seed(0)
    x = noise_batch(4, channels, size + 4)
    y = make(kind, size, channels)(x)
    assert y.shape == (4, channels, size, size) and y.dtype == torch.float32
    pixels = unnormalise(y, channels)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.std() > 0.05  # an image came out, not a constant


@pytest.mark.parametrize("kind", KINDS)
def test_float_input_in_unit_range_equals_uint8_input(kind):
    x = noise_batch(4, 3, 20)
    augment = make(kind, 16, 3)
    torch.testing.assert_close(seeded(augment, x.float() / 255, 3), seeded(augment, x, 3), rtol=0, atol=1e-5)


def test_none_is_exactly_normalisation_on_same_size_batch():
    x = noise_batch(5, 3, 16)
    mean = torch.tensor(MEAN[3], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD[3], dtype=torch.float64).view(1, 3, 1, 1)
    expected = (x.double() / 255 - mean) / std
    torch.testing.assert_close(make("none", 16, 3)(x).double(), expected, rtol=0, atol=1e-6)


def test_none_centre_crops_a_larger_batch():
    x = noise_batch(3, 1, 20)
    expected = (x[..., 2:18, 2:18].double() / 255 - MEAN[1][0]) / STD[1][0]  # (20 - 16) / 2 = 2 each side
    torch.testing.assert_close(make("none", 16, 1)(x).double(), expected, rtol=0, atol=1e-6)


def test_full_scale_metric_crop_is_identity_or_mirror_per_sample():
    """With crop scale (1, 1) the crop is the whole image, so each output is the image or its mirror."""
    torch.manual_seed(0)
    x = noise_batch(1, 3, 16).expand(32, 3, 16, 16)
    y = unnormalise(make("metric", 16, 3, crop_scale=(1.0, 1.0))(x), 3)
    image = x[0].float() / 255
    plain = [torch.allclose(v, image, atol=1e-5) for v in y]
    mirrored = [torch.allclose(v, image.flip(-1), atol=1e-5) for v in y]
    assert all(p != m for p, m in zip(plain, mirrored))
    assert 4 <= sum(mirrored) <= 28  # p = 0.5 over 32 samples; outside this band has probability < 1e-4


@pytest.mark.parametrize("kind", ["simclr", "mocov2", "metric"])
@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_differ_and_identical_images_get_different_crops(kind, channels):
    torch.manual_seed(0)
    x = noise_batch(1, channels, 20).expand(8, channels, 20, 20)
    augment = make(kind, 16, channels)
    first, second = augment(x), augment(x)
    assert not torch.allclose(first, second)
    # Same input image in every row: differences between rows come only from per-sample parameters.
    distinct = {tuple(row.flatten()[:64].tolist()) for row in first}
    assert len(distinct) == 8


@pytest.mark.parametrize("kind", ["simclr", "mocov2", "metric"])
def test_determinism_under_manual_seed(kind):
    x = noise_batch(6, 3, 20)
    augment = make(kind, 16, 3)
    first, again, other = seeded(augment, x, 123), seeded(augment, x, 123), seeded(augment, x, 124)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 4, 16, 16), (3, 16, 16)])
def test_wrong_channel_count_or_rank_raises(shape):
    with pytest.raises(ValueError, match=r"expected a batch \(B, 3, H, W\)"):
        make("metric", 16, 3)(torch.zeros(shape, dtype=torch.uint8))


def test_bad_build_arguments_raise():
    with pytest.raises(ValueError, match=r"unknown augmentation 'simclrr'"):
        build_augmentation("simclrr", 16, 3, MEAN[3], STD[3])
    with pytest.raises(ValueError, match="mean/std need 3 entries, got 1/3"):
        build_augmentation("metric", 16, 3, MEAN[1], STD[3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentations_run_on_cuda(kind, channels):
    x = noise_batch(8, channels, 72, device="cuda")
    augment = make(kind, 64, channels).to("cuda")
    y, again = seeded(augment, x, 7), seeded(augment, x, 7)
    assert y.device.type == "cuda" and y.shape == (8, channels, 64, 64) and y.dtype == torch.float32
    assert torch.equal(y, again)
    pixels = unnormalise(y, channels)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    if kind == "none":
        expected = make("none", 64, channels)(x.cpu())
        torch.testing.assert_close(y.cpu(), expected, rtol=0, atol=1e-5)
    else:
        assert not torch.allclose(y, augment(x))


@pytest.mark.parametrize("shape, size", [((3, 3, 40, 40), (32, 32)), ((2, 1, 41, 39), (32, 32)),
                                         ((2, 3, 33, 64), (33, 17)), ((1, 1, 8, 8), (8, 8))])
def test_centre_crop_equals_kornias(shape, size):
    import kornia.augmentation as K

    from pipeline.data.augment import CenterCrop

    x = torch.rand(*shape)
    assert torch.equal(CenterCrop(size)(x), K.CenterCrop(size)(x))


def test_evaluation_preprocessing_imports_no_kornia():
    import subprocess
    import sys

    code = ("import sys; from pipeline.data.augment import build_augmentation; "
            "build_augmentation('none', 8, 1, (0.5,), (0.2,)); print('kornia' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# ------------------------------------------------------------------------------- canvases of file sets


def canvas_of(image: torch.Tensor, load_size: int) -> torch.Tensor:
    from pipeline.data.files import on_canvas

    return on_canvas(image, load_size)


def striped(height: int, width: int, edge: int) -> torch.Tensor:
    """uint8 (3, h, w): red in the leftmost `edge` columns, blue in the rightmost, green between."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[1] = 200
    image[:, :, :edge] = torch.tensor([200, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    image[:, :, width - edge:] = torch.tensor([0, 0, 200], dtype=torch.uint8).view(3, 1, 1)
    return image


def test_a_training_crop_reaches_both_sides_of_a_wide_image():
    """A 3:2 image whose outer tenths are red and blue: the metric recipe's crops show each side in some
    views (the centre square the loader stored before holds neither), and never the canvas around it."""
    canvas = canvas_of(striped(60, 90, edge=9), 40)  # resized to 40 x 60: the outer 6 columns each side
    assert canvas.shape == (3, 40, 60)
    centre_square = canvas[:, :, 10:50].float()
    assert centre_square[0].max() < 100 and centre_square[2].max() < 100  # the old layout: no red, no blue
    augment = make("metric", 32, 3)
    torch.manual_seed(0)
    crops = augment.ops[0](canvas.expand(256, 3, 40, 60).float() / 255)  # the crop
    red = (crops[:, 0] > 0.5).flatten(1).any(1)
    blue = (crops[:, 2] > 0.5).flatten(1).any(1)
    assert 20 <= int(red.sum()) <= 236 and 20 <= int(blue.sum()) <= 236, (int(red.sum()), int(blue.sum()))
    assert crops.max() < 0.99  # the fill (1.0) never enters a crop
    views = augment(canvas.expand(8, 3, 40, 60))
    assert views.shape == (8, 3, 32, 32)


def test_image_boxes_find_each_image_on_its_canvas():
    from pipeline.data.augment import image_boxes

    batch = torch.stack([canvas_of(striped(60, 90, 9), 40), canvas_of(striped(30, 40, 4), 40),
                         canvas_of(striped(90, 60, 9), 40), canvas_of(striped(40, 120, 9), 40)])
    # 3:2 fills the 60-column canvas; 4:3 is 53 wide; a portrait is cut to a 40 x 40 square; 3:1 to 60 columns.
    assert image_boxes(batch.float() / 255).tolist() == [[0, 0, 60, 40], [3, 0, 53, 40], [10, 0, 40, 40],
                                                         [0, 0, 60, 40]]


def test_full_scale_canvas_crop_is_the_whole_image_resized():
    """Crop scale (1, 1) on a 4:3 image (a ratio RandomResizedCrop may draw): the crop is the whole image,
    not the canvas, bilinearly resized as kornia's crop resizes it (align_corners=True)."""
    from pipeline.data.augment import RandomResizedCrop

    image = torch.randint(0, 255, (3, 30, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    canvas = canvas_of(image, 36).float() / 255  # 36 x 48 image on a 54-wide canvas, columns 3-50
    crop = RandomResizedCrop((32, 32), scale=(1.0, 1.0))(canvas.expand(4, 3, 36, 54))
    whole = torch.nn.functional.interpolate(canvas[None, :, :, 3:51], size=(32, 32), mode="bilinear",
                                            align_corners=True)
    torch.testing.assert_close(crop, whole.expand(4, 3, 32, 32), rtol=0, atol=1e-5)


def test_canvas_crop_boxes_are_drawn_as_torchvision_draws_them():
    """Box statistics of RandomResizedCrop.sample against torchvision's RandomResizedCrop.get_params on the
    same 60 x 90 image: mean left, top, width and height within 4 standard errors, fallbacks included
    (scale up to 1 on a 3:2 image often draws no fitting crop)."""
    from torchvision.transforms import v2

    from pipeline.data.augment import RandomResizedCrop

    n = 4000
    torch.manual_seed(0)
    ours = RandomResizedCrop((32, 32), scale=(0.08, 1.0)).sample(torch.tensor([[7, 3, 90, 60]]).expand(n, 4))
    ours = (ours - torch.tensor([7, 3, 0, 0])).double()
    image = torch.zeros(3, 60, 90)
    reference = torch.tensor([v2.RandomResizedCrop.get_params(image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
                              for _ in range(n)], dtype=torch.float64)[:, [1, 0, 3, 2]]  # (top, left, h, w)
    assert (ours[:, 0] + ours[:, 2] <= 90).all() and (ours[:, 1] + ours[:, 3] <= 60).all() and (ours >= 0).all()
    error = (ours.var(0) / n + reference.var(0) / n).sqrt()
    assert ((ours.mean(0) - reference.mean(0)).abs() <= 4 * error).all(), (ours.mean(0), reference.mean(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_canvas_crop_runs_on_cuda():
    canvas = canvas_of(striped(60, 90, 9), 40).expand(8, 3, 40, 60).cuda()
    augment = make("metric", 32, 3).to("cuda")
    y, again = seeded(augment, canvas, 7), seeded(augment, canvas, 7)
    assert y.device.type == "cuda" and y.shape == (8, 3, 32, 32) and torch.equal(y, again)
    assert unnormalise(y, 3).max() < 0.99  # no fill in any crop


def test_a_crop_draws_area_and_aspect_ratio_as_torchvision_does():
    """The batched crop's boxes on a 32 x 32 image against torchvision's RandomResizedCrop.get_params, 10,000
    draws each: means of the area fraction and of the log aspect ratio within 4 standard errors, and the 10th,
    25th, 50th, 75th and 90th percentiles within 0.02 (area fraction) and 0.03 (log ratio). Both sides round
    to whole pixels, so the quantiles of the two samples take the same lattice of values."""
    from torchvision.transforms import v2

    from pipeline.data.augment import RandomResizedCrop

    n, side = 10_000, 32
    torch.manual_seed(0)
    ours = RandomResizedCrop((16, 16), scale=(0.08, 1.0)).sample(torch.tensor([[0, 0, side, side]]).expand(n, 4))
    image = torch.zeros(3, side, side)
    reference = torch.tensor([v2.RandomResizedCrop.get_params(image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
                              for _ in range(n)], dtype=torch.float64)  # (top, left, h, w)
    assert (ours[:, 0] + ours[:, 2] <= side).all() and (ours[:, 1] + ours[:, 3] <= side).all() and (ours >= 0).all()

    def statistics(width: torch.Tensor, height: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (width * height / side ** 2).double(), (width / height).double().log()

    mine = statistics(ours[:, 2], ours[:, 3])
    theirs = statistics(reference[:, 3], reference[:, 2])
    levels = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    for name, a, b, tolerance in (("area", mine[0], theirs[0], 0.02), ("log ratio", mine[1], theirs[1], 0.03)):
        error = (a.var() / n + b.var() / n).sqrt()
        assert abs(a.mean() - b.mean()) <= 4 * error, (name, a.mean(), b.mean())
        gap = (a.quantile(levels) - b.quantile(levels)).abs()
        assert (gap <= tolerance).all(), (name, a.quantile(levels), b.quantile(levels))


def test_colour_jitter_with_given_factors_is_torchvisions_per_image():
    """Each adjustment of the batched ColorJitter, with factors fixed per image, against torchvision's
    functional ops applied image by image in the same order."""
    from torchvision.transforms.v2 import functional as TF

    from pipeline.data.augment import ColorJitter

    torch.manual_seed(0)
    x = noise_batch(6, 3, 12).float() / 255
    jitter = ColorJitter(0.8, 0.8, 0.8, 0.2, p=1.0)
    params = jitter.sample(len(x), x.device)
    params["applied"][1] = False  # an image the op leaves as it is
    ours = jitter.apply(x, params)
    reference = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                 "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
    for i, image in enumerate(x):
        expected = image
        if params["applied"][i]:
            for name in params["order"]:
                expected = reference[name](expected, float(params[name][i]))
        torch.testing.assert_close(ours[i], expected, rtol=0, atol=2e-3 if "hue" in params["order"] else 1e-5)


RESAMPLING_KERNELS = {"aten::upsample_bilinear2d", "aten::_upsample_bilinear2d_aa", "aten::upsample_nearest2d",
                      "aten::upsample_bicubic2d", "aten::grid_sampler_2d"}


@pytest.mark.parametrize("kind, channels, size", [("simclr", 3, 32), ("mocov2", 3, 64), ("metric", 3, 32),
                                                  ("simclr", 1, 28), ("cifar", 3, 32)])
def test_an_augmentation_call_is_a_few_kernels_with_no_host_sync(kind, channels, size):
    """At batch 256: at most 2 resize / resampling kernels per call (kornia's crop ran 256, one per image)
    and no `item` / `_local_scalar_dense` (a host sync; kornia's colour jitter and blur ran 4-5)."""
    from torch.profiler import ProfilerActivity, profile

    augment = make(kind, size, channels)
    x = noise_batch(256, channels, size)
    augment(x)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        augment(x)
    names = [event.name for event in trace.events()]
    resizes = [n for n in names if n in RESAMPLING_KERNELS]
    assert len(resizes) <= 2, resizes
    syncs = [n for n in names if n in ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero")]
    assert not syncs, syncs


def test_the_blur_is_kornias_gaussian_blur_with_the_sigma_it_draws():
    """GaussianBlur at p = 1 against kornia's gaussian_blur2d with the same per-image sigma (its first draw)."""
    from kornia.filters import gaussian_blur2d

    from pipeline.data.augment import GaussianBlur

    x = noise_batch(5, 3, 20).float() / 255
    torch.manual_seed(4)
    sigma = 0.1 + 1.9 * torch.rand(5, 1)
    torch.manual_seed(4)
    ours = GaussianBlur(5, (0.1, 2.0), p=1.0)(x)
    expected = gaussian_blur2d(x, (5, 5), sigma.expand(5, 2), border_type="reflect")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
