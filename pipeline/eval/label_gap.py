"""How much the relaxed contrastive loss can learn from a trained teacher: the mean of its soft pair labels
w_ij = exp(-||t_i - t_j||^2 / sigma) (Kim et al., CVPR 2021, Sec. 3) over same-class and over other-class
pairs of train images, computed on the embedding the teacher hands its students.

Why: the loss attracts every pair by w_ij and repels it by 1 - w_ij, so what it transfers is the gap
between the two means. A teacher whose normalised embeddings sit in a narrow cone gives every pair nearly
the same label, while scale-free losses (RKD divides distances by their mean) still see its ranking. The
teacher stage writes it beside the teacher's scores, so the report shows why relaxed does or does not get a
signal. Train images only: a diagnostic must not look at the test split.
"""
from __future__ import annotations

import torch
from torch import Tensor

LABEL_GAP_IMAGES = 2000  # train images sampled (seeded): the pair matrices are this size squared


def class_pair_means(values: Tensor, labels: Tensor) -> tuple[float, float]:
    """Mean of a square pair matrix over same-class pairs (i != j) and over other-class pairs."""
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    other = labels[:, None] != labels[None, :]
    if not same.any() or not other.any():
        raise ValueError("need at least two images of one class and two classes")
    return values[same].mean().item(), values[other].mean().item()


def label_gap(embedded: Tensor, labels: Tensor, sigma: float) -> dict[str, float]:
    """The relaxed loss's mean soft label over same-class and other-class pairs, their gap, and the mean
    cosine of the same pairs, for embeddings `embedded` (the loss normalises them itself)."""
    from pipeline.losses.relaxed_contrastive import RelaxedContrastiveLoss

    w_same, w_other = class_pair_means(RelaxedContrastiveLoss(sigma=sigma).teacher_weights(embedded), labels)
    unit = torch.nn.functional.normalize(embedded, dim=1)
    cos_same, cos_other = class_pair_means(unit @ unit.T, labels)
    return {"label_gap": w_same - w_other, "label_w_same": w_same, "label_w_other": w_other,
            "label_gap_sigma": float(sigma), "cosine_same": cos_same, "cosine_other": cos_other}


def teacher_label_gap(teacher, images, kind: str, sigma: float, image_size: int, seed: int,
                      count: int = LABEL_GAP_IMAGES) -> dict[str, float]:
    """`label_gap` of `teacher`'s transferred embedding (`kind`) on `count` seeded train images."""
    from pipeline.data.augment import build_augmentation
    from pipeline.models.embedding_model import teacher_embedding

    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    preprocess = build_augmentation("none", image_size, images.channels, images.mean, images.std)
    with torch.no_grad():
        embedded = teacher_embedding(teacher, preprocess(images.images[rows]), kind)
    return label_gap(embedded, images.labels[rows], sigma)
