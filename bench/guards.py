"""What every benchmark here does before it prints a comparison, so that none can print nonsense.

- Warm-up: each side runs untimed first (imports, allocator, first-call paths).
- Sides alternate, in a rotating order (A B, B A, ...), so that load from other processes and
  slow drift hit every side alike; rounds pair the sides' timings.
- Several repeats; medians with the interquartile range (IQR) of the per-round values.
- Refusals: a comparison is not printed when a side did no work, a timing is not a positive
  finite number, an overhead comes out negative (it cannot be: the measurement is broken), or
  the spread of the per-round comparisons is wider than the effect.

- Same thread: a baseline measured in the server's process runs on the server's worker thread
  (`on_worker`), where the engine computes. `bench/http_overhead.py` once printed "overhead
  -220 ms" with its direct side on another thread: once a second thread of a process has run
  torch's parallel operations, small operations run up to 9x slower (docs/benchmarks.md).

tests/test_bench_guards.py holds these rules to account.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of some values."""

    median: float
    low: float  # 25th percentile
    high: float  # 75th percentile
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = sorted(values)
        if len(values) == 1:
            return cls(values[0], values[0], values[0], 1)
        low, _, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), low, high, len(values))


@dataclass(frozen=True)
class Verdict:
    """What a comparison may print: `value` is None when it was refused, and `text` says why."""

    value: float | None
    text: str

    @property
    def refused(self) -> bool:
        return self.value is None


def alternate(sides: Mapping[str, Callable[[], T]], repeats: int, warmup: int = 1
              ) -> dict[str, list[T]]:
    """Each side `warmup` times untimed, then `repeats` rounds with every side once per round,
    the order rotating each round; each side's results in round order."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(sides[name]())
    return results


def timed(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _bad_timings(sides: Mapping[str, Sequence[float]]) -> str | None:
    for name, values in sides.items():
        if not values:
            return f"{name} has no timings"
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            return f"{name} has a timing that is not a positive number ({bad[0]!r})"
    lengths = {len(v) for v in sides.values()}
    if len(lengths) != 1:
        return "the sides ran different numbers of rounds, so rounds cannot be paired"
    return None


def overhead(with_s: Sequence[float], without_s: Sequence[float], unit: float = 1e-3,
             unit_name: str = "ms") -> Verdict:
    """What doing the work `with` something costs over doing it `without`, from paired rounds
    (round i of each side ran back to back). Refused when a timing is invalid, when the paired
    differences are negative beyond their spread (impossible: a broken measurement), or when
    their spread reaches across zero (the overhead is lost in the noise)."""
    problem = _bad_timings({"with": with_s, "without": without_s})
    if problem:
        return Verdict(None, f"refused: {problem}")
    diffs = Spread.of([w - wo for w, wo in zip(with_s, without_s, strict=True)])
    shown = (f"{diffs.median / unit:.1f} {unit_name} (IQR {diffs.low / unit:.1f}.."
             f"{diffs.high / unit:.1f})")
    if diffs.high < 0:
        return Verdict(None, f"refused: negative overhead {shown}; the two sides do not "
                             "measure the same work")
    if diffs.low <= 0:
        return Verdict(None, f"refused: within the noise, {shown} spans zero")
    return Verdict(diffs.median, shown)


def speed_ratio(ours_s: Sequence[float], theirs_s: Sequence[float], ours_work: float,
                theirs_work: float) -> Verdict:
    """How many times faster ours is (their time over ours, per paired round; > 1: ours is
    faster). Refused when a side did no work, a timing is invalid, or the per-round ratios'
    spread straddles 1 more widely than the median ratio differs from 1."""
    if ours_work <= 0 or theirs_work <= 0:
        side = "ours" if ours_work <= 0 else "theirs"
        return Verdict(None, f"refused: {side} did no work")
    problem = _bad_timings({"ours": ours_s, "theirs": theirs_s})
    if problem:
        return Verdict(None, f"refused: {problem}")
    ratios = Spread.of([t / o for o, t in zip(ours_s, theirs_s, strict=True)])
    shown = f"{ratios.median:.2f}x (IQR {ratios.low:.2f}..{ratios.high:.2f}x, {ratios.n} rounds)"
    straddles = ratios.low < 1 < ratios.high
    if straddles and (ratios.high - ratios.low) > 2 * abs(ratios.median - 1):
        return Verdict(None, f"refused: no difference beyond the noise, {shown}")
    return Verdict(ratios.median, shown)


def on_worker(server: Any, lane: str, call: Callable[[], T]) -> T:
    """Run `call` on `server`'s worker thread, as a request's job would, and wait for it."""
    from local_tinker.scheduler import Job

    finished = threading.Event()
    outcome: dict[str, Any] = {}

    def on_done(result: Any, exc: BaseException | None) -> None:
        outcome.update(result=result, exc=exc)
        finished.set()

    server.scheduler.submit(Job(lane, lambda _: [call()], None, on_done))
    finished.wait()
    if outcome["exc"] is not None:
        raise outcome["exc"]
    return outcome["result"]


def load_note() -> str:
    """The load averages, for every printed result (this machine is shared)."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} CPUs"
