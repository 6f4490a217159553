"""Does off-policy pipelined RL learn as well as on-policy? Held-out accuracy after K=0 vs K=1.

Runs `train_rl.py` on the local default model (tiny-instruct) with its default batch shape and
reward, the same seed, for the same number of steps at `--max_steps_off_policy` 0 and 1, each
ending with train_rl's own held-out evaluation of the final weights (greedy, `--eval_problems`
of the shipped held-out set). Prints each run's wall time, mean staleness, last training reward
and held-out accuracy with its 95% Wilson interval, and whether the intervals overlap (the
issue's bar: K=1 learns as well, and faster).

    python bench/off_policy_quality.py              # 20 steps each: ~15 minutes on 2 busy cores
    python bench/off_policy_quality.py --steps 3 --eval_problems 30 --ks 0   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_rl  # noqa: E402
from common.config import LOCAL_DEFAULT_MODEL  # noqa: E402
from common.evaluation import spread, wilson_interval  # noqa: E402


@dataclass
class Outcome:
    k: int
    wall_s: float
    staleness: float
    last_reward: float
    correct: int
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)


def train_and_score(k: int, steps: int, eval_problems: int, seed: int, run_dir: Path
                    ) -> Outcome:
    """One train_rl run at --max_steps_off_policy k; its final held-out accuracy as counts."""
    cfg = train_rl.Config(backend="local", model=LOCAL_DEFAULT_MODEL, log_dir=run_dir,
                          wandb_mode="disabled", max_steps=steps, seed=seed,
                          max_steps_off_policy=k, eval_problems=eval_problems, sample_every=0,
                          save_every=0)
    started = time.perf_counter()
    train_rl.main(cfg)
    wall = time.perf_counter() - started
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = history[-1]
    n = len(spread(train_rl.make_task(cfg).load_heldout(), eval_problems))
    # eval/accuracy is correct/n; the count itself is what the interval needs.
    correct = round(final["eval/accuracy"] * n)
    staleness = sum(h.get("rl/staleness", 0.0) for h in history) / len(history)
    return Outcome(k, wall, staleness, final["reward/mean"], correct, n)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval_problems", type=int, default=300,
                        help="held-out problems scored at the end (300: the whole set)")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1],
                        help="--max_steps_off_policy values to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="1: on a shared 2-core machine two threads ran 9x slower")
    parser.add_argument("--keep", type=Path, help="keep the runs in this directory")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)  # this process's own torch work
    # The embedded servers' workers set their threads themselves (local_tinker/threads.py).
    os.environ["LOCAL_TINKER_THREADS"] = str(args.torch_threads)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-off-policy-"))
    outcomes = [train_and_score(k, args.steps, args.eval_problems, args.seed, root / f"{i}-k{k}")
                for i, k in enumerate(args.ks)]
    print(f"{LOCAL_DEFAULT_MODEL}, {args.steps} steps of train_rl's defaults, seed {args.seed}; "
          f"held-out accuracy of the final weights (greedy), 95% Wilson interval")
    print(f"{'K':>2} {'wall s':>7} {'staleness':>9} {'last reward':>11} {'held-out acc':>12} "
          f"{'95% interval':>16} {'n':>4}")
    for o in outcomes:
        low, high = o.interval
        print(f"{o.k:>2} {o.wall_s:>7.0f} {o.staleness:>9.2f} {o.last_reward:>11.3f} "
              f"{o.correct / o.n:>12.3f} {f'[{low:.3f}, {high:.3f}]':>16} {o.n:>4}")
    if len(outcomes) >= 2:
        first, second = outcomes[0], outcomes[1]
        same = overlap(first.interval, second.interval)
        print(f"K={second.k} vs K={first.k}: intervals {'overlap' if same else 'do NOT overlap'}; "
              f"K={second.k}'s wall time {second.wall_s / first.wall_s:.2f}x K={first.k}'s")


if __name__ == "__main__":
    main()
