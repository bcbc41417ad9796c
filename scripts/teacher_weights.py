"""How much the relaxed contrastive loss can learn from a trained teacher: the mean of its soft pair labels
w_ij = exp(-||t_i - t_j||^2 / sigma) (Kim et al., CVPR 2021, Sec. 3) over same-class and other-class pairs
of train images, with the teacher embedding its students receive and the loss's own `teacher_weights`.

Why: the loss attracts every pair by w_ij and repels it by 1 - w_ij, so what it transfers is the gap
between the two means. A teacher whose normalised embeddings sit in a narrow cone gives every pair
nearly the same label, while scale-free losses (RKD divides distances by their mean) still see its
ranking. Train images only: a diagnostic must not look at the test split.

Usage, after the teacher's stage has run (reads params.yaml and outputs/teachers/TEACHER/model.pt):
  python scripts/teacher_weights.py TEACHER [--loss NAME] [--images N]
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor


def class_pair_means(values: Tensor, labels: Tensor) -> tuple[float, float]:
    """Mean of a square pair matrix over same-class pairs (i != j) and over other-class pairs."""
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    other = labels[:, None] != labels[None, :]
    if not same.any() or not other.any():
        raise ValueError("need at least two images of one class and two classes")
    return values[same].mean().item(), values[other].mean().item()


def main(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="a teacher of params.yaml's `teachers`")
    parser.add_argument("--loss", default="relaxed", help="a relaxed_contrastive entry of `losses` (its sigma)")
    parser.add_argument("--images", type=int, default=2000, help="train images to sample (seed 0)")
    args = parser.parse_args(argv)
    if args.images < 4:
        raise ValueError(f"--images must be at least 4, got {args.images}")

    from pipeline.config import load_params
    from pipeline.data.augment import build_augmentation
    from pipeline.data.loading import load_images
    from pipeline.losses import registry
    from pipeline.models.embedding_model import teacher_embedding
    from pipeline.models.loading import load_teacher
    from pipeline.stage_spec import teacher_dir
    from pipeline.report import RELAXED

    params = load_params("params.yaml")
    if args.teacher not in params.teachers:
        raise KeyError(f"teachers.{args.teacher} is not in params.yaml (declared: {', '.join(params.teachers)})")
    if args.loss not in params.losses or params.losses[args.loss].name != RELAXED:
        relaxed = [name for name, loss in params.losses.items() if loss.name == RELAXED]
        raise KeyError(f"losses.{args.loss} is not a relaxed_contrastive entry of params.yaml "
                       f"(those are: {', '.join(relaxed) or 'none'})")
    teacher_cfg = params.teachers[args.teacher]
    loss = registry.build(RELAXED, **params.losses[args.loss].params)
    teacher, _ = load_teacher(teacher_dir(args.teacher) / "model.pt", teacher_cfg)

    images = load_images(params.data, "train", teacher_cfg.train_classes)
    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.images]
    preprocess = build_augmentation("none", params.data.image_size, images.channels, images.mean, images.std)
    with torch.no_grad():
        embedded = teacher_embedding(teacher, preprocess(images.images[rows]), teacher_cfg.transfer_embedding)
    labels = images.labels[rows]
    w_same, w_other = class_pair_means(loss.teacher_weights(embedded), labels)
    unit = torch.nn.functional.normalize(embedded, dim=1)
    cos_same, cos_other = class_pair_means(unit @ unit.T, labels)
    return (f"teacher {args.teacher} ({teacher_cfg.transfer_embedding}), losses.{args.loss} sigma {loss.params.sigma}, "
            f"{len(rows)} train images: mean w same-class {w_same:.3f}, other-class {w_other:.3f} "
            f"(gap {w_same - w_other:.3f}); mean cosine same-class {cos_same:.3f}, other-class {cos_other:.3f}")


if __name__ == "__main__":
    from pipeline.config import ConfigError

    try:
        print(main(sys.argv[1:]))
    except (KeyError, ValueError, FileNotFoundError, ConfigError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        sys.exit(1)
