"""The local RL pipeline of docs/models.md, run as written: warm start -> RL -> evaluate
(~12 minutes).

This is issue #4's yardstick: on 300 held-out problems (temperature 0.3, scored by the task's
reward code) RL must raise accuracy with non-overlapping 95% intervals, and mean words must
fall once the conciseness bonus is on.
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WARM_START = ("python train_sft.py --model tiny-math --dataset arithmetic-solutions "
              "--dataset_size 4000 --batch_size 16 --max_steps 150 --lr 2e-3 --lora_rank 32 "
              "--eval_fraction 0.02 --log_dir runs/warm-start")
RL = (
    "python train_rl.py --load_checkpoint runs/warm-start --max_steps 20 --eval_every 10 "
    "--log_dir runs/rl-local")
EVALUATE = "python evaluate.py --checkpoint runs/warm-start runs/rl-local"


def readme_commands() -> str:
    """The README's and docs' text, continuation lines joined, whitespace normalised."""
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    return " ".join(text.replace("\\\n", " ").split())


def run(command: str, cwd: Path) -> None:
    argv = shlex.split(command)
    argv[0] = sys.executable
    argv[1] = str(ROOT / argv[1])
    done = subprocess.run([*argv, "--wandb_mode", "offline"], cwd=cwd, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.e2e
def test_readme_rl_pipeline_raises_heldout_accuracy(tmp_path):
    for command in (WARM_START, RL, EVALUATE):
        assert command in readme_commands(), f"README no longer shows: {command}"
        run(command, tmp_path)

    report = json.loads(next((tmp_path / "runs").glob("evaluate-*/eval.json")).read_text())
    models = {m["label"]: m for m in report["models"]}
    warm, rl = models["warm-start"], models["rl-local"]
    assert warm["n"] == rl["n"] == 300
    assert rl["accuracy_low"] > warm["accuracy_high"], (warm, rl)

    history = [json.loads(line) for line in
               (tmp_path / "runs/rl-local/metrics.jsonl").read_text().splitlines()]
    words = [h["completions/mean_words"] for h in history]
    assert min(words[-3:]) < words[0] / 2, words
    bonus_from = 6  # train_rl's default --concise_bonus_after: steps 7.. earn the bonus
    assert sum(words[bonus_from:]) / len(words[bonus_from:]) < words[bonus_from - 1], words
