"""What tracking costs a run: the same runs with W&B offline (history, samples table, checkpoint
artifacts, run files) and with `--wandb_mode disabled` (run files only), same seed, alternating.

Three measures, because a few percent of wall time drowns in the noise of a shared machine:
- wall s: each mode's best of `--repeats`, and offline / disabled - 1 (the headline of #18);
- in tracker s: time the training loop spent inside Tracker calls (open, log, tables,
  checkpoints, summaries, finish), i.e. tracking on the loop's critical path, and its share of
  the run's wall time; it includes the run files, so it is not zero with W&B disabled;
- cpu s: CPU time of this process plus W&B's service process (wandb-core) during the run;
  offline minus disabled is what tracking costs in CPU, wherever it runs.
In-tracker time and CPU are medians of the repeats. One process runs everything, as a sweep
would: W&B's imports and its service start (~1-2 s) fall on the first offline run only, which
is reported on its own line.

    python bench/tracking_overhead.py [--repeats 3] [--sft_steps 200]
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # a dependency of accelerate / peft, so always installed with the project

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_rl  # noqa: E402
import train_sft  # noqa: E402
from common.tracking import Tracker  # noqa: E402

TRACKER_CALLS = ("__init__", "log", "log_table", "log_checkpoint", "log_final_checkpoint",
                 "log_image", "set_summary", "summary", "truncate_after", "finish")


@dataclass
class Measured:
    wall_s: float
    in_tracker_s: float
    cpu_s: float


class TrackerClock:
    """Seconds spent inside Tracker calls (outermost calls only: one may call another)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def install(self) -> None:
        for name in TRACKER_CALLS:
            setattr(Tracker, name, self._timed(getattr(Tracker, name)))

    def _timed(self, method: Callable) -> Callable:
        @functools.wraps(method)
        def timed(*args, **kwargs):
            self._depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - started
        return timed


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its live children (W&B's service)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            children += times.user + times.system
        except psutil.Error:  # ended meanwhile
            pass
    return own.ru_utime + own.ru_stime + children


def measure(clock: TrackerClock, run: Callable[[], object]) -> Measured:
    clock.seconds = 0.0
    cpu, started = cpu_seconds(), time.perf_counter()
    run()
    return Measured(time.perf_counter() - started, clock.seconds, cpu_seconds() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sft_steps", type=int, default=200,
                        help="W&B's start and finish cost ~0.3 s: short runs show mostly that")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    clock = TrackerClock()
    clock.install()

    def sft(mode: str, i: int) -> Measured:
        return measure(clock, lambda: train_sft.main(train_sft.Config(
            backend="local", log_dir=root / f"sft-{mode}-{i}", wandb_mode=mode,
            max_steps=args.sft_steps, epochs=args.sft_steps,
            sample_every=10, save_every=25, eval_every=10)))

    def rl(mode: str, i: int) -> Measured:
        return measure(clock, lambda: train_rl.main(train_rl.Config(
            backend="local", log_dir=root / f"rl-{mode}-{i}", wandb_mode=mode, batch_size=4,
            group_size=4, max_tokens=64, max_steps=8, concise_bonus_after=0,
            concise_needs_answer=False, sample_every=2, save_every=4, eval_problems=12)))

    sft("disabled", -1)  # warm-up: imports, model build, dataset cache
    first = sft("offline", -1)  # pays W&B's imports and service start, once per process
    rows, headline = [], []
    for name, run in (("sft", sft), ("rl", rl)):
        runs: dict[str, list[Measured]] = {"disabled": [], "offline": []}
        for i in range(args.repeats):
            for mode in ("disabled", "offline"):
                runs[mode].append(run(mode, i))
        off, on = runs["disabled"], runs["offline"]
        wall_off, wall_on = min(m.wall_s for m in off), min(m.wall_s for m in on)
        for mode, measured in runs.items():
            wall = min(m.wall_s for m in measured)
            tracker = statistics.median(m.in_tracker_s for m in measured)
            share = statistics.median(m.in_tracker_s / m.wall_s for m in measured)
            cpu = statistics.median(m.cpu_s for m in measured)
            rows.append(f"{name:5}{mode:10}{wall:>9.2f}{tracker:>14.2f}{share:>9.1%}{cpu:>9.2f}")
        cpu_extra = (statistics.median(m.cpu_s for m in on)
                     - statistics.median(m.cpu_s for m in off))
        share_on = statistics.median(m.in_tracker_s / m.wall_s for m in on)
        headline.append(f"{name}: wall offline/disabled {wall_on / wall_off - 1:+.1%}, in "
                        f"tracker {share_on:.1%} of wall, W&B {cpu_extra:+.2f} cpu s")
    print(f"{'run':5}{'mode':10}{'wall s':>9}{'in tracker s':>14}{'share':>9}{'cpu s':>9}")
    print("\n".join(rows))
    print(f"first offline sft run of the process: {first.wall_s:.2f} s wall, "
          f"{first.in_tracker_s:.2f} s in tracker ({first.in_tracker_s / first.wall_s:.1%})")
    print("headline: " + "; ".join(headline))


if __name__ == "__main__":
    main()
