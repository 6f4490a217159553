"""Wall time of the README's headline command, `python train_rl.py --lr 2e-4`, and its curve.

Runs the command exactly as a new user types it (no key, so the local backend and its default
model; W&B offline), in a fresh directory, and prints the wall time and the per-step curve
(reward, sampled accuracy, mean words). With `--plot PATH` it also draws the curve from the
run's metrics.jsonl (the README's figure: docs/headline_rl.png).

    python bench/headline_rl.py [--plot docs/headline_rl.png] [--keep DIR]

Wall time includes interpreter start, imports and the final held-out evaluation: what the
user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["train_rl.py", "--lr", "2e-4"]


def run_headline(workdir: Path) -> tuple[float, Path]:
    """Run the command in `workdir`; (wall seconds, run directory)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TINKER_API_KEY", "WANDB_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / COMMAND[0]), *COMMAND[1:]], cwd=workdir,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(COMMAND)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                 f"{done.stderr[-2000:]}")
    print(done.stdout.strip().splitlines()[-1])  # the run's own `done:` line
    return wall, next((workdir / "runs").glob("train_rl-*"))


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def plot(history: list[dict], path: Path, title: str) -> None:
    """Reward, sampled accuracy and mean words per step, as the seed's three panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    panels = [("reward/mean", "reward (mean)", "b"), ("rl/accuracy", "sampled accuracy", "g"),
              ("completions/mean_words", "mean words", "r")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (key, label, color) in zip(axes, panels, strict=True):
        ax.plot(steps, [h[key] for h in history], f"{color}-o")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_xticks(steps)
        ax.axvspan(6.5, steps[-1] + 0.5, color="0.9", zorder=0)  # concise bonus on (step > 6)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plot", type=Path, help="write the curve to this PNG")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep the run")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="headline_rl_"))
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    wall, run_dir = run_headline(workdir)
    history = read_history(run_dir)
    print(f"{'step':>4} | {'reward':>6} | {'acc':>5} | {'words':>5} | {'clipped':>7} | trained")
    for h in history:
        print(f"{h['step']:>4} | {h['reward/mean']:>6.2f} | {h['rl/accuracy']:>5.0%} | "
              f"{h['completions/mean_words']:>5.1f} | {h['completions/clipped_frac']:>7.0%} | "
              f"{'yes' if h.get('tokens/trained') else 'no'}")
    print(f"python {' '.join(COMMAND)}: {wall:.0f} s wall on {os.cpu_count()} CPUs "
          f"(1-minute load average {load:.2f} at the start); run in {run_dir}")
    if args.plot:
        plot(history, args.plot, f"python {' '.join(COMMAND)} (local default model, "
                                 f"{len(history)} steps; shaded: concise bonus on)")


if __name__ == "__main__":
    main()
