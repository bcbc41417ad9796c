"""DVC stages `transfer@TEACHER-STUDENT-LOSS-SEED` and `metric_transfer@...`: train one replica of a student
from a frozen teacher with one transfer loss and score it (`pipeline.wiring.transfer`).

`--seed` (one of params.yaml's `seeds`) is the replica's: its initial weights, augmentation stream and batch
order. The teacher's setting picks the transfer section (no --setting argument): the schema holds every grid
to teachers of its own setting, so an argument could only repeat or contradict it."""
from __future__ import annotations

from pipeline.wiring.common import load, run_stage


def main(argv: list[str]) -> None:
    from pipeline.replica import Replica
    from pipeline.wiring.transfer import train_student

    params = load()
    replica = Replica.parse(argv, __doc__, "loss", lambda teacher: params.teacher(teacher).setting)
    train_student(params, params.checked(replica), argv)


if __name__ == "__main__":
    run_stage(main)
