"""train_rl.py end to end on the local backend: the W&B history and samples table read back."""

import json

import numpy as np
import pytest

import train_rl
from common.config import ConfigError
from tests.wandb_records import read_offline_run

STEP_KEYS = {"reward/mean", "reward/std", "reward/format", "reward/correct", "reward/concise",
             "rl/accuracy", "rl/frac_groups_zero_std", "rl/kl_sample_train", "rl/entropy",
             "completions/mean_words", "completions/mean_tokens", "completions/clipped_frac",
             "time/step", "time/sample", "time/train", "throughput/tokens_per_s",
             "tokens/prompt", "tokens/sampled", "tokens/trained", "train/loss", "train/lr"}


def rl_config(tmp_path, **overrides) -> train_rl.Config:
    # From scratch tiny-chat never writes an answer tag, but with the seed's concise bonus (paid
    # with or without an answer) on from the start, rewards differ within a group (by length),
    # so every step trains.
    # tiny-chat, not the default tiny-instruct: these check plumbing, and the untrained network
    # is the fastest to sample from.
    values = dict(backend="local", model="tiny-chat", log_dir=tmp_path / "rl",
                  wandb_mode="offline", batch_size=2,
                  group_size=4, max_tokens=24, max_steps=3, concise_bonus_after=0,
                  concise_needs_answer=False, sample_every=1, eval_problems=6, save_every=2)
    return train_rl.Config(**{**values, **overrides})


