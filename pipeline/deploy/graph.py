"""The deployable graph of a trained model: uint8 images in, the evaluated embedding out, the evaluation's
preprocessing (scale, centre crop, normalisation) inside, so a runtime needs nothing of this project.

Exported with torch's exporter (`torch.onnx.export(dynamo=True)`, the maintained path; the TorchScript one is
deprecated) with a dynamic batch axis, and checked against the PyTorch model on the test images before the
file is written: every row's cosine above `MIN_COSINE`, and every query's nearest neighbour the same up to
float ties (so Recall@1 is the same but for those ties; both are recorded). The file names the model file
it was exported from (its sha256 in the ONNX metadata), so a stale one is refused when opened.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.data import ImageSet
from pipeline.data.augment import build_augmentation
from pipeline.integrity import DamagedFileError, first_safe_line

INPUT, OUTPUT = "images", "embedding"
SOURCE_KEY = "pipeline.source_sha256"  # ONNX metadata: the sha256 of the model.pt it was exported from
MIN_COSINE = 0.9999  # per row, ONNX vs PyTorch (issue 30)
# Two gallery items whose squared distances to a query differ by less than this share of the squared norms
# involved are a tie: the evaluation scores 2 q.g - |g|^2 in float32 (pipeline.eval.neighbours), which cannot
# order them (8 float32 epsilons), and the runtimes may order them either way. Measured: a student with
# squared norms near 2,700 had two neighbours of one query 2.8169 and 2.8162 apart, ordered one way by
# PyTorch and the other by ONNX Runtime (the exact order is ONNX's); a barely trained tiny student flipped
# Recall@1 from 0.4630 to 0.4648 so, every row's cosine at 1.000000.
TIE_TOLERANCE = 1e-6


class Deployable(nn.Module):
    """`model` behind the evaluation's preprocessing (`build_augmentation("none")`): what `evaluate` scores."""

    def __init__(self, model: nn.Module, images: ImageSet, image_size: int) -> None:
        super().__init__()
        self.preprocess = build_augmentation("none", image_size, images.channels, images.mean, images.std)
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))


class ExportMismatchError(ValueError):
    """The exported graph does not compute what the PyTorch model computes."""


def export_onnx(deployable: Deployable, test: ImageSet, path: Path, source_sha256: str,
                distance: str, batch_size: int = 256) -> dict[str, float]:
    """Export `deployable` to `path` (atomically), checked on `test`'s images first; the check's numbers."""
    import onnx

    deployable.eval()
    example = test.images[:2].contiguous()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        program = torch.onnx.export(deployable, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True,
                                    optimize=True, verbose=False)
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        for node in proto.graph.node:  # the exporter's per-node provenance holds this checkout's file paths:
            del node.metadata_props[:]  # the same model would give other bytes in another clone
        onnx.helper.set_model_props(proto, {SOURCE_KEY: source_sha256})
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        check = compare_with_torch(tmp, deployable, test, distance, batch_size)
        if check["min_cosine"] <= MIN_COSINE or check["nearest_differing"] > 0:
            raise ExportMismatchError(
                f"{path}: the exported graph differs from the PyTorch model on the test images (lowest cosine "
                f"{check['min_cosine']:.6f}; {check['nearest_differing']:.0f} queries find another nearest "
                f"neighbour, not a float tie; Recall@1 {check['onnx_recall@1']:.4f} vs {check['torch_recall@1']:.4f})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return check


def compare_with_torch(path: Path, deployable: Deployable, test: ImageSet, distance: str,
                       batch_size: int = 256) -> dict[str, float]:
    """The ONNX and PyTorch embeddings of `test` compared: the lowest per-row cosine; each one's Recall@1 (the
    evaluation's leave-one-out retrieval); how many queries find a different nearest neighbour through ONNX,
    as float ties (`TIE_TOLERANCE`, judged in float64 on the PyTorch embedding) and otherwise."""
    from pipeline.eval.neighbours import iter_nearest_neighbours

    onnx_x = torch.from_numpy(embed(session(path), test.images, batch_size))
    with torch.inference_mode():
        torch_x = torch.cat([deployable(test.images[i:i + batch_size]) for i in range(0, len(test), batch_size)])
    cosine = nn.functional.cosine_similarity(onnx_x.double(), torch_x.double(), dim=1)

    def nearest(x: torch.Tensor) -> torch.Tensor:
        own = torch.arange(len(x))
        return torch.cat([found[:, 0] for _, _, found in iter_nearest_neighbours(x.float(), x.float(), 1,
                                                                                   distance=distance, self_indices=own)])

    torch_nn, onnx_nn = nearest(torch_x), nearest(onnx_x)

    def recall(found: torch.Tensor) -> float:  # Recall@1, leave-one-out: the evaluation's, from its neighbours
        return float((test.labels[found] == test.labels).double().mean())

    differ = (torch_nn != onnx_nn).nonzero().flatten()
    reference = torch_x.double()
    if distance == "cosine":
        reference = nn.functional.normalize(reference, dim=1)
    queries, first, second = reference[differ], reference[torch_nn[differ]], reference[onnx_nn[differ]]
    gap = ((queries - second).pow(2).sum(1) - (queries - first).pow(2).sum(1)).abs()
    scale = queries.pow(2).sum(1) + torch.maximum(first.pow(2).sum(1), second.pow(2).sum(1))
    ties = gap <= TIE_TOLERANCE * scale
    return {"min_cosine": float(cosine.min()), "onnx_recall@1": recall(onnx_nn), "torch_recall@1": recall(torch_nn),
            "nearest_tied": int(ties.sum()), "nearest_differing": int((~ties).sum())}


def session(path: Path, threads: int = 0, source_sha256: str | None = None):
    """An ONNX Runtime session on `path` (`threads` intra-op threads; 0: its default). A file that is not an
    ONNX model of this pipeline, or (given `source_sha256`) one exported from another model file, is refused
    in one line naming it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        opened = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for a missing or damaged file
        raise DamagedFileError(f"ONNX model {path} cannot be loaded ({first_safe_line(err)})") from None
    found = opened.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
    if found is None:
        raise DamagedFileError(f"ONNX model {path} does not name the model file it was exported from: not an "
                               "export of this pipeline; re-run its export stage")
    if source_sha256 is not None and found != source_sha256:
        raise DamagedFileError(f"ONNX model {path} is stale: exported from a model file with sha256 {found[:12]}, "
                               f"not the current one ({source_sha256[:12]}); re-run its export stage")
    return opened


def embed(opened, images: torch.Tensor, batch_size: int = 256):
    """Float32 embeddings (numpy) of uint8 `images` through an ONNX Runtime session."""
    import numpy as np

    return np.concatenate([opened.run([OUTPUT], {INPUT: images[i:i + batch_size].numpy()})[0]
                           for i in range(0, len(images), batch_size)])
