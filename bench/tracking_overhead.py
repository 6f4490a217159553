"""What W&B tracking costs a run: the same script run with `--wandb_mode offline` (history,
samples table, checkpoint artifacts, W&B's service) and `--wandb_mode disabled` (the run files
only), same seed and flags, as separate processes, alternating which goes first.

Each pair gives the overhead offline / disabled - 1 of CPU time (the script's process and
everything it started and reaped: W&B's service, git) and of wall time. CPU time is the robust
measure on a shared machine: another job's load stretches wall time, much less the CPU a run
needs. Reported: each mode's median, the median overhead per pair and its 95% bootstrap interval
(pairs resampled); pairs are added until both intervals are narrower than --width (3 points) or
--max_pairs. No ratio is printed from a run that failed, and the load average is printed with the
numbers (the machine is shared).

`--breakdown` instead runs the script twice in this process (disabled, then offline) and says
where an offline run's tracking time goes: the training loop's time inside Tracker calls (what
tracking adds to its critical path), and the CPU of the W&B worker thread (W&B's start, logging,
tables, artifacts), of W&B's other threads and of W&B's service process.

    python bench/tracking_overhead.py [--script sft|rl] [--steps 200] [--max_pairs 30]
    python bench/tracking_overhead.py --breakdown
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("disabled", "offline")


@dataclass
class Measured:
    wall_s: float
    cpu_s: float


def script_flags(script: str, steps: int) -> list[str]:
    """The bench's run: the README's kind of local run, with samples, evals and checkpoints."""
    if script == "sft":
        return ["train_sft.py", "--max_steps", str(steps), "--epochs", str(steps),
                "--sample_every", "10", "--save_every", "25", "--eval_every", "10"]
    return ["train_rl.py", "--max_steps", str(steps), "--batch_size", "4", "--group_size", "4",
            "--max_tokens", "64", "--sample_every", "2", "--save_every", "4",
            "--eval_problems", "12", "--concise_bonus_after", "0", "--noconcise_needs_answer"]


def run_once(flags: list[str], mode: str, log_dir: Path) -> Measured:
    """One run as its own process; CPU time from the rusage of reaped children (the script, and
    W&B's service, which the script reaps at exit)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.setdefault("OMP_NUM_THREADS", "1")  # as the tests run; threads are not the point here
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *flags, "--backend", "local", "--wandb_mode", mode,
                           "--log_dir", str(log_dir)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:  # a failed run measures nothing: no ratio from it
        raise SystemExit(f"{mode} run failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(wall, cpu)


def median_interval(values: list[float], rounds: int = 2000, seed: int = 0
                    ) -> tuple[float, float, float]:
    """The median and its 95% bootstrap percentile interval."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(rounds))
    return statistics.median(values), medians[int(0.025 * rounds)], medians[int(0.975 * rounds)]


def overhead(pairs: list[dict[str, Measured]], field: str) -> list[float]:
    return [getattr(p["offline"], field) / getattr(p["disabled"], field) - 1 for p in pairs]


def breakdown(script: str, steps: int) -> None:
    """One offline run in this process, after a disabled one (imports, model, caches), with its
    tracking time attributed (see the module docstring)."""
    import functools
    import threading

    import psutil

    sys.path.insert(0, str(ROOT))
    import train_rl
    import train_sft
    from common.config import parse_config
    from common.tracking import Tracker

    in_tracker = [0.0, 0]  # seconds in outermost Tracker calls of the main thread, depth

    def timed(method):  # type: ignore[no-untyped-def]
        @functools.wraps(method)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            outermost = threading.current_thread() is threading.main_thread() and \
                in_tracker[1] == 0
            in_tracker[1] += outermost
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if outermost:
                    in_tracker[0] += time.perf_counter() - started
                    in_tracker[1] = 0
        return wrapper

    for name in ("__init__", "log", "log_table", "log_checkpoint", "log_final_checkpoint",
                 "set_summary", "truncate_after", "finish"):
        setattr(Tracker, name, timed(getattr(Tracker, name)))
    module = train_sft if script == "sft" else train_rl
    flags = script_flags(script, steps)[1:]
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    process = psutil.Process()

    def thread_cpu() -> dict[str, float]:
        times = {t.id: t.user_time + t.system_time for t in process.threads()}
        return {t.name: times.get(t.native_id or -1, 0.0) for t in threading.enumerate()}

    def children_cpu() -> float:
        total = 0.0
        for child in process.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    threads: dict[str, float] = {}  # CPU per thread, read as the run finishes
    timed_finish = Tracker.finish

    def finish(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.wait_for_wandb()
        threads.update(thread_cpu())  # the W&B worker thread ends with the run
        return timed_finish(self, *args, **kwargs)
    Tracker.finish = finish
    for mode in MODES:
        in_tracker[0] = 0.0
        threads.clear()
        service, cpu, started = children_cpu(), time.process_time(), time.perf_counter()
        module.main(parse_config(module.Config, [*flags, "--backend", "local", "--wandb_mode",
                                                 mode, "--log_dir", str(root / mode)]))
        wall = time.perf_counter() - started
        wandb_threads = {k: v for k, v in threads.items() if "wandb" in k.lower()}
        print(f"{mode}: {wall:.2f} s wall, {time.process_time() - cpu:.2f} s cpu in this process;"
              f" the loop spent {in_tracker[0]:.2f} s in Tracker calls "
              f"({in_tracker[0] / wall:.1%} of wall)")
        if mode == "offline":
            for name, seconds in sorted(wandb_threads.items()):
                print(f"  thread {name}: {seconds:.2f} s cpu")
            print(f"  W&B's service (and git): {children_cpu() - service:.2f} s cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", choices=["sft", "rl"], default="sft")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: sft 200, rl 8)")
    parser.add_argument("--min_pairs", type=int, default=5)
    parser.add_argument("--max_pairs", type=int, default=30)
    parser.add_argument("--width", type=float, default=0.03,
                        help="stop once both intervals are narrower than this (0.03: 3 points)")
    parser.add_argument("--breakdown", action="store_true",
                        help="where an offline run's tracking time goes, in this process")
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.script == "sft" else 8)
    if args.breakdown:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        breakdown(args.script, steps)
        return
    flags = script_flags(args.script, steps)
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    load_before = os.getloadavg()
    print(f"{args.script}, {steps} steps; load average {load_before[0]:.1f} at the start",
          flush=True)
    for mode in MODES:  # warm-up: file caches, the dataset cache, the model's first build
        run_once(flags, mode, root / f"warmup-{mode}")
    pairs: list[dict[str, Measured]] = []
    for i in range(args.max_pairs):
        order = MODES if i % 2 == 0 else MODES[::-1]  # drift in the load cancels out
        pairs.append({mode: run_once(flags, mode, root / f"{i}-{mode}") for mode in order})
        line = "  ".join(f"{m} {pairs[-1][m].wall_s:6.2f}s wall {pairs[-1][m].cpu_s:6.2f}s cpu"
                         for m in MODES)
        print(f"pair {i + 1:2}: {line}  (load {os.getloadavg()[0]:.1f})", flush=True)
        if len(pairs) >= args.min_pairs and all(
                (high - low) < args.width
                for _, low, high in (median_interval(overhead(pairs, f))
                                     for f in ("cpu_s", "wall_s"))):
            break
    print(f"\n{len(pairs)} pairs; load average {load_before[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    for field, name in (("cpu_s", "cpu"), ("wall_s", "wall")):
        medians = {m: statistics.median(getattr(p[m], field) for p in pairs) for m in MODES}
        mid, low, high = median_interval(overhead(pairs, field))
        width = "" if high - low < args.width else f" (wider than {args.width:.0%}: noisy)"
        print(f"{name:4}: disabled {medians['disabled']:.2f} s, offline {medians['offline']:.2f} s"
              f" (medians); overhead {mid:+.1%} [{low:+.1%}, {high:+.1%}] 95%{width}")


if __name__ == "__main__":
    main()
