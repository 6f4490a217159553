"""The README's headline command pair, as written: `python train_rl.py --lr 2e-4`, then
`python evaluate.py --checkpoint runs/<that run>` (issue #15's yardstick, ~5 minutes).

On the local default model (no key) the seed's Test 2 must show what the seed's write-up
shows: reward and sampled accuracy rise over the 10 steps, mean words fall once the concise
bonus is on (after step 6), and the trained model beats its base on the 300 held-out problems
with non-overlapping 95% intervals.
"""

import json

import pytest

from tests.test_rl_pipeline import readme_commands, run

HEADLINE = "python train_rl.py --lr 2e-4"
EVALUATE = "python evaluate.py --checkpoint runs/<that run>"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.e2e
def test_headline_command_learns_and_beats_its_base(tmp_path):
    readme = readme_commands()
    assert HEADLINE in readme and EVALUATE in readme, "README no longer shows the command pair"
    run(HEADLINE, tmp_path)
    (run_dir,) = (tmp_path / "runs").glob("train_rl-*")
    run(EVALUATE.replace("runs/<that run>", f"runs/{run_dir.name}"), tmp_path)

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 11))
    assert history[-1]["rl/steps_without_training"] == 0
    reward = [h["reward/mean"] for h in history]
    accuracy = [h["rl/accuracy"] for h in history]
    words = [h["completions/mean_words"] for h in history]
    assert mean(reward[-3:]) > mean(reward[:3]), reward
    assert mean(accuracy[-3:]) > mean(accuracy[:3]), accuracy
    bonus_from = 6  # train_rl's default --concise_bonus_after: steps 7.. earn the bonus
    assert mean(words[bonus_from:]) < words[bonus_from - 1], words

    report = json.loads(next((tmp_path / "runs").glob("evaluate-*/eval.json")).read_text())
    base, trained = report["models"]  # the base model first, then the checkpoint
    assert base["label"] == "base:tiny-instruct", base["label"]
    assert base["n"] == trained["n"] == 300
    assert trained["accuracy_low"] > base["accuracy_high"], (base, trained)
