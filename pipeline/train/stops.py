"""How a training run stops early, as exceptions the stages map to exit codes (`stages.common`); kept
free of torch so a stage can name them without importing it."""


class TrainingInterrupted(SystemExit):
    """SIGTERM / SIGINT arrived: a checkpoint was saved and the process exits non-zero (143 / 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept untouched."""
