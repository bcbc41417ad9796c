"""DVC stages `classifier_teacher@TEACHER` (`classify teacher --teacher T`) and
`classifier_student@TEACHER-STUDENT-METHOD-SEED` (`classify student --teacher T --student S --method M
--seed N`): classifier distillation (`pipeline.wiring.classify`). A student's `--seed` (one of `seeds`) sets
its initial weights, augmentation stream and batch order; the teacher trains under params.yaml's `seed`."""
from __future__ import annotations

import argparse

from pipeline.wiring.common import load, run_stage


def main(argv: list[str]) -> None:
    from pipeline.replica import Replica
    from pipeline.setting import Setting
    from pipeline.wiring import classify

    if argv[:1] not in (["teacher"], ["student"]):
        argparse.ArgumentParser(description=__doc__).error("the first argument is `teacher` or `student`")
    params = load()
    if argv[0] == "teacher":
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--teacher", required=True)
        classify.train_teacher(params, parser.parse_args(argv[1:]).teacher, argv)
    else:
        replica = Replica.parse(argv[1:], __doc__, Setting.CLASSIFICATION.method_key,
                                lambda teacher: Setting.CLASSIFICATION)
        classify.train_student(params, params.checked(replica), argv)


if __name__ == "__main__":
    run_stage(main)
