"""train_sft.py end to end on the local backend, checked from the files the run leaves behind."""

import json
import os
import signal
from pathlib import Path

import pytest

import train_sft
from common.config import ConfigError
from common.data import DatasetError
from common.runs import Run
from tests.wandb_records import read_offline_run

SECRETS = {"TINKER_API_KEY": "tml-PLANTED-tinker-secret-123", "WANDB_API_KEY": "planted0wandb0key0"}
STEP_KEYS = {"train/loss", "train/lr", "train/tokens", "train/grad_norm", "tokens/trained",
             "time/step", "progress/epoch", "progress/done_frac"}


def sft_config(tmp_path: Path, **overrides) -> train_sft.Config:
    values = dict(backend="local", log_dir=tmp_path / "run", wandb_mode="offline", max_steps=40,
                  save_every=20, sample_every=10, eval_every=10)
    return train_sft.Config(**{**values, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_sft_run_learns_and_is_tracked(tmp_path, monkeypatch):
    for key, value in SECRETS.items():  # planted: must never reach a file of the run
        monkeypatch.setenv(key, value)
    final = train_sft.main(sft_config(tmp_path))
    run_dir = tmp_path / "run"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"] / 10
    assert final["eval/loss"] < 0.5  # held-out questions, never trained on

    wandb_run = read_offline_run(run_dir)
    history = {row["_step"]: row for row in wandb_run.history if "train/loss" in row}
    assert sorted(history) == list(range(1, 41))
    for row in metrics:  # metrics.jsonl and the W&B history agree value for value
        assert STEP_KEYS <= set(history[row["step"]])
        # ... except bookkeeping: W&B has _step, and the local backend costs nothing.
        assert not [k for k in history[row["step"]] if k.startswith(("progress/step", "cost/"))]
        assert row["progress/step"] == row["step"] and row["cost/step_usd"] == 0.0
        for key in STEP_KEYS:
            assert history[row["step"]][key] == pytest.approx(row[key])
    assert sorted(s for s, r in history.items() if "eval/loss" in r) == [10, 20, 30, 40]

    # One samples table: an increment per sample step, every row carrying its step.
    assert list(wandb_run.tables) == ["samples"]
    increments = wandb_run.tables["samples"]
    assert [t.step for t in increments] == [10, 20, 30, 40]
    for table in increments:
        assert len(table.rows) == 2 and {r["step"] for r in table.rows} == {table.step}
    # Decoded as every sample is (common.datums.decode_completion): the answer without its
    # end-of-turn token, which the stop reason records.
    assert increments[-1].rows[0]["completion"] == "foo"
    assert increments[-1].rows[0]["stop_reason"] == "stop"
    checkpoints = read_jsonl(run_dir / "checkpoints.jsonl")
    # Each checkpoint's sampler record comes before its state record (resume keys on states).
    assert [(c["name"], c["kind"]) for c in checkpoints] == [
        ("000020", "sampler"), ("000020", "state"), ("final", "sampler"), ("final", "state")]
    # Each sampler checkpoint is a `model` reference artifact of this run.
    artifacts = [r["artifact"] for r in wandb_run.records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert [[e["ref"] for e in a["manifest"]["contents"]] for a in artifacts] == [
        [c["path"]] for c in checkpoints if c["kind"] == "sampler"]
    assert [sorted(a["aliases"]) for a in artifacts] == [
        ["latest", "step-000020"], ["final", "latest", "step-000040"]]
    assert json.loads(artifacts[-1]["metadata"])["state_path"] == checkpoints[-1]["path"]
    assert wandb_run.summary["checkpoint/final"] == checkpoints[-2]["path"]
    assert checkpoints[-2]["path"].endswith("/sampler_weights/final")
    assert wandb_run.config["lr"] == 2e-3 and wandb_run.config["model"] == "tiny-instruct"
    assert "wandb_mode" not in wandb_run.config and "dry_run" not in wandb_run.config
    assert wandb_run.summary["train/loss"]["min"] == min(m["train/loss"] for m in metrics)

    checkpoint_root = Path(os.environ["LOCAL_TINKER_ROOT"])
    for secret in SECRETS.values():
        assert files_containing(run_dir, secret) == []
        assert files_containing(checkpoint_root, secret) == []


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    straight = train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "a", max_steps=12,
                                         sample_every=0, save_every=6))
    # The same run, stopped after its step-6 checkpoint and continued with --resume.
    train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "b", max_steps=6, save_every=6,
                              sample_every=0))
    resumed = train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "b", max_steps=12,
                                        save_every=6, sample_every=0, resume=True))
    assert resumed["train/loss"] == straight["train/loss"]
    assert resumed["tokens/cumulative/trained"] == straight["tokens/cumulative/trained"]
    assert resumed["eval/loss"] == straight["eval/loss"]
    steps = [m["step"] for m in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert steps == list(range(1, 13))
    run = read_offline_run(tmp_path / "b")
    assert (tmp_path / "b" / "wandb_run_id").read_text() == run.run_ids[0]
    # Both attempts are one run in one group (the group of the first attempt is kept, though the
    # default run name carries the time it started).
    groups = [r["run"]["run_group"] for r in run.records if r["type"] == "run"]
    recorded = (tmp_path / "b" / "wandb_group").read_text()
    assert len(groups) == 2 and groups[0] == groups[1] == recorded


def training_record(run_dir: Path) -> tuple[list, list]:
    """What the weights decided: each step's losses and gradient norm, each sampled answer."""
    steps = [(m["step"], m["train/loss"], m.get("eval/loss"), m["train/grad_norm"])
             for m in read_jsonl(run_dir / "metrics.jsonl")]
    samples = [(s["step"], s["prompt"], s["completion"])
               for s in read_jsonl(run_dir / "samples.jsonl")]
    return steps, samples


def test_steps_sent_ahead_train_exactly_as_steps_sent_one_at_a_time(tmp_path, monkeypatch):
    """--submit_ahead changes when calls go out, never what they compute: losses, answers
    sampled from the weights, and a checkpoint (the one a crashed run resumes from) agree bit
    for bit with a run that sends each step after the one before."""
    flags = dict(max_steps=9, save_every=4, sample_every=3, eval_every=2, sample_prompts=2,
                 wandb_mode="disabled")
    train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "one", submit_ahead=0, **flags))
    log = Run.log

    def crash_at_step_7(run, metrics, step):
        if step == 7:
            raise RuntimeError("crashed at step 7")
        log(run, metrics, step)

    monkeypatch.setattr(Run, "log", crash_at_step_7)
    with pytest.raises(RuntimeError, match="crashed at step 7"):
        train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "ahead", submit_ahead=2, **flags))
    monkeypatch.setattr(Run, "log", log)
    train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "ahead", submit_ahead=2, resume=True,
                              **flags))  # from the step-4 checkpoint: steps 5-9 again
    expected = training_record(tmp_path / "one")
    assert [s[0] for s in expected[0]] == list(range(1, 10))
    assert [s[0] for s in expected[1]] == [3, 3, 6, 6, 9, 9]
    assert training_record(tmp_path / "ahead") == expected


