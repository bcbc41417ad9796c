"""GPU smoke check (`pytest -m gpu`, or scripts/gpu_smoke.sh): every recipe of tests/assets/every_recipe_params.yaml
(tests/recipe_support.py: SimCLR, MoCo and Proxy-Anchor teachers; a student with each transfer loss in both settings and each
setting's own-objective control; the classifier teacher and a student with each distillation method) trains
a few steps on CUDA through the stage code path (pipeline.train.recipes / classifier_recipes, then
pipeline.train.loop.fit), with AMP, channels_last and the kornia augmentation on the device, each checked,
not assumed; feature extraction and the retrieval metrics (k-means NMI included) on the device; and
2-process NCCL DDP when two GPUs are visible. Everything here skips without CUDA.
"""

from __future__ import annotations

import copy
import math
import textwrap

import pytest
import torch
from torch import nn

from recipe_support import STEPS, every_recipe_params, probed_fit, recipe_ids, trained_teachers

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def setup():
    """Params, the digits train split and teachers trained STEPS steps on CUDA (bf16)."""
    return trained_teachers(every_recipe_params(), "cuda")


@pytest.mark.parametrize("recipe", recipe_ids())
def test_recipe_trains_on_cuda_with_amp_channels_last_and_augmentation_on_the_device(recipe, setup):
    objective, result, probe = probed_fit(recipe, setup[0], setup, "cuda")
    assert result.steps == STEPS and len(result.losses) == STEPS
    assert all(math.isfinite(loss) for _, loss in result.losses), result.losses
    assert all(p.device.type == "cuda" for p in objective.parameters())
    assert probe.augment_devices == {"cuda"}, "kornia augmentation must run on the batch's device"
    assert probe.conv_dtypes == {torch.bfloat16}, "the forward pass must run under bf16 autocast"
    assert probe.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("recipe", ["teacher-simclr", "student-proxy_anchor-relaxed", "classifier-student-kd"])
def test_fp16_amp_with_its_grad_scaler_trains_finite(recipe, setup):
    _, result, probe = probed_fit(recipe, every_recipe_params(amp="fp16"), setup, "cuda")
    assert len(result.losses) == STEPS and all(math.isfinite(loss) for _, loss in result.losses), result.losses
    assert probe.conv_dtypes == {torch.float16}


def test_feature_extraction_and_retrieval_metrics_on_cuda_match_cpu(setup):
    from pipeline.data.augment import build_augmentation
    from pipeline.data.loading import load_images
    from pipeline.eval.features import extract_features
    from pipeline.eval.retrieval import retrieval_metrics

    params, _, teachers, _ = setup
    test = load_images(params.data, "test")
    model = teachers["proxy_anchor"]
    preprocess = build_augmentation("none", params.data.image_size, test.channels, test.mean, test.std)
    on_cuda, _ = extract_features(model, test.images, batch_size=128, device="cuda", transform=preprocess)
    on_cpu, _ = extract_features(copy.deepcopy(model).cpu(), test.images, batch_size=128, device="cpu",
                                 transform=preprocess)
    assert on_cuda.shape == on_cpu.shape == (len(test), model.embedding_dim)
    assert on_cuda.dtype == torch.float32 and on_cuda.device.type == "cpu"
    cosine = nn.functional.cosine_similarity(on_cuda, on_cpu, dim=1)
    assert float(cosine.min()) > 0.99, "bf16 autocast features must stay close to the float32 CPU ones"
    metrics = retrieval_metrics(on_cuda.cuda(), test.labels.cuda(), ks=(1, 2, 4))  # k-means NMI on CUDA too
    reference = retrieval_metrics(on_cuda, test.labels, ks=(1, 2, 4))
    for name in ("recall@1", "recall@4", "map@r"):
        assert metrics[name] == pytest.approx(reference[name], abs=0.01), name  # near-ties may flip between devices
    assert abs(metrics["nmi"] - reference["nmi"]) < 0.05  # different k-means random streams on CUDA


