"""The arithmetic task ("add adjacent pairs, then multiply"): problems, prompt, reward, held-out.

A problem is an even-length list of integers; the answer is the product of the sums of
adjacent pairs: 3, 5, 2, 4 -> (3+5) * (2+4) = 48. The system prompt, the user turn and the
generator's distribution are the seed's (tinkering-with-tinker, "Test 2: RLVR"): 1-3 pairs,
each number 1-9, or 10-19 with probability 0.3.

train_rl.py and evaluate.py use the task through a `Task` (`arithmetic_task(...)`): problem k
of a seed, its prompt, its reward and the held-out set. The warm-start SFT data written in the
task's notation (`arithmetic-solutions`) is generated in common/data.py.

Deviations from the seed:
- problems come from a seeded, index-addressable stream (problem k depends only on the seed
  and k, see common/seeding.py), not from the global `random` module, so runs repeat and a
  resumed run restarts at the exact problem it stopped at;
- the difficulty (pair counts, number ranges, share of two-digit numbers) is a validated
  config value rather than constants inside the generator;
- a shipped held-out set (`data/arithmetic_heldout.jsonl`, 100 problems per pair count) gives
  evaluations a fixed yardstick; the seed scores five fresh problems by eye.
"""

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from common.rewards import compute_reward
from common.seeding import seeded_rng

SYSTEM_PROMPT = """Add adjacent pairs of numbers, then multiply the results.

Example: 3, 5, 2, 4
- Add pairs: 3+5=8, 2+4=6
- Multiply: 8×6=48
- Answer: <answer>48</answer>

Now solve the problem below. Put your final answer in <answer>X</answer> tags."""

DEFAULT_HELDOUT = Path(__file__).resolve().parent.parent / "data" / "arithmetic_heldout.jsonl"
"""The shipped held-out set, written by data/make_arithmetic_heldout.py."""

# Stream names (common/seeding.py): the training problems and the held-out set draw from
# unrelated streams even for the same seed (the warm-start data has its own, in common/data.py).
_TRAIN_PREFIX = "arithmetic"
_HELDOUT_PREFIX = "arithmetic-heldout"

def _is_int(value: object) -> bool:
    # bool is an int subclass, but True in a number list is a data error, not the number 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Difficulty:
    """How hard generated arithmetic problems are."""

    pair_counts: tuple[int, ...] = (1, 2, 3)
    """Pairs per problem, drawn uniformly (the seed's 2, 4 or 6 numbers)."""
    small_range: tuple[int, int] = (1, 9)
    """Inclusive range of the one-digit numbers."""
    large_range: tuple[int, int] = (10, 19)
    """Inclusive range of the two-digit numbers."""
    large_share: float = 0.3
    """Probability that a number comes from large_range (the seed: 30%)."""

    def __post_init__(self) -> None:
        # Configs parsed from the command line or YAML hand over lists; store tuples so the
        # value stays hashable and cannot be changed behind the dataclass's back.
        object.__setattr__(self, "pair_counts", tuple(self.pair_counts))
        object.__setattr__(self, "small_range", tuple(self.small_range))
        object.__setattr__(self, "large_range", tuple(self.large_range))
        if not self.pair_counts:
            raise ValueError("Difficulty.pair_counts must not be empty")
        if not all(_is_int(c) and c > 0 for c in self.pair_counts):
            raise ValueError(
                f"Difficulty.pair_counts must be positive integers, got {self.pair_counts}"
            )
        for field_name in ("small_range", "large_range"):
            bounds = getattr(self, field_name)
            if len(bounds) != 2 or not all(_is_int(b) for b in bounds):
                raise ValueError(f"Difficulty.{field_name} must be two integers, got {bounds}")
            if bounds[0] > bounds[1]:
                raise ValueError(f"Difficulty.{field_name} is reversed: {bounds} (low > high)")
        if not 0.0 <= self.large_share <= 1.0:
            raise ValueError(f"Difficulty.large_share must be in [0, 1], got {self.large_share}")


DEFAULT_DIFFICULTY = Difficulty()


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: an even number of integers."""

    numbers: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", tuple(self.numbers))
        if not self.numbers or len(self.numbers) % 2:
            raise ValueError(
                f"problem {list(self.numbers)}: needs a positive, even count of numbers"
            )
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
    def from_row(cls, row: Mapping[str, Any]) -> "Problem":
        """Parse and check a row; `answer` and `pair_count`, when present, must agree."""
        if not isinstance(row, Mapping):
            raise ValueError(f"expected an object with a 'numbers' list, got {row!r}")
        raw = row.get("numbers")
        if not isinstance(raw, list | tuple):
            raise ValueError(f"'numbers' must be a list of integers, got {raw!r}")
        problem = cls(tuple(_as_int(n, raw) for n in raw))
        for key, computed in (("answer", problem.answer), ("pair_count", problem.pair_count)):
            stored = row.get(key)
            if stored is not None and _as_int(stored, raw) != computed:
                raise ValueError(
                    f"problem {list(problem.numbers)}: stored {key} {stored} != computed {computed}"
                )
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
    """One problem drawn from `difficulty` with `rng`, the seed's generator made explicit."""
    pair_count = rng.choice(difficulty.pair_counts)
    numbers = []
    for _ in range(2 * pair_count):
        large = rng.random() < difficulty.large_share
        low, high = difficulty.large_range if large else difficulty.small_range
        numbers.append(rng.randint(low, high))
    return Problem(tuple(numbers))


def problem_at(prefix: str, seed: int, index: int, difficulty: Difficulty) -> Problem:
    """Problem `index` of the stream named `prefix` for `seed`: streams with different
    prefixes are unrelated, so corpora and evaluation sets never share draws."""
    return generate_problem(seeded_rng(prefix, seed, index), difficulty)


