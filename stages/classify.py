"""DVC stages `classifier_teacher@TEACHER` (`classify teacher --teacher T`) and
`classifier_student@TEACHER-STUDENT-METHOD-SEED` (`classify student --teacher T --student S --method M
--seed N`): classifier distillation (`pipeline.wiring.classify`). A student's `--seed` (one of `seeds`) sets
its initial weights, augmentation stream and batch order; the teacher trains under params.yaml's `seed`."""
from __future__ import annotations

from pipeline.wiring.common import load, run_stage, teacher_or_student


def main(argv: list[str]) -> None:
    from pipeline.setting import Setting
    from pipeline.wiring import classify

    named = teacher_or_student(argv, __doc__, Setting.CLASSIFICATION.method_key, lambda teacher: Setting.CLASSIFICATION)
    params = load()
    if isinstance(named, str):
        classify.train_teacher(params, named, argv)
    else:
        classify.train_student(params, params.checked(named), argv)


if __name__ == "__main__":
    run_stage(main)