DDP_SCRIPT = textwrap.dedent('''
    import copy, sys
    import torch
    from torch import nn
    from pipeline import losses
    from pipeline.distributed import rank
    from pipeline.data.loading import load_images
    from pipeline.data.augment import build_augmentation
    from pipeline.models.embedding_model import EmbeddingModel
    from pipeline.models.registry import build_backbone
    from pipeline.train import recipes
    from pipeline.train.loop import fit
    from pipeline.train.objectives import ProxyAnchorObjective, TransferObjective
    from recipe_support import every_recipe_params
    from train_support import train_config

    out = sys.argv[1]
    params = every_recipe_params()
    data = load_images(params.data, "train")
    # Exactness check, as tests/test_train_ddp.py on CPU: GroupNorm nets, no augmentation, float32
    # (amp off, TF32 off), so 2 NCCL processes on a global batch of 64 must make the single-process step.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    augment = build_augmentation("none", 8, 1, data.mean, data.std)

    def model(**kwargs):
        backbone = build_backbone("small_resnet", 1, widths=(8, 16, 16), stem_stride=1,
                                  norm_layer=lambda c: nn.GroupNorm(4, c))
        return EmbeddingModel(backbone, **kwargs)

    config = train_config(epochs=1, max_steps=1, batch_size=64, lr=0.5, momentum=0.0, weight_decay=0.0, amp="off")
    torch.manual_seed(0)
    teacher = model(projection="simclr", projection_dim=8)
    transfer = TransferObjective(model(embedding_dim=6), teacher, augment, losses.build("relaxed_contrastive"),
                                 teacher_embedding_kind="projection")
    proxy = ProxyAnchorObjective(model(embedding_dim=6), augment,
                                 losses.build("proxy_anchor", num_classes=10, embedding_dim=6))
    states = {}
    for name, objective in (("transfer", transfer), ("proxy_anchor", proxy)):
        before = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
        result = fit(objective, data, config, device="cuda")
        after = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
        states[name] = {"before": before, "after": after, "loss": result.losses[0][1]}
    # Smoke: the real teacher recipe (BatchNorm -> SyncBatchNorm under CUDA DDP, bf16, kornia on device).
    objective, _ = recipes.teacher_objective(params, "simclr", data)
    result = fit(objective, data, params.teachers["simclr"].train, device="cuda")
    states["simclr_losses"] = [loss for _, loss in result.losses]
    states["sync_batchnorm"] = sum(isinstance(m, nn.SyncBatchNorm) for m in objective.modules())
    states["backend"] = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    if rank() == 0:
        torch.save(states, out)
''')


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="2-process NCCL DDP needs two visible GPUs")
def test_two_nccl_processes_match_one_process_on_the_global_batch(tmp_path):
    from test_train_ddp import assert_same_step, run

    single, distributed = run(tmp_path, 1, DDP_SCRIPT), run(tmp_path, 2, DDP_SCRIPT)
    assert distributed["backend"] == "nccl" and single["backend"] is None
    assert distributed["sync_batchnorm"] > 0 and single["sync_batchnorm"] == 0
    assert all(math.isfinite(loss) for loss in distributed["simclr_losses"])
    # float32 without TF32: NCCL's reduction order differs from one process's sums; 10x the CPU bound.
    assert_same_step(single, distributed, ("transfer", "proxy_anchor"), loss_rtol=1e-4, update_rtol=1e-3,
                     update_atol=1e-6)


def test_the_evaluation_protocol_keeps_the_features_on_the_device(setup, monkeypatch):
    """`evaluate` on CUDA: every metric receives CUDA tensors (the neighbour search, MAP@R, k-means NMI, kNN
    and the probe run there), the numbers agree with a CPU evaluation, and the embeddings come back to the host."""
    from pipeline.data.loading import load_images
    from pipeline.eval import protocol

    params, images, teachers, _ = setup
    test = load_images(params.data, "test")
    seen: dict[str, set[str]] = {}
    for name in ("retrieval_metrics", "linear_probe", "knn_classify"):
        original = getattr(protocol, name)

        def recording(*args, _name=name, _original=original, **kwargs):
            seen.setdefault(_name, set()).update(a.device.type for a in args if isinstance(a, torch.Tensor))
            return _original(*args, **kwargs)

        monkeypatch.setattr(protocol, name, recording)
    model = copy.deepcopy(teachers["proxy_anchor"])
    on_cuda, embeddings = protocol.evaluate(model.cuda(), images, test, params.evaluation, params.data.image_size, 0)
    assert seen == {"retrieval_metrics": {"cuda"}, "linear_probe": {"cuda"}, "knn_classify": {"cuda"}}
    assert embeddings.device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu, _ = protocol.evaluate(model.cpu(), images, test, params.evaluation, params.data.image_size, 0)
    for key in ("recall@1", "map@r", "knn_top1", "probe_top1"):
        assert on_cuda[key] == pytest.approx(on_cpu[key], abs=0.02), key  # bf16 features on CUDA; near-ties flip


def test_images_that_do_not_fit_the_device_stay_on_the_host_and_train(setup, monkeypatch):
    """`training_images`: with (pretended) little free memory the uint8 images stay on the host, a warning
    says so, and every batch is copied to the device as it is cut."""
    from pipeline.train import loop

    _, images, _, _ = setup
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (images.images.nbytes, 10 * images.images.nbytes))
    with pytest.warns(UserWarning, match="stay on the host"):
        kept = loop.training_images(images.images, torch.device("cuda"))
    assert kept.device.type == "cpu" and kept.data_ptr() == images.images.data_ptr()  # no copy of the set
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * images.images.nbytes, 10 * images.images.nbytes))
    assert loop.training_images(images.images, torch.device("cuda")).device.type == "cuda"
