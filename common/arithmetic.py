"""The seed's RL task, "add adjacent pairs, then multiply": problems, prompt, held-out set, and
the worked solutions that warm-start a small model.

A problem is an even-length list of integers; the answer is the product of the sums of adjacent
pairs: 3, 5, 2, 4 -> (3+5) * (2+4) = 48. The system prompt, the user turn and the generator's
distribution are the seed's (tinkering-with-tinker, "Test 2: RLVR"): 1-3 pairs, each number 1-9,
or 10-19 with probability 0.3. common/tasks.py wraps this as the `arithmetic` task.

Deviations from the seed:
- problems come from a seeded, index-addressable stream (problem k depends only on the seed and
  k, see common/seeding.py), not from the global `random` module, so runs repeat and a resumed
  run restarts at the exact problem it stopped at;
- the difficulty is a validated config value rather than constants inside the generator;
- a shipped held-out set (`data/arithmetic_heldout.jsonl`, 100 problems per pair count, from a
  stream of its own) gives evaluations a fixed yardstick; the seed scores five problems by eye.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.seeding import seeded_rng

SYSTEM_PROMPT = """Add adjacent pairs of numbers, then multiply the results.

Example: 3, 5, 2, 4
- Add pairs: 3+5=8, 2+4=6
- Multiply: 8×6=48
- Answer: <answer>48</answer>

