"""The seed's arithmetic task (common/arithmetic.py): generator, stream, prompts, held-out set,
the task train_rl and evaluate see (common/tasks.py), and the warm-start worked solutions."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from common.arithmetic import (
    DEFAULT_HELDOUT,
    SYSTEM_PROMPT,
    TRAIN_STREAM,
    Difficulty,
    Problem,
    build_messages,
    generate_problem,
    heldout_problems,
    problem_at,
    solutions_dataset,
    worked_solution,
)
from common.data import DatasetError
from common.rewards import compute_reward
from common.tasks import TaskConfig, TaskError, arithmetic_problem, make_task

pytestmark = pytest.mark.unit


def sample_problem(seed: int, index: int, difficulty: Difficulty | None = None) -> Problem:
    return problem_at(TRAIN_STREAM, seed, index, difficulty or Difficulty())


def load_heldout(path: Path | None = None) -> list[Problem]:
    task = make_task(TaskConfig(heldout=str(path) if path else None), heldout_only=True)
    return [Problem.from_row(p.row) for p in task.heldout()]


def test_seed_examples() -> None:
    problem = Problem((1, 5, 17, 4, 6, 8))
    assert problem.sums == (6, 21, 14)
    assert problem.answer == 1764
    assert problem.pair_count == 3
    assert Problem((6, 7, 19, 8, 1, 8)).answer == 3159
    assert Problem((6, 12)).answer == 18


def test_system_prompt_is_the_seed_text() -> None:
    assert SYSTEM_PROMPT.startswith("Add adjacent pairs of numbers, then multiply the results.\n\n")
    assert "- Multiply: 8×6=48\n- Answer: <answer>48</answer>\n\n" in SYSTEM_PROMPT
    assert SYSTEM_PROMPT.endswith("Put your final answer in <answer>X</answer> tags.")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pair_counts": ()}, "pair_counts"),
        ({"pair_counts": (1, 0)}, "pair_counts"),
        ({"pair_counts": (-2,)}, "pair_counts"),
        ({"small_range": (9, 1)}, "small_range"),
        ({"large_range": (19, 10)}, "large_range"),
        ({"large_range": (10,)}, "large_range"),
        ({"large_share": 1.5}, "large_share"),
        ({"large_share": -0.1}, "large_share"),
        ({"large_share": float("nan")}, "large_share"),
    ],
)
def test_difficulty_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must"):
        Difficulty(**kwargs)


def test_difficulty_accepts_lists() -> None:
    difficulty = Difficulty(pair_counts=[2, 4], small_range=[0, 3])  # type: ignore[arg-type]
    assert difficulty.pair_counts == (2, 4)
    assert difficulty.small_range == (0, 3)
    hash(difficulty)


@pytest.mark.parametrize("numbers", [(), (1, 2, 3), (1, True), (1.5, 2)])
def test_problem_rejects_bad_numbers(numbers: tuple) -> None:
    with pytest.raises(ValueError, match="problem"):
        Problem(numbers)


def test_row_round_trip_and_validation() -> None:
    problem = Problem((3, 5, 2, 4))
    row = problem.to_row()
    assert row == {"numbers": [3, 5, 2, 4], "answer": 48, "pair_count": 2}
    assert Problem.from_row(row) == problem
    assert Problem.from_row(json.loads(json.dumps(row))) == problem
    assert Problem.from_row({"numbers": [3.0, 5.0]}) == Problem((3, 5))
    with pytest.raises(ValueError, match=r"problem \[3, 5, 2, 4\]: stored answer 47"):
        Problem.from_row({**row, "answer": 47})
    with pytest.raises(ValueError, match="stored pair_count 3"):
        Problem.from_row({**row, "pair_count": 3})
    with pytest.raises(ValueError, match="not an integer"):
        Problem.from_row({"numbers": [3, "5"]})
    with pytest.raises(ValueError, match="'numbers' must be a list"):
        Problem.from_row({"numbers": "3, 5"})


def test_generator_respects_difficulty() -> None:
    rng = random.Random(7)
    difficulty = Difficulty()
    problems = [generate_problem(rng, difficulty) for _ in range(5000)]
    pair_counts = Counter(p.pair_count for p in problems)
    assert set(pair_counts) == {1, 2, 3}
    for count in pair_counts.values():
        assert abs(count / 5000 - 1 / 3) < 0.03
    numbers = [n for p in problems for n in p.numbers]
    assert all(1 <= n <= 19 for n in numbers)
    large_share = sum(n >= 10 for n in numbers) / len(numbers)
    assert abs(large_share - 0.3) < 0.02


def test_generator_custom_difficulty() -> None:
    rng = random.Random(1)
    difficulty = Difficulty(
        pair_counts=(4,), small_range=(0, 2), large_range=(50, 51), large_share=0
    )
    problems = [generate_problem(rng, difficulty) for _ in range(200)]
    assert {p.pair_count for p in problems} == {4}
    assert {n for p in problems for n in p.numbers} == {0, 1, 2}
    all_large = Difficulty(large_range=(50, 51), large_share=1.0)
    assert all(50 <= n <= 51 for n in generate_problem(rng, all_large).numbers)


def test_stream_is_deterministic_and_resumable() -> None:
    """Problem k of a seed depends on (seed, k) alone: a resumed run (train_rl asks for problem
    (step - 1) * batch_size + i) gets the problems an uninterrupted one would."""
    difficulty = Difficulty()
    task = make_task(TaskConfig())
    first = [sample_problem(3, k, difficulty) for k in range(20)]
    assert [Problem.from_row(task.train(3, k).row) for k in range(20)] == first
    assert [sample_problem(3, k) for k in range(12, 20)] == first[12:]
    assert [sample_problem(4, k) for k in range(20)] != first
    # The seeding scheme is part of the data (common/seeding.py): these must never change.
    assert first[:3] == [Problem((5, 9, 6, 7, 8, 3)), Problem((2, 16, 18, 4, 11, 19)),
                         Problem((14, 11))]


def test_build_messages() -> None:
    assert build_messages(Problem((4, 15))) == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "4, 15"},
    ]


def _problems(n: int) -> list[Problem]:
    return [sample_problem(0, k) for k in range(n)]


def test_worked_solution_format() -> None:
    solution = worked_solution(Problem((3, 5, 2, 4)), random.Random(0), 0.0, 0.0)
    assert solution == "Add pairs: 3+5=8, 2+4=6\nMultiply: 8×6=48\n<answer>48</answer>"
    assert worked_solution(Problem((4, 2)), random.Random(0), 0.0, 0.0) == (
        "Add pairs: 4+2=6\n<answer>6</answer>"
    )
    # The longest default problem stays short: the tiny model pays a token per byte.
    longest = worked_solution(Problem((19,) * 6), random.Random(0), 0.0, 0.0)
    assert len(longest.encode()) < 100


def test_worked_solution_without_errors_is_always_right() -> None:
    rng = random.Random(0)
    for problem in _problems(300):
        reward = compute_reward(worked_solution(problem, rng, 0.0, 0.0), problem.answer)
        assert reward["total"] == pytest.approx(1.1)


def test_worked_solution_with_errors_is_always_wrong() -> None:
    rng = random.Random(0)
    problems = _problems(300) + [Problem((0, 0, 1, 2)), Problem((-1, 1, 3, 4, 5, 6))] * 50
    for problem in problems:
        reward = compute_reward(worked_solution(problem, rng, 1.0, 0.0), problem.answer)
        assert reward["format"] == pytest.approx(0.1)
        assert reward["correct"] == 0.0


def test_worked_solution_verbose_is_wordier() -> None:
    rng = random.Random(0)
    for problem in _problems(100):
        plain = worked_solution(problem, random.Random(1), 0.0, 0.0)
        verbose = worked_solution(problem, rng, 0.0, 1.0)
        extra = len(verbose.split()) - len(plain.split())
        assert 40 <= extra <= 95
        assert verbose.endswith(plain)
        # Runs past the seed's 256-token limit with the tiny models' byte tokenizer, and the
        # habit shows in the first words, where temperature 0.3 sampling still follows it.
        assert len(verbose.encode()) > 256
        assert verbose.startswith("Let me think about this step by step.\n")


def test_worked_solution_is_deterministic_and_checks_rates() -> None:
    problem = Problem((1, 2, 3, 4, 5, 6))
    texts = {worked_solution(problem, random.Random(5), 0.5, 0.5) for _ in range(5)}
    assert len(texts) == 1
    with pytest.raises(ValueError, match="error_rate"):
        worked_solution(problem, random.Random(0), 1.5, 0.0)
    with pytest.raises(ValueError, match="verbose_rate"):
        worked_solution(problem, random.Random(0), 0.0, -0.1)


def test_solutions_dataset() -> None:
    rows = solutions_dataset(400, seed=1, difficulty=Difficulty())
    assert rows[:50] == solutions_dataset(50, seed=1, difficulty=Difficulty())
    assert rows != solutions_dataset(400, seed=2, difficulty=Difficulty())
    correct = 0
    for row in rows:
        system, user, assistant = row["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert system["content"] == SYSTEM_PROMPT
        problem = Problem(tuple(int(n) for n in user["content"].split(", ")))
        correct += compute_reward(assistant["content"], problem.answer)["correct"] > 0
    assert abs(correct / 400 - 0.7) < 0.08
    # Not the RL stream for the same seed: SFT must not pre-teach the RL problems in order.
    rl_users = [build_messages(sample_problem(1, k))[1]["content"] for k in range(20)]
    assert rl_users != [row["messages"][1]["content"] for row in rows[:20]]


def test_shipped_heldout() -> None:
    problems = load_heldout()
    assert len(problems) == 300
    assert Counter(p.pair_count for p in problems) == {1: 100, 2: 100, 3: 100}
    assert len(set(problems)) == 300
    rows = [json.loads(line) for line in DEFAULT_HELDOUT.read_text().splitlines()]
    assert [row["answer"] for row in rows] == [p.answer for p in problems]
    # The shipped file is exactly what the generator script writes.
    assert problems == heldout_problems(12345, 100)


def test_heldout_bad_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"numbers": [1, 2], "answer": 3}\n\n{"numbers": [3, 5, 2, 4], "answer": 47}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl row 2: problem \[3, 5, 2, 4\]"):
        load_heldout(path)


def test_heldout_invalid_json_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"numbers": [1, 2]}\n{"numbers": [3, 4]}\nnot json\n')
    with pytest.raises(DatasetError, match=r"broken\.jsonl line 3: not valid JSON"):
        load_heldout(path)


def test_heldout_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.jsonl: no such file"):
        load_heldout(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match=r"empty\.jsonl: the file is empty"):
        load_heldout(empty)


def test_the_task_is_what_train_rl_and_evaluate_see() -> None:
    task = make_task(TaskConfig())
    item = sample_problem(3, 7)
    problem = task.train(3, 7)
    assert problem.messages == build_messages(item) and problem.answer == str(item.answer)
    assert problem.part == f"{item.pair_count} pair{'s' if item.pair_count > 1 else ''}"
    assert [Problem.from_row(p.row) for p in task.heldout()] == heldout_problems(12345, 100)
    solution = worked_solution(item, random.Random(0), 0.0, 0.0)
    assert task.reward(problem, solution, False)["total"] == pytest.approx(1.1)
    # train_rl's default reward: the concise bonus needs an answer tag ...
    assert task.reward(problem, "", True)["total"] == 0.0
    assert task.reward(problem, solution, True)["concise"] > 0
    # ... and --noconcise_needs_answer is the seed's, which pays it for any short text.
    seeds = make_task(TaskConfig(concise_needs_answer=False))
    assert seeds.reward(problem, "", True)["total"] == pytest.approx(0.3 * 200 / 180)
    # Another reward or answer format leaves the seed's reward (and its concise bonus) out.
    boxed = make_task(TaskConfig(answer_format="boxed"))
    assert boxed.reward(problem, f"so \\boxed{{{item.answer}}}", True) == {
        "format": 0.1, "correct": 1.0, "total": 1.1}


def test_task_difficulty_and_heldout_path(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"numbers": [1, 2, 3, 4]}\n')
    task = make_task(TaskConfig(pair_counts="2", heldout=str(path)))
    assert {len(task.train(0, k).row["numbers"]) for k in range(50)} == {4}
    assert task.heldout() == [arithmetic_problem(Problem((1, 2, 3, 4)), where=f"{path} row 1")]
    with pytest.raises(TaskError, match="--pair_counts/--large_share: pair_counts must"):
        make_task(TaskConfig(pair_counts="0"))


def test_heldout_mixed_types_name_the_row(tmp_path: Path) -> None:
    # Arrow cannot unify a list column with an object; `datasets` then names no row.
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"numbers": [1, 2]}\n{"numbers": {"a": 1}}\n')
    with pytest.raises(DatasetError, match=r"mixed\.jsonl row 2: 'numbers' must be a list"):
        load_heldout(path)
