"""bench/sft_ahead.py: a line per depth, each compared with depth 0, after checking that every
depth trained to the same losses."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_every_depth_is_timed_and_compared_with_depth_0():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sft_ahead.py"), "--latencies",
                           "0.3", "--steps", "8", "--repeats", "1", "--depths", "0", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {int(m[1]): m[2] for m in re.finditer(
        r"--submit_ahead (\d+): +([\d.]+) ms a step", proc.stdout)}
    assert sorted(lines) == [0, 1], proc.stdout
    assert all(float(ms) > 0 for ms in lines.values())
    assert re.search(r"--submit_ahead 1: .*; vs 0: ", proc.stdout), proc.stdout
