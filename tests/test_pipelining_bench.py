"""bench/pipelining.py: its table has a row per K, every timed step trained, and a step that
trained nothing fails the bench instead of being compared with a critical path that trains."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^\s*K\s+step s\s+sample s\s+train s")


def run_bench(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "pipelining.py"), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)


def table_rows(stdout: str) -> dict[int, list[str]]:
    """K -> the row's columns, from the lines under the table's header."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if HEADER.match(line)) + 1
    rows = {}
    for line in lines[start:]:
        if not re.match(r"^\s*\d+\s", line):
            break
        columns = line.split()
        rows[int(columns[0])] = columns
    return rows


@pytest.mark.e2e
def test_every_k_row_and_every_timed_step_trained():
    proc = run_bench("--ks", "0", "1", "2", "--steps", "4", "--latency", "0.5",
                     "--max_tokens", "48", "--no_seed_loop")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every timed step trained tokens" in proc.stdout
    rows = table_rows(proc.stdout)
    assert sorted(rows) == [0, 1, 2], proc.stdout
    for k, columns in rows.items():
        step_s, critical_s = float(columns[1]), float(columns[7])
        min_trained_tokens = int(columns[6].replace(",", ""))
        assert step_s > 0 and critical_s > 0, (k, columns)
        assert min_trained_tokens > 0, (k, columns)
    assert "headline: K=0" in proc.stdout and "the throughput of K=0" in proc.stdout


@pytest.mark.e2e
def test_a_step_that_trains_nothing_fails_the_bench():
    # tiny-chat never writes an answer tag, so every group's rewards tie and no step trains.
    proc = run_bench("--model", "tiny-chat", "--ks", "0", "--steps", "3", "--latency", "0",
                     "--batch_size", "2", "--group_size", "2", "--max_tokens", "4",
                     "--no_seed_loop")
    assert proc.returncode != 0
    assert "K=0: steps [2] trained no tokens" in proc.stderr, proc.stderr[-3000:]