def sample_problem(seed: int, index: int, difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Problem:
    """Problem `index` of the training stream for `seed`; depends on nothing else."""
    return problem_at(_TRAIN_PREFIX, seed, index, difficulty)


def build_messages(problem: Problem) -> list[dict[str, str]]:
    """The seed's prompt: system prompt, then the numbers as "a, b, c, d"."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": ", ".join(map(str, problem.numbers))},
    ]


def work_lines(numbers: Sequence[int], sums: Sequence[int], result: int) -> list[str]:
    """The worked steps in the task's notation: "Add pairs: 3+5=8, 2+4=6" and, with more
    than one pair, "Multiply: 8×6=48". Shared by the warm-start data and tiny-math's corpus,
    so the base model's notation and the warm start's cannot drift apart."""
    pairs = zip(numbers[::2], numbers[1::2], sums, strict=True)
    lines = ["Add pairs: " + ", ".join(f"{a}+{b}={s}" for a, b, s in pairs)]
    if len(sums) > 1:
        lines.append("Multiply: " + "×".join(map(str, sums)) + f"={result}")
    return lines


def heldout_problems(
    seed: int, per_pair_count: int, difficulty: Difficulty = DEFAULT_DIFFICULTY
) -> list[Problem]:
    """`per_pair_count` distinct problems for each of `difficulty.pair_counts`, in that order.

    Drawn on a stream of their own, so no training seed reproduces the same draws; the
    one-pair space is small (361 problems by default) so training still meets some of them.
    """
    problems: list[Problem] = []
    for pair_count in difficulty.pair_counts:
        only_this = Difficulty(
            (pair_count,), difficulty.small_range, difficulty.large_range, difficulty.large_share
        )
        seen: set[Problem] = set()
        index = 0
        while len(seen) < per_pair_count:
            problem = problem_at(f"{_HELDOUT_PREFIX}:{pair_count}", seed, index, only_this)
            index += 1
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
    return problems


def load_heldout(path: str | Path = DEFAULT_HELDOUT) -> list[Problem]:
    """Problems from a JSON-lines file (rows with `numbers`, optional `answer`/`pair_count`).

    Errors name the file and the 1-based row (blank lines are not rows).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"held-out file not found: {path}")
    # Imported here: `datasets` takes a second or more to import, and training code that
    # only generates problems should not pay for it.
    import datasets

    try:
        rows: Sequence[Mapping[str, Any]] = datasets.load_dataset(
            "json", data_files=str(path), split="train"
        )
    except Exception as exc:  # whatever went wrong, re-raise it with the row named
        _raise_unreadable_row(path, exc)
    if len(rows) == 0:
        raise ValueError(f"{path}: no problems")
    problems = []
    for row_number, row in enumerate(rows, start=1):
        try:
            problems.append(Problem.from_row(row))
        except ValueError as exc:
            raise ValueError(f"{path}: row {row_number}: {exc}") from exc
    return problems


def _raise_unreadable_row(path: Path, exc: Exception) -> NoReturn:
    # `datasets` reports a malformed line, or rows whose types Arrow cannot unify, as "An
    # error occurred while generating the dataset" with no line number; find the row
    # ourselves so the message says where.
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no problems") from exc
    for row_number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: row {row_number}: not valid JSON: {err}") from exc
        try:
            Problem.from_row(row)
        except ValueError as err:
            raise ValueError(f"{path}: row {row_number}: {err}") from exc
    raise ValueError(f"{path}: could not be read as JSON lines: {exc}") from exc


# ---------------------------------------------------------------------------------------
# The task as the scripts use it.

P = TypeVar("P")


@dataclass(frozen=True)
class Task(Generic[P]):
    """What train_rl.py and evaluate.py need from a task; a second task would supply these."""

    name: str
    sample: Callable[[int, int], P]
    """(seed, index) -> problem; index-addressable so a resumed run gets the same problems."""
    messages: Callable[[P], list[dict[str, str]]]
    """Problem -> chat messages up to (not including) the assistant turn."""
    reward: Callable[[P, str, bool], dict[str, float]]
    """(problem, response text, concise_bonus) -> breakdown with a `total` key."""
    answer: Callable[[P], int | str]
    """The reference answer, for logs and sample tables."""
    load_heldout: Callable[[], list[P]]
    """The task's fixed evaluation problems."""


def arithmetic_task(
    difficulty: Difficulty = DEFAULT_DIFFICULTY, heldout_path: str | Path = DEFAULT_HELDOUT,
    concise_needs_answer: bool = True,
) -> Task[Problem]:
    """The arithmetic task at a given difficulty. Its reward is `compute_reward`; as with
    train_rl's --concise_needs_answer (on by default), the concise bonus needs an answer tag."""
    # partial / attrgetter / module-level functions rather than lambdas: a Task stays
    # picklable, so it can cross into worker processes.
    return Task(
        name="arithmetic",
        sample=partial(sample_problem, difficulty=difficulty),
        messages=build_messages,
        reward=partial(_arithmetic_reward, concise_needs_answer=concise_needs_answer),
        answer=attrgetter("answer"),
        load_heldout=partial(load_heldout, heldout_path),
    )


def _arithmetic_reward(problem: Problem, text: str, concise_bonus: bool,
                       concise_needs_answer: bool) -> dict[str, float]:
    return compute_reward(text, problem.answer, concise_bonus, concise_needs_answer)


ARITHMETIC = arithmetic_task()
"""The task at the seed's difficulty with the shipped held-out set and train_rl's default reward."""
