"""The seed write-up's own code, through the unmodified tinker SDK, against the local server.

Only the service client's base_url, the model name and step counts change (see
tests/seed_notebook.py): if the local backend were a look-alike of the SDK instead of a server
for its protocol, the notebook's very first call (a creation future used as the client) would
fail, as it did before.
"""

import math

import pytest
from seed_notebook import SEED, code_cells, run_cells, stored_cells
from tinker import types

import local_tinker

# Imports .. sampling "What's your favorite color?", less cell 9: `fwdbwd_result.model_dump()`
# fails on tinker 0.38 itself (ForwardBackwardOutput stopped being a pydantic model).
SFT_CELLS = [*range(1, 9), *range(10, 13)]
RL_CELLS = [1, *range(13, 31)]  # imports, then Test 2 from generate_problem to the comparison


@pytest.fixture
def seed_env(monkeypatch, local_server):
    monkeypatch.setenv("TINKER_API_KEY", local_tinker.LOCAL_API_KEY)  # the notebook reads it
    return local_server[0]


def test_stored_cells_are_the_write_ups_code():
    if not SEED.exists():
        pytest.skip(f"{SEED} not present (CI lays shared/ beside the clone)")
    assert stored_cells() == code_cells(SEED.read_text())


def test_seed_sft_learns_foo(seed_env, capsys):
    """Test 1: lr 5e-4 as written; tiny-chat needs more epochs than Qwen's 5."""
    cells = [stored_cells()[i] for i in SFT_CELLS]
    ns = run_cells(cells, seed_env, "tiny-chat",
                   {"for epoch in range(5):": "for epoch in range(150):"})
    printed = capsys.readouterr().out
    losses = [float(line.split("loss = ")[1]) for line in printed.splitlines() if "loss = " in line]
    assert len(losses) == 150 and losses[-1] < 0.1 and losses[0] > 5
    # The notebook samples once at temperature 0.7, unseeded (as on Tinker): after this training
    # about 1 sample in 11 is not exactly "foo" (measured: 182 of 200), so one sample cannot be
    # the check. The trained model's own probability of answering "foo" to the unseen question is.
    tokenizer, question = ns["tokenizer"], ns["test_tokens"]
    assert tokenizer.decode(ns["response"].sequences[0].tokens).endswith("<|im_end|>")
    answer = tokenizer.encode("foo<|im_end|>", add_special_tokens=False)
    logprobs = ns["sampling_client"].compute_logprobs(
        types.ModelInput.from_ints(tokens=question + answer)).result()
    assert math.exp(sum(logprobs[-len(answer):])) > 0.5, logprobs[-len(answer):]


def test_seed_rl_loop_runs(seed_env, capsys):
    """Test 2 end to end (3 training steps here; the reward curve is checked in the e2e test)."""
    cells = stored_cells()
    ns = run_cells([cells[i] for i in RL_CELLS], seed_env, "tiny-math",
                   {"for i in range(10):": "for i in range(3):",
                    "for _ in range(5):\n    p = generate_problem()":
                        "for _ in range(2):\n    p = generate_problem()"})
    assert len(ns["history"]) == 3
    assert all(set(h) == {"reward", "accuracy", "words"} for h in ns["history"])
    assert len(ns["rollouts"]) == 64 and len(ns["ds"]) == 2
    assert "Trained Reward" in capsys.readouterr().out


@pytest.mark.e2e
def test_seed_rl_reward_rises_on_the_default_model(seed_env, capsys):
    """Test 2 as written (10 steps of 8 problems x 8 samples, lr 2e-4, concise bonus after
    step 6) on tiny-instruct: reward and accuracy rise, words fall. Its sampling is unseeded
    (random, as on Tinker); measured on a loaded 2-core machine: reward 0.05, 0.21, 0.31 ...
    0.61, 0.61, 0.74; words 27 -> 13."""
    import random

    random.seed(0)  # the notebook's generate_problem draws from the global `random`
    cells = stored_cells()
    ns = run_cells([cells[i] for i in RL_CELLS], seed_env, "tiny-instruct", {})
    history = ns["history"]
    rewards = [h["reward"] for h in history]
    accuracy = [h["accuracy"] for h in history]
    words = [h["words"] for h in history]
    assert len(history) == 10
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    assert sum(accuracy[-3:]) / 3 > sum(accuracy[:3]) / 3, accuracy
    assert sum(words[-3:]) / 3 < sum(words[:3]) / 3, words
