"""train_rl.py --max_steps_off_policy: stale batches, their loss, staleness, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tinker import types

import train_rl
from common.datums import chat_tokens, rollout_datum

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("reward/mean", "train/loss", "rl/kl_sample_train", "rl/staleness",
            "completions/mean_tokens", "tokens/cumulative/trained")


def read_jsonl(path: Path) -> list[dict]:
    # Complete lines only: a run may be writing the last one while a test polls the file.
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


def rl_flags(**overrides) -> dict:
    # tiny-chat with the seed's concise bonus from step 0: rewards differ within each group (by
    # length), so every step trains; lr 1e-2 moves the weights enough that a stale sampler's
    # logprobs differ measurably from the learner's.
    values = dict(backend="local", model="tiny-chat", wandb_mode="offline", batch_size=2,
                  group_size=4, max_tokens=24, max_steps=4, concise_bonus_after=0,
                  concise_needs_answer=False, sample_every=0, eval_problems=0, save_every=1,
                  lr=1e-2, max_steps_off_policy=1)
    return {**values, **overrides}


def test_off_policy_run_logs_staleness_and_stores_the_batches_sampled_ahead(tmp_path):
    train_rl.main(train_rl.Config(log_dir=tmp_path / "k1", **rl_flags()))
    metrics = read_jsonl(tmp_path / "k1" / "metrics.jsonl")
    assert [m["rl/staleness"] for m in metrics] == [0, 1, 1, 1]
    assert all(m["tokens/trained"] > 0 for m in metrics)
    # Stale batches: the learner's logprobs of the sampled tokens moved away from the sampler's.
    assert abs(metrics[0]["rl/kl_sample_train"]) < 1e-4
    assert all(abs(m["rl/kl_sample_train"]) > 1e-3 for m in metrics[1:])
    # The checkpoint after step 2 holds batch 3, sampled by the weights after step 1 (a
    # resumed run cannot sample it again: those weights are not in the checkpoint).
    ahead = json.loads((tmp_path / "k1" / "rollouts" / "after-000002.json").read_text())
    assert list(ahead) == ["3"] and ahead["3"]["sampler_step"] == 1
    assert len(ahead["3"]["groups"]) == 2 and len(ahead["3"]["groups"][0]) == 4

    on_policy = train_rl.main(train_rl.Config(log_dir=tmp_path / "k0",
                                              **rl_flags(max_steps_off_policy=0)))
    assert on_policy["rl/staleness"] == 0
    assert on_policy["train/loss"] != metrics[-1]["train/loss"]
    assert not (tmp_path / "k0" / "rollouts").exists()


def test_a_stale_batch_is_trained_with_its_samplers_logprobs(service_client):
    """The importance ratio of a stale batch is learner / *sampler* probability, not 1."""
    learner = service_client.create_lora_training_client(base_model="tiny-chat", rank=4, seed=3
                                                         ).result()
    tokenizer = learner.get_tokenizer()
    stale = learner.save_weights_and_get_sampling_client().result()
    prompt = chat_tokens(tokenizer, [{"role": "user", "content": "2 3 4 5"}], True)
    params = types.SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    sequences = stale.sample(types.ModelInput.from_ints(prompt), 2, params).result().sequences
    kept = [(prompt, seq, advantage) for seq, advantage in zip(sequences, (1.0, -1.0),
                                                                strict=True)]
    def update() -> tuple:  # as train_rl's loop submits one optimizer step
        datums = [rollout_datum(prompt, seq.tokens, seq.logprobs, advantage)
                  for prompt, seq, advantage in kept]
        return (learner.forward_backward(datums, "importance_sampling"),
                learner.optim_step(types.AdamParams(learning_rate=1e-2)))

    # One update moves the learner away from the sampler's weights...
    for future in update():
        future.result()
    # ...so training on the same batch now is off-policy by one step.
    fwd_bwd, optim = update()
    output = fwd_bwd.result()
    loss = 0.0
    for (_, seq, advantage), out in zip(kept, output.loss_fn_outputs, strict=True):
        learner_lp = out["logprobs"].to_numpy()[-len(seq.tokens):].astype(np.float64)
        sampler_lp = np.asarray(seq.logprobs, np.float64)
        assert np.abs(learner_lp - sampler_lp).max() > 1e-3  # the weights did move
        loss -= float(np.sum(np.exp(learner_lp - sampler_lp) * advantage))
    assert output.metrics["loss:sum"] == pytest.approx(loss, rel=1e-4)
    on_policy_loss = -sum(len(seq.tokens) * adv for _, seq, adv in kept)  # ratio 1
    assert output.metrics["loss:sum"] != pytest.approx(on_policy_loss, rel=1e-3)
    optim.result()


def start_rl(log_dir: Path, *extra: str) -> subprocess.Popen:
    flags = [f"--{k}={v}" for k, v in rl_flags(max_steps=6).items()]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # see test_resilience
    return subprocess.Popen([sys.executable, str(ROOT / "train_rl.py"), "--log_dir", str(log_dir),
                             *flags, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.e2e
def test_off_policy_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    straight = start_rl(tmp_path / "straight")
    assert straight.wait(timeout=1800) == 0, straight.stdout.read()
    victim = start_rl(tmp_path / "killed")
    checkpoints = tmp_path / "killed" / "checkpoints.jsonl"
    # Killed once the state after step 3 is recorded: batch 4, sampled ahead, is in flight.
    while victim.poll() is None and not (
            checkpoints.exists() and any(r["kind"] == "state" and r["step"] >= 3
                                         for r in read_jsonl(checkpoints))):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    resumed = start_rl(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=1800) == 0, resumed.stdout.read()
    expected = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    got = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, 7))
    for a, b in zip(expected, got, strict=True):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
