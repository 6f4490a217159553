"""common/evaluation.py: intervals, scoring with a scripted sampler, requests in flight,
summaries and tables."""

import math

import numpy as np
import pytest
from tinker import types

from common.arithmetic import Problem
from common.evaluation import (
    in_flight,
    markdown_table,
    problem_params,
    score_chat,
    score_problems,
    summarize,
    summarize_chat,
    wilson_interval,
)
from common.seeding import derive_seed
from common.tasks import TaskConfig, arithmetic_problem, make_task
from local_tinker.models import build_tiny_chat_tokenizer

pytestmark = pytest.mark.unit

TOKENIZER = build_tiny_chat_tokenizer()
END = TOKENIZER.eos_token_id


@pytest.mark.parametrize("successes, n, expected", [
    (8, 10, (0.490, 0.943)),
    (0, 10, (0.0, 0.278)),
    (10, 10, (0.722, 1.0)),
    (5, 10, (0.237, 0.763)),
    (0, 0, (0.0, 1.0)),
])
def test_wilson_interval_known_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert (round(low, 3), round(high, 3)) == expected
    assert 0.0 <= low <= high <= 1.0


def test_wilson_interval_approaches_the_normal_one_for_large_n():
    low, high = wilson_interval(3000, 10000)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 10000)
    assert low == pytest.approx(0.3 - half, abs=1e-4)
    assert high == pytest.approx(0.3 + half, abs=1e-4)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes must be in"):
        wilson_interval(11, 10)


class ScriptedSampler:
    """Answers from a script; records every submit and every wait, in order."""

    def __init__(self, answers: list[str], logprob: float = -1.0):
        self.answers = answers
        self.logprob = logprob
        self.events: list[tuple[str, int]] = []
        self.seeds: list[int | None] = []

    def sample(self, prompt, num_samples, sampling_params):
        index = len(self.seeds)
        self.seeds.append(sampling_params.seed)
        self.events.append(("submit", index))
        tokens = TOKENIZER.encode(self.answers[index], add_special_tokens=False) + [END]
        sequence = types.SampledSequence(stop_reason="stop", sequence_id=str(index),
                                         tokens_np=np.asarray(tokens, np.int32))
        return Waited(self.events, index, types.SampleResponse(sequences=[sequence]))

    def compute_logprobs(self, prompt):
        return Waited(self.events, -1, [None] + [self.logprob] * (prompt.length - 1))


class Waited:
    def __init__(self, events, index, value):
        self.events, self.index, self.value = events, index, value

    def result(self):
        self.events.append(("wait", self.index))
        return self.value


PROBLEMS = [arithmetic_problem(Problem(numbers)) for numbers in
            [(3, 5), (1, 2, 3, 4), (2, 2, 1, 1, 1, 1), (9, 9)]]
ARITHMETIC = make_task(TaskConfig())
PARAMS = types.SamplingParams(max_tokens=32, temperature=0.3, seed=7)


def test_score_arithmetic_submits_a_chunk_ahead_and_scores_each_answer():
    answers = ["<answer>8</answer>", "Add pairs: 3, 7\n<answer>20</answer>", "no tag",
               "<answer>18</answer>"]
    sampler = ScriptedSampler(answers)
    rows = score_problems(sampler, TOKENIZER, PROBLEMS, PARAMS, ARITHMETIC)
    kinds = [kind for kind, _ in sampler.events]
    assert kinds == ["submit"] * 4 + ["wait"] * 4  # fewer problems than one chunk
    assert [r["correct"] for r in rows] == [True, False, False, True]
    # Decoded as training decodes (common.datums.decode_completion): no end-of-turn token.
    assert rows[0]["completion"] == "<answer>8</answer>"
    assert rows[1] | {"completion": None} == {
        "prompt": "1, 2, 3, 4", "part": "2 pairs", "answer": "21", "completion": None,
        "reward_format": 0.1, "reward_correct": 0.0, "reward_concise": 0.0, "reward": 0.1,
        "correct": False, "words": 5, "tokens": len(answers[1]) + 1, "stop_reason": "stop"}
    assert rows[0]["reward"] == pytest.approx(1.1)
    # One seed per problem, all different, the same on every call.
    assert len(set(sampler.seeds)) == 4
    assert sampler.seeds == [problem_params(PARAMS, i).seed for i in range(4)]
    assert sampler.seeds == [derive_seed("eval", 7, i) for i in range(4)]
    assert problem_params(PARAMS.model_copy(update={"seed": None}), 3).seed is None


