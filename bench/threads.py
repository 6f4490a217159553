"""train_sft.py's wall time with the torch threads the local backend picks, against 1 and 2.

Each run is a fresh `python train_sft.py` process (the Quickstart's command, fewer steps, W&B
off) with its threads set through the environment: `auto` sets nothing, so the local backend
chooses (local_tinker/threads.py) and says what it chose; `1` and `2` set LOCAL_TINKER_THREADS.
Conditions: `idle` (whatever else runs on the machine: other jobs share it, so the load average
is printed with every row) and `hog` (beside N processes spinning `while True: pass`, started
before and killed after the runs). Per condition, every side runs once untimed, then the sides
alternate in rotating order for --repeats rounds; medians and IQRs of the process wall time and
of the training loop alone (sum of time/step), and each side's ratio to the fastest.

    python bench/threads.py                        # ~8 min on 2 cores
    python bench/threads.py --steps 10 --repeats 3 --conditions hog --hog 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.guards import Spread, alternate, load_note, speed_ratio  # noqa: E402

SIDES = ("auto", "1", "2")
CHOSE = re.compile(r"local backend: (?:now )?(\d+) torch threads? \(([^)]*)\)")


def run_sft(side: str, steps: int, work: Path, condition: str) -> dict:
    """One train_sft.py process: its wall time, loop time, and what the backend chose."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "LOCAL_TINKER_THREADS")}
    if side != "auto":
        env["LOCAL_TINKER_THREADS"] = side
    log_dir = Path(tempfile.mkdtemp(prefix=f"threads-{side}-", dir=work))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "train_sft.py", "--max_steps", str(steps), "--wandb_mode", "disabled",
         "--log_dir", str(log_dir), "--save_every", "0", "--sample_every", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"train_sft ({side} threads) failed with exit code {proc.returncode}")
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    choices = CHOSE.findall(proc.stderr)
    run = {"wall_s": wall, "loop_s": sum(r["time/step"] for r in rows), "steps": len(rows),
           "threads": [int(n) for n, _ in choices], "why": choices[0][1] if choices else ""}
    print(f"  {condition} {side:>4}: wall {wall:.1f} s, loop {run['loop_s']:.1f} s, threads "
          f"{run['threads']}, {load_note()}", flush=True)
    return run


def hogs(n: int, duty: float) -> list[subprocess.Popen]:
    """n processes that each keep a core busy `duty` of the time (in 10 ms periods)."""
    spin = ("import time\nwhile True:\n    t = time.perf_counter()\n"
            f"    while time.perf_counter() - t < {duty * 0.01}: pass\n"
            f"    time.sleep({(1 - duty) * 0.01})\n") if duty < 1 else "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]


def measure(condition: str, args: argparse.Namespace, work: Path) -> dict[str, list[dict]]:
    spinning = hogs(args.hog, args.hog_duty) if condition == "hog" else []
    try:
        time.sleep(1.0 if spinning else 0.0)  # let the hogs show up in the CPU counters
        return alternate({side: (lambda side=side: run_sft(side, args.steps, work,
                                                           condition))
                          for side in SIDES}, args.repeats)
    finally:
        for proc in spinning:
            proc.kill()
            proc.wait()


def report(condition: str, runs: dict[str, list[dict]], args: argparse.Namespace,
           load: str) -> None:
    label = (f"beside {args.hog} CPU hog processes busy {args.hog_duty:.0%} of the time"
             if condition == "hog" else "no hog")
    print(f"\n{condition} ({label}; {load} before the runs)")
    print(f"{'threads':10}{'wall s':>9}{'IQR':>14}{'loop s':>9}{'IQR':>14}{'chosen':>8}"
          "  loop time over the fastest side's")
    loops = {side: Spread.of([r["loop_s"] for r in rs]) for side, rs in runs.items()}
    fastest = min(loops, key=lambda side: loops[side].median)
    for side, rs in runs.items():
        wall = Spread.of([r["wall_s"] for r in rs])
        loop = loops[side]
        chosen = sorted({n for r in rs for n in r["threads"]})
        versus = "(fastest)" if side == fastest else speed_ratio(
            [r["loop_s"] for r in runs[fastest]], [r["loop_s"] for r in rs],
            sum(r["steps"] for r in runs[fastest]), sum(r["steps"] for r in rs)).text
        print(f"{side:10}{wall.median:>9.1f}{f'{wall.low:.1f}..{wall.high:.1f}':>14}"
              f"{loop.median:>9.1f}{f'{loop.low:.1f}..{loop.high:.1f}':>14}"
              f"{'/'.join(map(str, chosen)):>8}  {versus}")
    why = {r["why"] for r in runs["auto"]}
    print("auto chose because: " + " | ".join(sorted(why)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="train_sft steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per condition")
    parser.add_argument("--hog", type=int, default=2, help="spinning processes for `hog`")
    parser.add_argument("--hog_duty", type=float, default=1.0,
                        help="share of the time each hog spins (1: always)")
    parser.add_argument("--conditions", nargs="+", default=["idle", "hog"],
                        choices=["idle", "hog"])
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    print(f"train_sft.py, tiny-instruct, {args.steps} steps per run, sides {', '.join(SIDES)} "
          f"threads, {args.repeats} alternated rounds after a warm-up; {load_note()}")
    everything = {}
    for condition in args.conditions:
        load = load_note()
        runs = measure(condition, args, work)
        report(condition, runs, args, load)
        everything[condition] = runs
    print(f"(loop s: the sum of time/step, without process start-up; {load_note()} at the end)")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
