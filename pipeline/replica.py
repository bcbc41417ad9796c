"""One trained student, as a value: the (teacher, student, method) cell of a setting's grid and one seed of
params.yaml's `seeds`. It travels whole from the DVC matrix item (its command line) to `fit` (its seed), the
outputs (its folder and model id) and the MLflow run (its stage name and tags).

Its seed is the replica's alone: the student's initial weights, augmentation stream and batch order. The
teachers and the evaluation protocol keep params.yaml's `seed`, so every replica is scored alike.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.setting import Setting

OUTPUTS = Path("outputs")


@dataclass(frozen=True)
class Replica:
    setting: Setting
    teacher: str
    student: str
    method: str  # the grid's loss (transfer settings) or classification method
    seed: int

    @property
    def cell(self) -> str:
        """Its grid cell, the same over seeds: the report aggregates the replicas of a cell under this name."""
        return f"{self.teacher}-{self.student}-{self.method}"

    @property
    def name(self) -> str:
        """The model's id (`simclr-small-relaxed-seed0`): its folder, its evaluation folder, its report rows."""
        return f"{self.cell}-seed{self.seed}"

    @property
    def stage(self) -> str:
        """Its DVC stage, which joins the matrix item's values with '-' (`transfer@simclr-small-relaxed-0`)."""
        return self.stage_of(self.setting.stage)

    def stage_of(self, family: str) -> str:
        """Its stage in the matrix family `family` (its training's, or its export's)."""
        return f"{family}@{self.cell}-{self.seed}"

    @property
    def folder(self) -> Path:
        """Where its model, training metrics and loss curve live."""
        if self.setting is Setting.CLASSIFICATION:
            return OUTPUTS / "classification" / self.name
        return OUTPUTS / "students" / self.name

    @property
    def tags(self) -> dict[str, str | int]:
        """The MLflow tags every run carries, so the UI filters and groups runs by them."""
        return {"setting": self.setting.value, "teacher": self.teacher, "student": self.student,
                "method": self.method, "seed": self.seed}

    def command_args(self) -> str:
        """The stage command's arguments that name this replica (`parse` reads them back). `--setting` only
        where the teacher's own setting is not the replica's (a self-taught student's teacher is a
        self-supervised model)."""
        named = "" if self.setting.teacher_setting is self.setting else f" --setting {self.setting.value}"
        return (f"--teacher {self.teacher} --student {self.student} --{self.setting.method_key} {self.method} "
                f"--seed {self.seed}{named}")

    @classmethod
    def placeholder(cls, setting: Setting) -> "Replica":
        """The replica of a DVC matrix item: its fields are DVC's `${item.*}` references, so the paths and
        names computed from it are dvc.yaml's templates (`pipeline.stage_spec`)."""
        return cls(setting, "${item.teacher}", "${item.student}", f"${{item.{setting.method_key}}}", "${item.seed}")

    @classmethod
    def parse(cls, argv: list[str], description: str, method_key: str,
              setting_of: Callable[[str], Setting]) -> "Replica":
        """The replica a stage command names; `--setting`, else `setting_of(teacher)`, gives its setting (a
        transfer stage's teacher decides it, but for the self-taught setting, whose teachers are self-supervised
        models: `command_args`)."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--teacher", required=True)
        parser.add_argument("--student", required=True)
        parser.add_argument(f"--{method_key}", dest="method", required=True)
        parser.add_argument("--seed", type=int, required=True, help="the replica's seed, one of params.yaml's seeds")
        parser.add_argument("--setting", choices=[s.value for s in Setting if s.teacher_setting is not s],
                            help="the replica's setting, where its teacher's setting is not it")
        args = parser.parse_args(argv)
        setting = Setting(args.setting) if args.setting else setting_of(args.teacher)
        return cls(setting, args.teacher, args.student, args.method, args.seed)


def replicas(grid, setting: Setting, teacher: str, seeds: tuple[int, ...]) -> Iterator[Replica]:
    """Every replica of `teacher` in `grid`, in grid order: student, then method, then seed."""
    for student in grid.student:
        for method in getattr(grid, setting.method_key):
            for seed in seeds:
                yield Replica(setting, teacher, student, method, seed)
