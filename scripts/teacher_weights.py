"""The relaxed loss's label gap of a trained teacher (`pipeline.eval.label_gap`, which the teacher stage
also writes into the report) for any relaxed_contrastive entry of `losses` and any number of images.

Usage, after the teacher's stage has run (reads params.yaml and outputs/teachers/TEACHER/model.pt):
  python scripts/teacher_weights.py TEACHER [--loss NAME] [--images N]
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="a teacher of params.yaml's `teachers`")
    parser.add_argument("--loss", default="relaxed", help="a relaxed_contrastive entry of `losses` (its sigma)")
    parser.add_argument("--images", type=int, default=2000, help="train images to sample (seed 0)")
    args = parser.parse_args(argv)
    if args.images < 4:
        raise ValueError(f"--images must be at least 4, got {args.images}")

    from pipeline.config import RELAXED, load_params
    from pipeline.data.loading import load_images
    from pipeline.eval.label_gap import teacher_label_gap
    from pipeline.losses import loss_class
    from pipeline.models.loading import load_teacher
    from pipeline.stage_spec import teacher_dir

    params = load_params("params.yaml")
    if args.teacher not in params.teachers:
        raise KeyError(f"teachers.{args.teacher} is not in params.yaml (declared: {', '.join(params.teachers)})")
    if args.loss not in params.losses or params.losses[args.loss].name != RELAXED:
        relaxed = [name for name, loss in params.losses.items() if loss.name == RELAXED]
        raise KeyError(f"losses.{args.loss} is not a relaxed_contrastive entry of params.yaml "
                       f"(those are: {', '.join(relaxed) or 'none'})")
    teacher_cfg = params.teachers[args.teacher]
    sigma = loss_class(RELAXED).Params(**params.losses[args.loss].params).sigma
    teacher, _ = load_teacher(teacher_dir(args.teacher) / "model.pt", teacher_cfg)
    images = load_images(params.data, "train", teacher_cfg.train_classes)
    count = min(args.images, len(images))
    gap = teacher_label_gap(teacher, images, teacher_cfg.transfer_embedding, sigma, params.data.image_size, seed=0,
                            count=count)
    return (f"teacher {args.teacher} ({teacher_cfg.transfer_embedding}), losses.{args.loss} sigma {gap['label_gap_sigma']}, "
            f"{count} train images: mean w same-class {gap['label_w_same']:.3f}, other-class {gap['label_w_other']:.3f} "
            f"(gap {gap['label_gap']:.3f}); mean cosine same-class {gap['cosine_same']:.3f}, "
            f"other-class {gap['cosine_other']:.3f}")


if __name__ == "__main__":
    from pipeline.config import ConfigError

    try:
        print(main(sys.argv[1:]))
    except (KeyError, ValueError, FileNotFoundError, ConfigError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        sys.exit(1)