def test_steps_sent_ahead_overlap_the_services_round_trips(tmp_path, monkeypatch):
    """Against a service whose calls each take 1.5 s to come back (Tinker's round trips,
    injected), a loop that waits for each step needs >= 1.5 s a step; one step ahead runs two
    at a time."""
    monkeypatch.setenv("LOCAL_TINKER_LATENCY_S", "1.5")
    train_sft.main(sft_config(tmp_path, max_steps=8, save_every=0, sample_every=0,
                              eval_fraction=0.0, submit_ahead=1, wandb_mode="disabled"))
    recorded = [m["_time"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    # Step 2's record to step 7's (step 8, the last, also samples and saves): >= 7.5 s one
    # step at a time, ~4.5 s two at a time.
    assert recorded[6] - recorded[1] < 5 * 1.5


def test_a_signal_finishes_the_step_sent_ahead_and_saves_its_weights(tmp_path, monkeypatch):
    """Ctrl-C during step 5 with step 6 already sent: the run finishes 6 and saves it as 6 (not
    step 6's weights under step 5's name), so that --resume continues exactly."""
    flags = dict(max_steps=10, save_every=8, sample_every=0, eval_every=5, submit_ahead=1,
                 wandb_mode="disabled")
    log = Run.log

    def log_then_signal(run, metrics, step):
        log(run, metrics, step)
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Run, "log", log_then_signal)
    with pytest.raises(SystemExit) as stopped:
        train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "stopped", **flags))
    assert stopped.value.code == 130
    monkeypatch.setattr(Run, "log", log)
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["interrupted_at_step"] == 6
    states = [c["step"] for c in read_jsonl(tmp_path / "stopped" / "checkpoints.jsonl")
              if c["kind"] == "state"]
    assert states == [6]
    train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "stopped", resume=True, **flags))
    train_sft.main(sft_config(tmp_path, log_dir=tmp_path / "straight", **flags))
    assert training_record(tmp_path / "stopped") == training_record(tmp_path / "straight")


