"""What W&B tracking costs: the same runs with W&B offline (+ tables, metrics.jsonl) and with
`--wandb_mode disabled` (metrics.jsonl only), same seed, alternating, best of `--repeats`.

    python bench/tracking_overhead.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_rl  # noqa: E402
import train_sft  # noqa: E402


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sft_steps", type=int, default=200,
                        help="W&B's start and finish cost ~0.3 s: short runs show mostly that")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))

    def sft(mode: str, i: int) -> float:
        return timed(lambda: train_sft.main(train_sft.Config(
            backend="local", log_dir=root / f"sft-{mode}-{i}", wandb_mode=mode,
            max_steps=args.sft_steps, epochs=args.sft_steps,
            sample_every=10, save_every=25, eval_every=10)))

    def rl(mode: str, i: int) -> float:
        return timed(lambda: train_rl.main(train_rl.Config(
            backend="local", log_dir=root / f"rl-{mode}-{i}", wandb_mode=mode, batch_size=4,
            group_size=4, max_tokens=64, max_steps=8, concise_bonus_after=0,
            concise_needs_answer=False, sample_every=2, save_every=4, eval_problems=12)))

    sft("disabled", -1)  # warm-up: imports, model build, dataset cache
    print(f"{'run':6}{'disabled s':>12}{'offline s':>11}{'overhead':>10}")
    overheads = []
    for name, run in (("sft", sft), ("rl", rl)):
        times = {"disabled": [], "offline": []}
        for i in range(args.repeats):
            for mode in ("disabled", "offline"):
                times[mode].append(run(mode, i))
        off, on = min(times["disabled"]), min(times["offline"])
        overheads.append(on / off - 1)
        print(f"{name:6}{off:>12.2f}{on:>11.2f}{on / off - 1:>+10.1%}")
    print(f"headline: W&B offline tracking adds {overheads[0]:+.1%} (SFT) and "
          f"{overheads[1]:+.1%} (RL) wall time")


if __name__ == "__main__":
    main()
