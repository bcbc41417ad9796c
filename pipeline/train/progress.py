"""Progress: a tqdm bar with loss and images/s on a terminal, one log line per epoch otherwise (logs of
DVC stages and batch jobs stay readable instead of filling with carriage returns)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total_steps: int, start_step: int, images_per_step: int, enabled: bool, desc: str) -> None:
        self.images_per_step = images_per_step
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.total_steps = total_steps
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not self.interactive,
                        dynamic_ncols=True)
        self.desc = desc
        self._mark_time = time.perf_counter()
        self._mark_step = start_step
        self._epoch_time = self._mark_time
        self._epoch_step = start_step

    def update(self, step: int, loss: float) -> float:
        """Advance to ``step``; returns images/s since the previous update."""
        now = time.perf_counter()
        rate = (step - self._mark_step) * self.images_per_step / max(now - self._mark_time, 1e-9)
        self._mark_time, self._mark_step = now, step
        if self.interactive:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        return rate

    def end_epoch(self, epoch: int, epochs: int, step: int, loss: float) -> None:
        now = time.perf_counter()
        rate = (step - self._epoch_step) * self.images_per_step / max(now - self._epoch_time, 1e-9)
        self._epoch_time, self._epoch_step = now, step
        if self.enabled and not self.interactive:
            print(f"{self.desc}: epoch {epoch + 1}/{epochs} step {step}/{self.total_steps} "
                  f"loss {loss:.4f} {rate:.0f} img/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