def test_concise_bonus_is_optional():
    rows = score_problems(ScriptedSampler(["<answer>8</answer>"]), TOKENIZER, PROBLEMS[:1],
                          PARAMS, ARITHMETIC, concise_bonus=True)
    assert rows[0]["reward_concise"] > 0
    assert rows[0]["reward"] == pytest.approx(1.1 + rows[0]["reward_concise"])


def test_the_reward_is_the_tasks_as_in_training():
    """train_rl's default reward pays the concise bonus only with an answer tag; so does the
    evaluation's, and --noconcise_needs_answer (the seed's reward) pays it for any short text."""
    untagged = ["I am not sure"]
    rows = score_problems(ScriptedSampler(untagged), TOKENIZER, PROBLEMS[:1], PARAMS,
                          ARITHMETIC, concise_bonus=True)
    assert rows[0]["reward"] == rows[0]["reward_concise"] == 0.0
    seeds = make_task(TaskConfig(concise_needs_answer=False))
    rows = score_problems(ScriptedSampler(untagged), TOKENIZER, PROBLEMS[:1], PARAMS, seeds,
                          concise_bonus=True)
    assert rows[0]["reward"] == pytest.approx(0.3 * (200 - 4) / 180)


def test_in_flight_reads_one_chunk_while_the_next_is_queued():
    """Chunks of 2 out of 5: the third chunk goes out only once the first has been read, so
    answers (and the progress bar) arrive chunk by chunk, and the sampler always has the next
    chunk queued."""
    events = []

    def submit(i):
        events.append(f"submit {i}")
        return i

    for i in in_flight(submit, 5, chunk=2):
        events.append(f"read {i}")
    assert events == ["submit 0", "submit 1", "submit 2", "submit 3", "read 0", "read 1",
                      "submit 4", "read 2", "read 3", "read 4"]
    assert list(in_flight(lambda i: i, 0, chunk=2)) == []


def test_summarize_counts_and_intervals():
    rows = [{"part": k, "correct": c, "reward": 1.1 if c else 0.1, "reward_format": 0.1,
             "reward_correct": 1.0 if c else 0.0, "reward_concise": 0.0, "words": 4, "tokens": 9}
            for k, c in [("1 pair", True)] * 8 + [("1 pair", False)] * 2
            + [("10 pairs", False)] * 5 + [("2 pairs", False)] * 5]
    summary = summarize(rows)
    assert summary["n"] == 20 and summary["accuracy"] == 0.4
    assert (summary["accuracy_low"], summary["accuracy_high"]) == wilson_interval(8, 20)
    assert summary["reward"] == pytest.approx(0.5) and summary["reward_correct"] == 0.4
    assert summary["by_part"]["1 pair"] == {"accuracy": 0.8, "low": wilson_interval(8, 10)[0],
                                            "high": wilson_interval(8, 10)[1], "n": 10}
    assert summary["by_part"]["2 pairs"]["accuracy"] == 0.0
    assert list(summary["by_part"]) == ["1 pair", "2 pairs", "10 pairs"]  # natural order


def test_a_reward_without_a_correct_part_has_no_accuracy():
    rows = [{"part": None, "correct": None, "reward": r, "reward_style": r, "words": 3,
             "tokens": 5} for r in (0.2, 0.4)]
    summary = summarize(rows)
    assert "accuracy" not in summary and "by_part" not in summary
    assert summary["reward"] == summary["reward_style"] == pytest.approx(0.3)


def test_score_chat_nll_per_reference_token_and_exact_match():
    conversations = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "foo"}],
                     [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "foo"}]]
    sampler = ScriptedSampler(["foo", " bar"], logprob=-0.5)
    rows = score_chat(sampler, TOKENIZER, conversations, PARAMS)
    assert [r["exact_match"] for r in rows] == [True, False]
    # "foo" + <|im_end|> + "\n": five weighted targets, each at -0.5.
    assert [r["reference_tokens"] for r in rows] == [5, 5]
    assert rows[0]["nll"] == pytest.approx(2.5)
    summary = summarize_chat(rows)
    assert summary["nll"] == pytest.approx(0.5) and summary["exact_match"] == 0.5
    assert summary["n"] == 2


def test_markdown_table():
    table = markdown_table(["run", "value"], [["a|b", 0.123456], ["c", None]])
    assert table.splitlines() == ["| run  | value  |", "|------|--------|",
                                  "| a\\|b | 0.1235 |", "| c    |        |"]
