"""Reward parsing and scoring: the seed's values, plus inputs the seed's regex mishandles."""

import random

import pytest

from common.rewards import (
    CONCISE_WORDS,
    CORRECT_REWARD,
    FORMAT_REWARD,
    MAX_ANSWER_DIGITS,
    compute_reward,
    parse_answer,
)

pytestmark = pytest.mark.unit


def test_seed_example() -> None:
    response = "Let me explain at length... " * 200 + "<answer>10</answer>"
    assert compute_reward(response, 10, True) == {
        "format": 0.1,
        "correct": 1.0,
        "concise": 0.0,
        "total": 1.1,
    }


def test_keys_and_order() -> None:
    assert list(compute_reward("", 1)) == ["format", "correct", "concise", "total"]


def test_no_tag_scores_zero() -> None:
    assert compute_reward("the answer is 10", 10) == {
        "format": 0.0,
        "correct": 0.0,
        "concise": 0.0,
        "total": 0.0,
    }


def test_wrong_answer_gets_format_only() -> None:
    reward = compute_reward("<answer>11</answer>", 10)
    assert reward["format"] == FORMAT_REWARD
    assert reward["correct"] == 0.0
    assert reward["total"] == pytest.approx(0.1)


def test_correct_with_whitespace() -> None:
    reward = compute_reward("Multiply: 2×5=10\n<answer> 10\n</answer>", 10)
    assert reward["correct"] == CORRECT_REWARD
    assert reward["total"] == pytest.approx(1.1)


def test_first_well_formed_tag_wins() -> None:
    assert parse_answer("<answer>5</answer> or maybe <answer>7</answer>") == 5
    assert compute_reward("<answer>5</answer><answer>7</answer>", 7)["correct"] == 0.0
    # A tag without an integer (the system prompt's placeholder) is skipped, as in the seed.
    assert parse_answer("<answer>X</answer> so <answer>7</answer>") == 7


def test_negative_answer_parses() -> None:
    assert parse_answer("<answer>-3</answer>") == -3


@pytest.mark.parametrize(
    "text",
    [
        "<answer>١٢</answer>",  # Arabic-Indic digits: int() would accept them
        "<answer>１２</answer>",  # fullwidth digits
        "<answer>12.5</answer>",
        "<answer>1 2</answer>",
        "<answer></answer>",
        "<answer>12",
        "answer>12</answer>",
    ],
)
def test_unparseable_answers_get_no_format_reward(text: str) -> None:
    assert parse_answer(text) is None
    assert compute_reward(text, 12)["format"] == 0.0


def test_huge_number_does_not_raise() -> None:
    # Over Python's 4300-digit int() limit: must be unparseable, not a ValueError.
    assert parse_answer("<answer>" + "9" * 5000 + "</answer>") is None
    assert parse_answer("<answer>" + "9" * (MAX_ANSWER_DIGITS + 1) + "</answer>") is None
    assert parse_answer("<answer>" + "9" * MAX_ANSWER_DIGITS + "</answer>") == 10**1000 - 1
    assert compute_reward("<answer>" + "1" * 10_000 + "</answer>", 1)["total"] == 0.0


@pytest.mark.parametrize(
    ("words", "bonus"),
    [(20, 0.3), (110, 0.15), (199, 0.3 / 180), (200, 0.0), (500, 0.0), (0, 0.3 * 200 / 180)],
)

def test_concise_bonus(words: int, bonus: float) -> None:
    response = " ".join(["word"] * words)
    reward = compute_reward(response, 1, concise_bonus=True)
    assert reward["concise"] == pytest.approx(bonus)
    assert reward["total"] == pytest.approx(bonus)


def test_concise_bonus_off_by_default() -> None:
    assert compute_reward("<answer>4</answer>", 4)["concise"] == 0.0
    assert compute_reward("<answer>4</answer>", 4, concise_bonus=True)["total"] == pytest.approx(
        0.1 + 1.0 + 0.3 * (CONCISE_WORDS - 1) / 180
    )


def test_fuzz_never_raises() -> None:
    rng = random.Random(0)
    pieces = ["<answer>", "</answer>", "-", " ", "\n", "١", "9" * 50, "<", ">", "x", "0"]
    for _ in range(2000):
        length = rng.randint(0, 60)
        if rng.random() < 0.5:
            text = "".join(rng.choice(pieces) for _ in range(length))
        else:
            text = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(length))
        reward = compute_reward(text, rng.randint(0, 100), rng.random() < 0.5)
        assert set(reward) == {"format", "correct", "concise", "total"}
        assert 0.0 <= reward["total"] <= 0.1 + 1.0 + 0.3 * 200 / 180 + 1e-12
        assert reward["total"] == pytest.approx(
            reward["format"] + reward["correct"] + reward["concise"]
        )


def test_concise_bonus_can_require_an_answer():
    # The seed's reward pays the bonus to empty text, more than the format reward: measured on
    # tiny-chat, RL then learns to answer nothing. The option closes that.
    assert compute_reward("", 7, concise_bonus=True)["total"] == pytest.approx(0.3 * 200 / 180)
    assert compute_reward("", 7, concise_bonus=True, concise_needs_answer=True)["total"] == 0.0
    tagged = compute_reward("<answer>7</answer>", 7, concise_bonus=True, concise_needs_answer=True)
    assert tagged["concise"] == pytest.approx(0.3 * 199 / 180) and tagged["correct"] == 1.0