@pytest.mark.parametrize("overrides, error, message", [
    ({"lr": -1.0}, ConfigError, "--lr: must be a positive number"),
    ({"batch_size": 0}, ConfigError, "--batch_size: must be >= 1"),
    ({"batch_size": 30}, ConfigError, "--batch_size: 30 is more than the 18 training rows"),
    ({"eval_fraction": 1.0}, ConfigError, "--eval_fraction: must be in"),
    ({"max_steps": 0}, ConfigError, "--max_steps: must be >= 1"),
    ({"submit_ahead": -1}, ConfigError, "--submit_ahead: must be >= 0"),
    ({"lora_rank": 0}, ConfigError, r"--lora_rank: must be in \[1, 1024\]"),
    ({"max_length": 20}, Exception, "foo row 1: .* over --max_length 20"),
    ({"dataset": "missing.jsonl"}, DatasetError, "no such file"),
    ({"resume": True, "log_dir": None}, ConfigError, "--resume: needs --log_dir"),
    ({"resume": True}, ConfigError, "--resume: no run in"),
    ({"load_checkpoint": "tinker://nope/weights/1"}, ConfigError,
     "--load_checkpoint tinker://nope/weights/1: .*not found"),
    ({"model": "org/not-cached"}, ConfigError,
     "--model org/not-cached.*Available offline: tiny-chat"),
])
def test_bad_flags_fail_clearly(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        train_sft.main(sft_config(tmp_path, **overrides))


def test_token_counts_and_costs_match_hand_counted_datums(tmp_path):
    from common.data import load_chat_data
    from common.datums import conversation_datum
    from local_tinker.models import build_tiny_chat_tokenizer

    train_sft.main(sft_config(tmp_path, max_steps=3, sample_every=0, eval_every=0))
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    tokenizer = build_tiny_chat_tokenizer()
    lengths = [conversation_datum(tokenizer, c, 2048).model_input.length
               for c in load_chat_data("foo").conversations]
    order = train_sft.epoch_order(20, 0, epoch=-1)
    train_idx = order[2:]  # 10% held out
    cumulative = 0
    for m in metrics:
        slot = m["step"] - 1  # 2 steps per epoch: step 1 and 2 are epoch 0, step 3 epoch 1
        epoch, slot = divmod(slot, 2)
        batch = train_sft.epoch_order(18, 0, epoch)[slot * 8:(slot + 1) * 8]
        expected = sum(lengths[train_idx[i]] for i in batch)
        cumulative += expected
        assert m["tokens/trained"] == m["train/tokens"] == expected
        assert m["tokens/cumulative/trained"] == cumulative
        assert m["cost/step_usd"] == 0.0  # the local backend is free
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tokens/cumulative/trained"] == cumulative


def test_dry_run_makes_no_backend_call(tmp_path, monkeypatch, capsys):
    def no_backend(*args, **kwargs):
        raise AssertionError("--dry_run must not connect to a backend")
    monkeypatch.setattr("common.runs.connect", no_backend)
    monkeypatch.setenv("TINKER_API_KEY", "tml-dry-run-key-000")  # Tinker prices, no Tinker call
    assert train_sft.main(train_sft.Config(dry_run=True, log_dir=tmp_path / "dry")) == {}
    out = capsys.readouterr().out
    assert "dry run: train_sft on Qwen/Qwen3-4B-Instruct-2507 (tinker)" in out
    assert "whole run (50 steps)" in out and "$" in out
    assert not (tmp_path / "dry").exists()