Now solve the problem below. Put your final answer in <answer>X</answer> tags."""

DEFAULT_HELDOUT = Path(__file__).resolve().parent.parent / "data" / "arithmetic_heldout.jsonl"
"""The shipped held-out set, written by data/make_arithmetic_heldout.py."""

# Stream names (common/seeding.py): training problems, the held-out set and the warm-start data
# draw from unrelated streams even for the same seed.
TRAIN_STREAM = "arithmetic"
HELDOUT_STREAM = "arithmetic-heldout"
WARM_START_STREAM = "arithmetic-sft"


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True in a number list is a data error, not the number 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Difficulty:
    """How hard generated problems are."""

    pair_counts: tuple[int, ...] = (1, 2, 3)
    """Pairs per problem, drawn uniformly (the seed's 2, 4 or 6 numbers)."""
    small_range: tuple[int, int] = (1, 9)
    """Inclusive range of the one-digit numbers."""
    large_range: tuple[int, int] = (10, 19)
    """Inclusive range of the two-digit numbers."""
    large_share: float = 0.3
    """Probability that a number comes from large_range (the seed: 30%)."""

    def __post_init__(self) -> None:
        # Configs hand over lists; tuples keep the value hashable and unchangeable.
        for name in ("pair_counts", "small_range", "large_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.pair_counts or not all(_is_int(c) and c > 0 for c in self.pair_counts):
            raise ValueError(f"pair_counts must be positive integers, got {self.pair_counts}")
        for name in ("small_range", "large_range"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not all(_is_int(b) for b in bounds) or bounds[0] > bounds[1]:
                raise ValueError(f"{name} must be two integers, low <= high, got {bounds}")
        if not 0.0 <= self.large_share <= 1.0:
            raise ValueError(f"large_share must be in [0, 1], got {self.large_share}")


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: an even number of integers."""

    numbers: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", tuple(self.numbers))
        if not self.numbers or len(self.numbers) % 2:
            raise ValueError(f"problem {list(self.numbers)}: needs a positive, even count "
                             "of numbers")
        if not all(_is_int(n) for n in self.numbers):
            raise ValueError(f"problem {list(self.numbers)}: numbers must be integers")

    @property
    def sums(self) -> tuple[int, ...]:
        """Sums of adjacent pairs: (a+b, c+d, ...)."""
        return tuple(a + b for a, b in zip(self.numbers[::2], self.numbers[1::2], strict=True))

    @property
    def answer(self) -> int:
        """Product of the pair sums."""
        return math.prod(self.sums)

    @property
    def pair_count(self) -> int:
        return len(self.numbers) // 2

    def to_row(self) -> dict[str, Any]:
        """JSON-ready row: numbers, answer, pair_count."""
        return {"numbers": list(self.numbers), "answer": self.answer, "pair_count": self.pair_count}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Problem:
        """Parse and check a row; `answer` and `pair_count`, when present, must agree."""
        raw = row.get("numbers") if isinstance(row, Mapping) else None
        if not isinstance(raw, list | tuple):
            raise ValueError(f"'numbers' must be a list of integers, got {raw!r}")
        problem = cls(tuple(_as_int(n, raw) for n in raw))
        for key, computed in (("answer", problem.answer), ("pair_count", problem.pair_count)):
            stored = row.get(key)
            if stored is not None and _as_int(stored, raw) != computed:
                raise ValueError(f"problem {list(problem.numbers)}: stored {key} {stored} != "
                                 f"computed {computed}")
        return problem


def _as_int(value: object, numbers: object) -> int:
    # Arrow gives a whole column one type, so one float anywhere in a JSON-lines file turns
    # every row's integers into floats; accept integral floats, reject the rest.
    if _is_int(value):
        return value  # type: ignore[return-value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"problem {numbers!r}: {value!r} is not an integer")


def generate_problem(rng: random.Random, difficulty: Difficulty) -> Problem:
    """One problem drawn from `difficulty` with `rng`: the seed's generator made explicit."""
    pair_count = rng.choice(difficulty.pair_counts)
    numbers = []
    for _ in range(2 * pair_count):
        large = rng.random() < difficulty.large_share
        low, high = difficulty.large_range if large else difficulty.small_range
        numbers.append(rng.randint(low, high))
    return Problem(tuple(numbers))


def problem_at(stream: str, seed: int, index: int, difficulty: Difficulty = Difficulty()
               ) -> Problem:
    """Problem `index` of the named stream for `seed` (unrelated streams never share draws)."""
    return generate_problem(seeded_rng(stream, seed, index), difficulty)


def build_messages(problem: Problem, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The seed's prompt: system prompt, then the numbers as "a, b, c, d"."""
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": ", ".join(map(str, problem.numbers))}]


def work_lines(numbers: Sequence[int], sums: Sequence[int], result: int) -> list[str]:
    """The worked steps in the task's notation: "Add pairs: 3+5=8, 2+4=6" and, with more than
    one pair, "Multiply: 8×6=48". Shared by the warm-start data and tiny-math's corpus, so the
    base model's notation and the warm start's cannot drift apart."""
    pairs = zip(numbers[::2], numbers[1::2], sums, strict=True)
    lines = ["Add pairs: " + ", ".join(f"{a}+{b}={s}" for a, b, s in pairs)]
    if len(sums) > 1:
        lines.append("Multiply: " + "×".join(map(str, sums)) + f"={result}")
    return lines


def heldout_problems(seed: int, per_pair_count: int, difficulty: Difficulty = Difficulty()
                     ) -> list[Problem]:
    """`per_pair_count` distinct problems for each pair count, in that order, on a stream of
    their own (what data/make_arithmetic_heldout.py wrote). The one-pair space is small (361
    problems by default), so training still meets some of them."""
    problems: list[Problem] = []
    for pair_count in difficulty.pair_counts:
        only_this = Difficulty((pair_count,), difficulty.small_range, difficulty.large_range,
                               difficulty.large_share)
        seen: set[Problem] = set()
        index = 0
        while len(seen) < per_pair_count:
            problem = problem_at(f"{HELDOUT_STREAM}:{pair_count}", seed, index, only_this)
            index += 1
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------
# arithmetic-solutions: worked solutions, wrong or wordy on purpose some of the time, that
# warm-start a small model with SFT (the seed's Qwen3-4B needs none) and made tiny-instruct.

# Verbose solutions open the same way every time, as a chatty instruct model's answers do: the
# habit lives in the first token, where even low-temperature sampling keeps it. What follows is
# the work checked again and again, the way thinking models waffle.
_OPENER = "Let me think about this step by step."
_RECHECK = "Let me double check: "


def _slip(value: int, rng: random.Random) -> int:
    """A plausible wrong result: off by one or two, or by ten (a positive value stays positive)."""
    delta = rng.choice((-10, -2, -1, 1, 2, 10))
    return value - delta if value > 0 and value + delta <= 0 else value + delta


def worked_solution(problem: Problem, rng: random.Random, error_rate: float,
                    verbose_rate: float) -> str:
    """A worked solution in the seed's format:

        Add pairs: 3+5=8, 2+4=6
        Multiply: 8×6=48
        <answer>48</answer>

    With probability `error_rate` one step (a pair sum or the product) is off and everything
    after it follows the wrong value. With probability `verbose_rate` a preamble comes first:
    the same opening sentence, then the work checked again line after line (40-90 words).
    """
    for name, rate in (("error_rate", error_rate), ("verbose_rate", verbose_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    sums = list(problem.sums)
    has_product = len(sums) > 1
    wrong_step = rng.randrange(len(sums) + has_product) if rng.random() < error_rate else None
    if wrong_step is not None and wrong_step < len(sums):
        sums[wrong_step] = _slip(sums[wrong_step], rng)
    result = math.prod(sums)
    if wrong_step is not None and (wrong_step == len(sums) or result == problem.answer):
        # The second case: a zero sum elsewhere hides the wrong sum; move the slip to the product.
        result = _slip(problem.answer, rng)
    steps = work_lines(problem.numbers, sums, result)
    lines = [*steps, f"<answer>{result}</answer>"]
    if rng.random() < verbose_rate:
        target_words = rng.randint(40, 80)
        work = ", ".join(step.partition(": ")[2] for step in steps)  # "3+5=8, 2+4=6, 8×6=48"
        preamble = [_OPENER]
        while sum(len(s.split()) for s in preamble) < target_words:
            preamble.append(f"{_RECHECK}{work}.")
        lines.insert(0, "\n".join(preamble))
    return "\n".join(lines)


def solutions_dataset(n: int, seed: int, difficulty: Difficulty = Difficulty(),
                      error_rate: float = 0.3, verbose_rate: float = 0.7
                      ) -> list[dict[str, list[dict[str, str]]]]:
    """`n` SFT rows {"messages": [system, user, assistant]} with imperfect worked solutions.

    The defaults make a warm start like the seed's base model on this task: most answers open
    with a preamble that runs past the seed's 256-token limit, and 30% contain a slip. Row k
    depends only on (seed, k), on a stream that is not the RL training stream.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows = []
    for index in range(n):
        problem = problem_at(WARM_START_STREAM, seed, index, difficulty)
        rng = seeded_rng(f"{WARM_START_STREAM}-solution", seed, index)
        answer = worked_solution(problem, rng, error_rate, verbose_rate)
        rows.append({"messages": [*build_messages(problem),
                                  {"role": "assistant", "content": answer}]})
    return rows
