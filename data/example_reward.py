"""An example reward for `train_rl.py --reward data/example_reward.py:score` (and evaluate.py).

The scripts call `score(completion, row)` once per sampled completion: `completion` is the model's
answer as text, `row` the task's row (a dataset row, reasoning-gym's entry, or {numbers, answer,
pair_count} for the arithmetic task). Return a number, or a dict of parts with a `total`; each
part is logged as `reward/<part>` and becomes a column of the samples table, and a part named
`correct` of 1.0 counts as solved in `rl/accuracy`.
"""

import re

ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)


def score(completion: str, row: dict) -> dict[str, float]:
    """1.0 for the reference answer in answer tags, 0.1 for any tagged answer, and up to 0.2
    more for answers under 40 words (this reward's own idea of concise)."""
    reference = str(row["answer"]).split("####")[-1].strip()
    tagged = ANSWER.search(completion)
    parts = {"format": 0.1 if tagged else 0.0,
             "correct": 1.0 if tagged and tagged.group(1) == reference else 0.0,
             "brevity": 0.2 * max(0.0, 1 - len(completion.split()) / 40) if tagged else 0.0}
    return {**parts, "total": sum(parts.values())}
