"""train_sft.py's `--submit_ahead`: steps per second with the next steps' calls sent before this
step's results are read (1, 2) against waiting for each step (0), against a slow service and
against the embedded local server as a user runs it.

The local server with an injected latency per call (LOCAL_TINKER_LATENCY_S: every call resolves no
sooner than that after it was sent, and round trips of calls in flight overlap, as network ones do)
stands in for Tinker, which this machine cannot reach; Tinker's clock cycles are not modelled. Each
run is `python train_sft.py` in a process of its own (tiny-chat, the shipped `foo` set, no held-out
split, samples or checkpoints in between, W&B off); the sides alternate (bench/guards.py). Per run:
the wall time per step between records, from step depth + 2 (the depth's steps are in flight) over
whole groups of depth + 1 steps (sent together, they finish together) before the last step (it
saves the final checkpoint). Every side must end with the same losses, step by step: the calls run
in order whatever the depth, so a difference would mean the sides did not do the same work, and the
bench refuses to compare.

    python bench/sft_ahead.py                          # about six minutes on 2 idle cores
    python bench/sft_ahead.py --latencies 0.4 --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.guards import Spread, alternate, load_note, speed_ratio  # noqa: E402


def run_sft(depth: int, latency: float, steps: int, work: Path) -> tuple[float, list[float]]:
    """(mean seconds a step over the steady steps, the losses) of one train_sft.py run."""
    log_dir = Path(tempfile.mkdtemp(dir=work)) / "run"
    env = {**os.environ, "LOCAL_TINKER_LATENCY_S": str(latency)}
    subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--backend", "local",
                    "--model", "tiny-chat", "--dataset", "foo", "--eval_fraction", "0",
                    "--epochs", "1000000", "--max_steps", str(steps), "--sample_every", "0",
                    "--save_every", "0", "--wandb_mode", "disabled", "--submit_ahead",
                    str(depth), "--log_dir", str(log_dir)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    # Steady: once the depth's steps are in flight, and before the last step (it saves). Steps
    # sent together finish together, so the span covers whole groups of depth + 1 steps.
    first = depth + 2
    last = first + (len(rows) - 1 - first) // (depth + 1) * (depth + 1)
    span = rows[last - 1]["_time"] - rows[first - 1]["_time"]
    return span / (last - first), [row["train/loss"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 0.4],
                        help="seconds per call; 0: the embedded server as users run it")
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per run (default: 100 without latency, 16 with)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if 0 not in args.depths:
        parser.error("--depths must include 0, the side the others are compared with")
    work = Path(tempfile.mkdtemp(prefix="bench-sft-ahead-"))
    print(load_note())
    for latency in args.latencies:
        steps = args.steps or (16 if latency else 100)
        if steps < 2 * max(args.depths) + 4:
            parser.error(f"--steps must be >= twice the deepest depth + 4 to time steady "
                         f"steps, got {steps}")
        runs = alternate({depth: (lambda d=depth, lat=latency, n=steps: run_sft(d, lat, n, work))
                          for depth in args.depths}, args.repeats)
        losses = {depth: {tuple(r[1]) for r in results} for depth, results in runs.items()}
        if len(set().union(*losses.values())) != 1:
            sys.exit(f"refused: the depths' losses differ at latency {latency} s, so they did "
                     "not do the same work")
        print(f"latency {latency * 1000:.0f} ms per call, {steps} steps a run, "
              f"{args.repeats} rounds")
        base = [r[0] for r in runs[0]]
        for depth, results in runs.items():
            spread = Spread.of([r[0] for r in results])
            line = (f"  --submit_ahead {depth}: {spread.median * 1000:7.1f} ms a step "
                    f"(IQR {spread.low * 1000:.1f}..{spread.high * 1000:.1f})")
            if depth:
                line += "; vs 0: " + speed_ratio([r[0] for r in results], base, 1, 1).text
            print(line)
    print(load_note())


if __name__ == "__main__":
    main()
