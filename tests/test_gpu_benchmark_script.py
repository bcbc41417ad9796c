"""benchmarks/gpu_throughput.py is what a GPU session runs first (scripts/gpu_smoke.sh): it must not rot
between the sessions that have a GPU. `--quick` runs every row at batch 64 on whatever device there is."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 2 minutes on 2 CPU cores
def test_the_gpu_throughput_script_prints_every_row_and_ratio():
    result = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--quick", "--device", "cpu"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("network", "augmentation", "fit", "lightly", "lightly bf16"):
        rates = re.findall(rf"^  {row} +[\d,]+  \(median", result.stdout, flags=re.MULTILINE)
        assert len(rates) == 2, (row, result.stdout)  # one per workload
    assert result.stdout.count("fit / network") == 2 and "SOP-sized evaluation" in result.stdout