def test_rl_run_is_tracked_step_by_step(tmp_path, capsys):
    final = train_rl.main(rl_config(tmp_path))
    out = capsys.readouterr().out
    assert "note: tiny-chat has never seen the arithmetic task's answer tags" in out
    run_dir = tmp_path / "rl"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(STEP_KEYS <= set(m) for m in metrics)
    # The learner recomputes the sampler's logprobs on the same weights: KL ~ 0 (float noise).
    assert all(abs(m["rl/kl_sample_train"]) < 1e-4 for m in metrics)
    assert all(m["tokens/trained"] > m["tokens/sampled"] for m in metrics)
    assert final["eval/accuracy"] == 0.0 and "eval/reward" in final

    run = read_offline_run(run_dir)
    history = {r["_step"]: r for r in run.history if "reward/mean" in r}
    assert sorted(history) == [1, 2, 3]
    for m in metrics:
        assert history[m["step"]]["reward/mean"] == pytest.approx(m["reward/mean"])
    assert list(run.tables) == ["samples"]
    for step, table in zip((1, 2, 3), run.tables["samples"], strict=True):
        rows = table.rows
        assert {r["step"] for r in rows} == {step}
        assert len(rows) == 2 * 4
        for row in rows:
            parts = row["format"] + row["correct"] + row["concise"]
            assert row["reward"] == pytest.approx(parts)
        for group in (0, 1):  # group-normalised advantages: mean zero within each problem
            advantages = [r["advantage"] for r in rows if r["group"] == group]
            assert abs(np.mean(advantages)) < 1e-6
        mean_reward = np.mean([r["reward"] for r in rows])
        assert history[step]["reward/mean"] == pytest.approx(mean_reward)
    artifacts = [r["artifact"] for r in run.records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert [sorted(a["aliases"]) for a in artifacts] == [
        ["latest", "step-000002"], ["final", "latest", "step-000003"]]


def test_an_rl_step_that_trains_nothing_logs_no_loss(tmp_path):
    """Without the concise bonus, tiny-chat earns 0 everywhere: every group ties, no datum is
    trained, and no step may show a train/loss (a flat 0.0 would be a value that never was)."""
    train_rl.main(rl_config(tmp_path, max_steps=2, concise_bonus_after=None, sample_every=0,
                            eval_problems=0, save_every=0, group_size=2, max_tokens=8))
    metrics = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [m["rl/frac_groups_zero_std"] for m in metrics] == [1.0, 1.0]
    assert all(m["tokens/trained"] == 0 and "train/loss" not in m for m in metrics)
    run = read_offline_run(tmp_path / "rl")
    assert sorted(r["_step"] for r in run.history if "reward/mean" in r) == [1, 2]
    assert not [r for r in run.history if "train/loss" in r]
    assert "train/loss" not in run.summary


def test_a_run_that_trains_on_nothing_says_so(tmp_path, capsys):
    # No concise bonus and no answer tags: every reward is 0, every group tied, no datum.
    final = train_rl.main(rl_config(tmp_path, max_steps=2, concise_bonus_after=None,
                                    max_tokens=4, sample_every=0, eval_problems=0))
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("done: ")
    assert "WARNING: trained on nothing in every step" in last_line
    metrics = [json.loads(line)
               for line in (tmp_path / "rl/metrics.jsonl").read_text().splitlines()]
    assert [m["rl/steps_without_training"] for m in metrics] == [1, 2]
    assert not any("train/loss" in m for m in metrics)  # no loss was computed: none is logged
    assert final["rl/steps_without_training"] == 2
    summary = json.loads((tmp_path / "rl/summary.json").read_text())
    assert summary["rl/steps_without_training"] == 2


def test_untrained_warning_counts_steps():
    assert train_rl.untrained_warning(0, 10) is None
    assert "in 3 of 10 steps" in train_rl.untrained_warning(3, 10)
    assert "in every step" in train_rl.untrained_warning(10, 10)


def test_rl_resume_continues_exactly(tmp_path):
    straight = train_rl.main(rl_config(tmp_path, log_dir=tmp_path / "a", max_steps=4,
                                       sample_every=0, eval_problems=0))
    train_rl.main(rl_config(tmp_path, log_dir=tmp_path / "b", max_steps=2, sample_every=0,
                            eval_problems=0))
    resumed = train_rl.main(rl_config(tmp_path, log_dir=tmp_path / "b", max_steps=4,
                                      sample_every=0, eval_problems=0, resume=True))
    for key in ("reward/mean", "train/loss", "completions/mean_tokens",
                "tokens/cumulative/sampled", "tokens/cumulative/trained"):
        assert resumed[key] == straight[key]


def test_a_warm_started_run_records_the_warm_starts_rank_and_model(tmp_path):
    import train_sft

    train_sft.main(train_sft.Config(backend="local", log_dir=tmp_path / "warm", lora_rank=4,
                                    model="tiny-chat",
                                    max_steps=1, save_every=0, sample_every=0, eval_every=0,
                                    wandb_mode="disabled"))
    train_rl.main(rl_config(tmp_path, load_checkpoint=str(tmp_path / "warm"), max_steps=1,
                            sample_every=0, eval_problems=0))
    run = read_offline_run(tmp_path / "rl")
    assert run.config["lora_rank"] == 4 and run.config["model"] == "tiny-chat"  # not --lora_rank 8
    # warm start -> RL is one experiment: the RL run joins the warm start's W&B group.
    (record,) = [r["run"] for r in run.records if r["type"] == "run"]
    assert record["run_group"] == (tmp_path / "warm" / "wandb_group").read_text()
    assert record["run_group"].startswith("train_sft-tiny-chat-")
    (artifact,) = [r["artifact"] for r in run.records
                   if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert json.loads(artifact["metadata"])["lora_rank"] == 4


@pytest.mark.parametrize("overrides, message", [
    ({"group_size": 1}, "--group_size: 1 leaves group advantages always zero"),
    ({"max_tokens": 0}, "--max_tokens: must be >= 1"),
    ({"lr": 0.0}, "--lr: must be a positive number"),
    ({"lr": float("nan")}, "--lr: must be a positive number"),
    ({"batch_size": 0}, "--batch_size: must be >= 1"),
    ({"temperature": 0.0}, "--temperature: must be a number > 0"),
    ({"pair_counts": "0,1"}, "--pair_counts/--large_share"),
    ({"large_share": 1.5}, r"--pair_counts/--large_share: large_share must be in \[0, 1\]"),
])
def test_bad_rl_flags(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        train_rl.main(rl_config(tmp_path, **overrides))


def test_rl_dry_run_bounds_without_backend(tmp_path, monkeypatch, capsys):
    def no_backend(*args, **kwargs):
        raise AssertionError("--dry_run must not connect to a backend")
    monkeypatch.setattr("common.runs.connect", no_backend)
    assert train_rl.main(rl_config(tmp_path, dry_run=True, max_steps=5)) == {}
    out = capsys.readouterr().out
    # 2 problems x 4 samples x 24 tokens per step is the sampling bound.
    assert "upper bound" in out and "192" in out and "whole run (5 steps)" in out
