"""How many threads torch computes on: one per usable core that other processes leave free.

Measured on a 2-core machine shared with other jobs: torch's default (a thread per core) is
~9% faster than one thread when the machine is idle, and 7-9x slower when other processes keep
the cores busy, because each op's threads wait for one another at barriers while the scheduler
runs someone else. The loss under load dwarfs the gain when idle, so a core counts as free only
when other processes leave nearly all of it (FREE_CORE_SLACK; docs/benchmarks.md has the
measurements behind the rule).

"Other processes" is measured, not read from the load average, which lags by a minute and
counts this process too: the busy time of the usable cores in /proc/stat over a short window,
less this process's own CPU time in the same window. The worker re-checks every RECHECK_S
seconds and follows the load when it changes.

An explicit choice wins: the `threads` argument (`serve --threads`, the scripts' `--threads`),
then LOCAL_TINKER_THREADS, then OMP_NUM_THREADS (which torch itself reads).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

ENV = "LOCAL_TINKER_THREADS"
# The free capacity (cores less the cores other processes keep busy) is rounded down after
# adding this slack, so background noise (a few % of a core) does not cost an idle machine its
# second thread, while a core a quarter busy with someone else is not counted as free.
FREE_CORE_SLACK = 0.25
WINDOW_S = 0.3  # the first measurement's window (overlaps model loading where it can)
RECHECK_S = 20.0  # later measurements average over this long, so one burst does not flip it
OVERRIDE_HINT = "--threads N or OMP_NUM_THREADS overrides"


class InvalidThreads(ValueError):
    """A thread count the user set is not a whole number >= 1; the message names where."""


def choose_threads(cores: int, others_busy: float) -> int:
    """The rule: the cores other processes leave free (rounded down after FREE_CORE_SLACK),
    at least one, at most `cores`."""
    free = cores - max(0.0, others_busy)
    return max(1, min(cores, math.floor(free + FREE_CORE_SLACK)))


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: busy time of the usable cores, and this process's."""

    at: float
    busy_s: float
    own_s: float


def read_sample() -> CpuSample | None:
    """Now's CpuSample from /proc/stat; None where there is none (not Linux)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy;
        # steal is time the hypervisor gave to someone else, so it is busy for us too.
        values = [int(v) for v in fields[:8]]
        busy += sum(values) - values[3] - values[4]
    own = os.times()
    return CpuSample(time.monotonic(), busy / ticks, own.user + own.system)


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """Cores kept busy by other processes between two samples, on average."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return 0.0
    return max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / elapsed


def explicit_threads(argument: int | None, env: Mapping[str, str]) -> tuple[int | None, str] | None:
    """(threads, where the choice came from) when the user chose; threads None means torch
    already follows OMP_NUM_THREADS. None when nobody chose."""
    if argument is not None:
        if argument < 1:
            raise InvalidThreads(f"--threads must be a whole number >= 1, got {argument}")
        return argument, f"--threads {argument}"
    if env.get(ENV, "").strip():
        value = env[ENV].strip()
        if not value.isdigit() or int(value) < 1:
            raise InvalidThreads(f"{ENV} must be a whole number >= 1, got {value!r}")
        return int(value), f"{ENV}={value}"
    if env.get("OMP_NUM_THREADS", "").strip():
        return None, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS'].strip()}"
    return None


def _plural(n: int) -> str:
    return f"{n} torch thread{'s' if n != 1 else ''}"


class ThreadPolicy:
    """Sets torch's thread count on the thread that computes (torch keeps it per thread) and,
    unless the user chose, re-checks it as the load changes. `apply()` runs before each job."""

    def __init__(self, argument: int | None = None, env: Mapping[str, str] | None = None,
                 sample: Callable[[], CpuSample | None] = read_sample,
                 cores: Callable[[], int] = usable_cores,
                 announce: Callable[[str], None] | None = None) -> None:
        self._explicit = explicit_threads(argument, os.environ if env is None else env)
        self._sample = sample
        self._cores = cores()
        self._announce = announce or (lambda line: print(line, file=sys.stderr, flush=True))
        self._last = None if self._explicit else sample()  # the first window starts now
        self.threads: int | None = None  # what apply() set, once it ran
        self.reason = ""

    def apply(self) -> None:
        """On the computing thread: set the thread count the first time, then follow the load
        every RECHECK_S seconds (announcing a change)."""
        if self.threads is None:
            self._first()
            return
        if (self._explicit is not None or self._last is None
                or time.monotonic() - self._last.at < RECHECK_S):
            return
        now = self._sample()
        if now is None:
            return
        threads, reason = self._measured(self._last, now)
        self._last = now
        if threads != self.threads:
            self._set(threads, reason, "now ")

    def _first(self) -> None:
        if self._explicit is not None:
            threads, source = self._explicit
            if threads is not None:
                torch.set_num_threads(threads)
            self._set(torch.get_num_threads(), source, "")
            return
        now = None
        if self._last is not None:
            wait = WINDOW_S - (time.monotonic() - self._last.at)
            if wait > 0:
                time.sleep(wait)
            now = self._sample()
        if now is None or self._last is None:  # nothing to measure: torch's default stands
            self._last = None
            self._set(torch.get_num_threads(), f"{self._cores} cores, load not measurable; "
                      f"{OVERRIDE_HINT}", "")
            return
        threads, reason = self._measured(self._last, now)
        self._last = now
        self._set(threads, reason, "")

    def _measured(self, before: CpuSample, after: CpuSample) -> tuple[int, str]:
        others = others_busy(before, after)
        return (choose_threads(self._cores, others),
                f"{self._cores} cores, {others:.1f} of them busy with other processes; "
                f"{OVERRIDE_HINT}")

    def _set(self, threads: int, reason: str, prefix: str) -> None:
        torch.set_num_threads(threads)
        self.threads, self.reason = threads, reason
        self._announce(f"local backend: {prefix}{_plural(threads)} ({reason})")
