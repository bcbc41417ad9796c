"""DVC stages `teacher_export@TEACHER` (`export teacher --teacher T`), `transfer_export@...` and
`metric_transfer_export@TEACHER-STUDENT-LOSS-SEED` (`export student --teacher T --student S --loss L --seed N`):
export a trained embedding model to ONNX, with its int8 variant, and measure it deployed
(`pipeline.wiring.export`)."""
from __future__ import annotations

from pipeline.wiring.common import load, run_stage, teacher_or_student


def main(argv: list[str]) -> None:
    from pipeline.wiring import export

    params = load()
    named = teacher_or_student(argv, __doc__, "loss", lambda teacher: params.teacher(teacher).setting)
    if isinstance(named, str):
        export.export_teacher(params, named)
    else:
        export.export_student(params, params.checked(named))


if __name__ == "__main__":
    run_stage(main)
