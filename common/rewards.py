"""Pure reward functions for the arithmetic task: format, correctness and an optional concise bonus.

The reward is the seed's (tinkering-with-tinker, "Test 2: RLVR"): 0.1 for a parseable
`<answer>N</answer>` tag, 1.0 when N is right, and with `concise_bonus` a length bonus of
0.3 * (200 - words) / 180 for responses under 200 words. `total` is the sum of the parts.

Deviations from the seed, all about robustness, none about the values:
- only ASCII digits parse (the seed's `\\d` also matches e.g. Arabic-Indic digits, which
  `int()` then accepts, so "١٢" would score as 12);
- an optional leading minus is accepted (the seed's pattern gives no format reward for "-3");
- a number longer than `MAX_ANSWER_DIGITS` is unparseable instead of raising (Python refuses
  `int()` on strings over 4300 digits, and no answer here is anywhere near that long).
"""

import re

FORMAT_REWARD = 0.1
"""Reward for a response whose first well-formed answer tag holds an integer."""
CORRECT_REWARD = 1.0
"""Reward for a parsed answer equal to the correct one."""
CONCISE_WEIGHT = 0.3
"""Concise bonus scale: bonus = CONCISE_WEIGHT * (CONCISE_WORDS - words) / CONCISE_SPAN."""
CONCISE_WORDS = 200
"""Responses with this many words or more get no concise bonus."""
CONCISE_SPAN = 180
"""The seed's divisor: the bonus reaches CONCISE_WEIGHT at 20 words (and, as in the seed,
slightly exceeds it below 20 words: 0.333 for an empty response)."""
MAX_ANSWER_DIGITS = 1000
"""Longer numbers are treated as unparseable rather than converted."""

# [0-9] rather than \d: \d matches every Unicode decimal digit and int() converts them, so a
# response in another script's digits would otherwise be scored as if it were ASCII.
_ANSWER_RE = re.compile(r"<answer>\s*(-?[0-9]+)\s*</answer>")


def parse_answer(text: str) -> int | None:
    """The integer in the first well-formed `<answer>N</answer>` tag of `text`, else None.

    "First" follows the seed's `re.search`: the leftmost tag whose content is an integer
    (whitespace around it allowed) decides. Tags with other content, such as the system
    prompt's `<answer>X</answer>`, are skipped, and a later tag never overrides an earlier
    well-formed one, so a response cannot hedge by listing several answers.
    """
    match = _ANSWER_RE.search(text)
    if match is None:
        return None
    digits = match.group(1)
    if len(digits.lstrip("-")) > MAX_ANSWER_DIGITS:
        return None
    return int(digits)


def compute_reward(
    response: str, correct_answer: int, concise_bonus: bool = False,
    concise_needs_answer: bool = False,
) -> dict[str, float]:
    """Reward breakdown {format, correct, concise, total} for one response, as in the seed.

    With `concise_needs_answer`, only a response with an answer tag earns the conciseness
    bonus: the seed pays up to 0.33 for any short text, more than the 0.1 format reward, so a
    policy that is rarely right learns to say nothing at all.
    """
    rewards = {"format": 0.0, "correct": 0.0, "concise": 0.0}
    answer = parse_answer(response)
    if answer is not None:
        rewards["format"] = FORMAT_REWARD
        if answer == correct_answer:
            rewards["correct"] = CORRECT_REWARD
    if concise_bonus and (answer is not None or not concise_needs_answer):
        words = len(response.split())
        if words < CONCISE_WORDS:
            rewards["concise"] = CONCISE_WEIGHT * (CONCISE_WORDS - words) / CONCISE_SPAN
    rewards["total"] = sum(rewards.values())
    return rewards
