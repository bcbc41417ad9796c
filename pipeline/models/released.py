"""The released Proxy-Anchor source models of the relaxed-contrastive paper, as this project's teachers.

Kim et al. (CVPR 2021) transfer from BN-Inception and ResNet-50 sources (512-d) trained with
Proxy-Anchor; their code (github.com/tjddus9597/LabelRelaxation-CVPR21, ``train_target.py``) loads a
source with ``load_state_dict(torch.load(ckpt)['model_state_dict'])`` into the modules of
``net/bn_inception.py`` / ``net/resnet.py``, which Proxy-Anchor (github.com/tjddus9597/Proxy-Anchor-CVPR2020)
defines with the same parameter names. Those modules keep the backbone under ``model.`` (torchvision's
names for ResNets, Cadene's for BN-Inception), add ``model.gap`` / ``model.gmp`` (no weights) and the
linear layer ``model.embedding``, and keep the unused ImageNet classifier (``model.fc`` /
``model.last_linear``).

Their forward: backbone map -> global average pool + global max pool, summed (not normalised) ->
``model.embedding`` -> L2-normalised when ``is_norm`` / ``l2_norm`` is set (the default: ``--l2-norm 1``
in Proxy-Anchor, ``--source-norm 1`` for sources in LabelRelaxation). ``EmbeddingModel`` built here
computes the same thing: ``avg+max`` pooling, the same linear layer, and ``normalize_embedding=True``
by default, so ``model(x)`` equals their embedding. Their input convention differs for BN-Inception only:
they feed Caffe BGR in [0, 255] minus (104, 117, 128); ``pipeline.models.bn_inception.BNInception``
takes the pipeline's ImageNet-normalised RGB and converts it, so ``model(x_rgb)`` equals their forward on
the converted image. ResNets take ImageNet-normalised RGB in both.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.models.embedding_model import EmbeddingModel, ModelSpec, build_model

if TYPE_CHECKING:
    from pipeline.config import TeacherConfig

RELEASED_BACKBONES = ("bn_inception", "resnet18", "resnet50")


def load_released_teacher(
    path: str | Path,
    backbone: str,
    embedding_dim: int = 512,
    normalize_embedding: bool = True,
) -> tuple[EmbeddingModel, ModelSpec]:
    """Load an official Proxy-Anchor / LabelRelaxation checkpoint (``{'model_state_dict': ...}``).

    Returns the model in eval mode and its spec. Every backbone and embedding tensor must be present
    with the shape of ``backbone`` + ``embedding_dim``; the classifier weights are ignored, BN
    ``num_batches_tracked`` counters may be absent (older PyTorch), and a ``module.`` prefix
    (Proxy-Anchor's ``nn.DataParallel`` runs) is removed. Anything else is refused with a one-line
    ``ValueError`` naming the first offending key and the shapes.
    """
    if backbone not in RELEASED_BACKBONES:
        raise ValueError(f"released teachers exist for {RELEASED_BACKBONES}, got {backbone!r}")
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or objects beyond tensors: one line, no trace
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        found = list(payload)[:5] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: no 'model_state_dict' entry (the official layout); found {found}")
    state = dict(payload["model_state_dict"])
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}

    spec = ModelSpec(
        backbone=backbone,
        in_channels=3,
        embedding_dim=embedding_dim,
        pooling="avg+max",
        normalize_embedding=normalize_embedding,
    )
    with torch.device("meta"):  # shapes only: a refused file costs no weight initialisation
        shapes = build_model(spec).state_dict()
    official_to_ours = {_official_key(backbone, k): k for k in shapes}
    _check(path, backbone, embedding_dim, state, {o: shapes[k] for o, k in official_to_ours.items()})
    model = build_model(spec)
    converted = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    converted.update({official_to_ours[k]: v for k, v in state.items() if k in official_to_ours})
    model.load_state_dict(converted, strict=True)
    return model.eval(), spec


def load_released(name: str, path: str | Path, teacher: TeacherConfig) -> tuple[EmbeddingModel, ModelSpec]:
    """Teacher `name` from the official source checkpoint at `path` (params.yaml's ``released_teachers.NAME``)
    with the backbone and embedding dimension ``teachers.NAME.model`` declares; a missing file, or one that
    does not hold that official layout, is refused in one line naming the key, before any compute."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"released_teachers.{name}: {path} does not exist (nothing is downloaded: "
                                "put the official file there, README \"Paper-scale runs\")")
    try:
        return load_released_teacher(path, teacher.model.backbone, teacher.model.embedding_dim)
    except ValueError as err:
        raise ValueError(f"released_teachers.{name}: {err}") from None


def _official_key(backbone: str, key: str) -> str:
    """This project's ``EmbeddingModel`` key -> the official module's key for the same tensor."""
    if key.startswith("head.linear."):
        return "model.embedding." + key.removeprefix("head.linear.")
    key = key.removeprefix("backbone.")
    if backbone == "bn_inception":  # same names as Cadene's module
        return "model." + key
    key = re.sub(r"^stem\.0\.", "conv1.", key)
    key = re.sub(r"^stem\.1\.", "bn1.", key)
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
    return "model." + key


def _check(
    path: Path,
    backbone: str,
    embedding_dim: int,
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
) -> None:
    """One line naming the first unexpected key, wrong shape and missing key (a renamed key is both)."""
    unused = "model.last_linear." if backbone == "bn_inception" else "model.fc."  # the ImageNet classifier
    unexpected, wrong_shape, missing = [], [], []
    for key, value in state.items():
        if key.startswith(unused):
            continue
        if key not in expected:
            unexpected.append(f"unexpected key {key!r} (shape {list(value.shape)})")
        elif value.shape != expected[key].shape:
            shapes = f"has shape {list(value.shape)}, expected {list(expected[key].shape)}"
            wrong_shape.append(f"key {key!r} {shapes}")
    for key, value in expected.items():
        if key not in state and not key.endswith("num_batches_tracked"):
            missing.append(f"missing key {key!r} (expected shape {list(value.shape)})")
    problems = unexpected + wrong_shape + missing
    if problems:
        first = [group[0] for group in (unexpected, wrong_shape, missing) if group]
        raise ValueError(
            f"{path} does not match the official {backbone} with a {embedding_dim}-d embedding: "
            f"{'; '.join(first)} ({len(problems)} problem(s) in all)"
        )


def checkpoint_fingerprint(path: str | Path) -> dict[str, str | int]:
    """The file's SHA-256 and size: what dvc.yaml's ``released_teacher`` stage records, so that a replaced
    checkpoint changes a file every teacher stage depends on (DVC re-runs them)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": Path(path).stat().st_size}
