"""Pure reward functions: the seed's arithmetic reward, answer extraction, and grading.

The seed's reward (tinkering-with-tinker, "Test 2: RLVR"): 0.1 for a parseable
`<answer>N</answer>` tag, 1.0 when N is right, and with `concise_bonus` a length bonus of
0.3 * (200 - words) / 180 for responses under 200 words. `total` is the sum of the parts.
Deviations from the seed, all about robustness, none about the values: only ASCII digits parse
(the seed's `\\d` also matches e.g. Arabic-Indic digits, which `int()` accepts); an optional
leading minus is accepted; a number longer than `MAX_ANSWER_DIGITS` is unparseable.

Other tasks use the same shape, `answer_reward`: 0.1 for an answer in the expected form (answer
tags, or `\\boxed{}`), 1.0 when it matches the reference. "Matches" is math-verify's
equivalence (so `0.5`, `1/2` and `\\frac{1}{2}` match), falling back to string equality after
trimming where either side is not maths (a word, a list); `exact` is string equality only.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from typing import Literal

FORMAT_REWARD = 0.1
"""Reward for a response whose answer is in the expected form."""
CORRECT_REWARD = 1.0
"""Reward for a correct answer."""
CONCISE_WEIGHT = 0.3
"""Concise bonus scale: bonus = CONCISE_WEIGHT * (CONCISE_WORDS - words) / CONCISE_SPAN."""
CONCISE_WORDS = 200
"""Responses with this many words or more get no concise bonus."""
CONCISE_SPAN = 180
"""The seed's divisor: the bonus reaches CONCISE_WEIGHT at 20 words (and, as in the seed,
slightly exceeds it below 20 words: 0.333 for an empty response)."""
MAX_ANSWER_DIGITS = 1000
"""Longer numbers are treated as unparseable rather than converted."""

AnswerFormat = Literal["tags", "boxed"]

# [0-9] rather than \d: \d matches every Unicode decimal digit and int() converts them, so a
# response in another script's digits would otherwise be scored as if it were ASCII.
_INT_ANSWER = re.compile(r"<answer>\s*(-?[0-9]+)\s*</answer>")
_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.S)
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def parse_answer(text: str) -> int | None:
    """The integer in the first well-formed `<answer>N</answer>` tag of `text`, else None.

    "First" follows the seed's `re.search`: tags with other content, such as the system
    prompt's `<answer>X</answer>`, are skipped, and a later tag never overrides an earlier
    well-formed one, so a response cannot hedge by listing several answers.
    """
    match = _INT_ANSWER.search(text)
    if match is None or len(match.group(1).lstrip("-")) > MAX_ANSWER_DIGITS:
        return None
    return int(match.group(1))


def compute_reward(response: str, correct_answer: int, concise_bonus: bool = False,
                   concise_needs_answer: bool = False) -> dict[str, float]:
    """The seed's reward breakdown {format, correct, concise, total} for one response.

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


def extract_answer(text: str, answer_format: AnswerFormat = "tags") -> str | None:
    """The final answer in `text`: the first `<answer>...</answer>` whose content is not the
    prompt's placeholder `X`, or the last `\\boxed{...}` (nested braces allowed); None if absent."""
    if answer_format == "boxed":
        return last_boxed(text)
    for match in _TAGGED.finditer(text):
        content = match.group(1).strip()
        if content and content != "X":
            return content
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text`, braces balanced; None if none closes."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for end in range(start + len("\\boxed"), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[start + len("\\boxed{"):end].strip()
        start = text.rfind("\\boxed{", 0, start)
    return None


def reference_answer(value: object) -> str:
    """A dataset's answer as text; GSM8K's worked answer "... #### 72" means "72"."""
    text = str(value).strip()
    match = _GSM8K_FINAL.search(text)
    return match.group(1).strip() if match and "####" in text else text


def answers_match(reference: str, answer: str) -> bool:
    """math-verify's equivalence where both sides parse as maths, else equal after trimming."""
    if answer.strip() == reference.strip():
        return True
    from math_verify import parse, verify  # ~0.3 s to import: only tasks that grade answers pay

    # math-verify bounds its work with signal.alarm, which only the main thread may use.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(reference, parsing_timeout=timeout)
    guess = parse(answer, parsing_timeout=timeout)
    return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))


def answer_reward(completion: str, reference: str, answer_format: AnswerFormat = "tags",
                  exact: bool = False) -> dict[str, float]:
    """{format, correct, total}: the seed's shape for any task with a reference answer."""
    answer = extract_answer(completion, answer_format)
    correct = answer is not None and (answer.strip() == reference.strip() if exact
                                      else answers_match(reference, answer))
    return answer_parts(answer is not None, float(correct))


def answer_parts(found: bool, score: float) -> dict[str, float]:
    """{format, correct, total} of a completion whose answer was `found` (in the expected form)
    and scored `score` in [0, 1] (a grader's partial credit scales the correct reward)."""
    parts = {"format": FORMAT_REWARD if found else 0.0, "correct": CORRECT_REWARD * score}
    return {**parts, "total": sum(parts.values())}


class RewardValueError(ValueError):
    """A reward function returned something that is not a finite number (or such parts)."""


def checked_reward(value: object) -> dict[str, float]:
    """A user reward's return value as {parts..., "total"}: a number is its own total; a
    mapping must hold a numeric `total`. Every value must be a finite number."""
    if isinstance(value, Mapping):
        if "total" not in value:
            raise RewardValueError(f"returned a dict without 'total' (keys: {sorted(value)})")
        parts = dict(value)
    else:
        parts = {"total": value}
    for name, number in parts.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise RewardValueError(f"returned {name}={number!r}, not a number")
        if not math.isfinite(number):
            raise RewardValueError(f"returned {name}={number}, not a finite number")
    return {str(k): float(v) for k, v in parts.items()}
