"""Tracker: files and a real offline W&B run agree; modes, fallbacks, resume, secrets."""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.runfiles import ROOT, find_run_dir, read_checkpoints
from common.secrets import MASK, is_secret_key, redact, secret_values
from common.tracking import (
    STEP_METRIC,
    Tracker,
    check_wandb_settings,
    has_wandb_credentials,
    requeued_run_dir,
    resolve_wandb_mode,
    run_name,
)
from tests.wandb_records import read_offline_run

SAMPLE_COLUMNS = ["step", "prompt", "completion", "reward"]


@pytest.fixture(autouse=True)
def no_wandb_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key and no netrc entry unless a test adds one."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def make_tracker(run_dir: Path, mode: str = "offline", **kwargs) -> Tracker:
    config = kwargs.pop("config", {"model": "tiny", "lr": 1.0e-4, "nested": {"rank": 8}})
    return Tracker(
        run_dir,
        project="tracking-test",
        mode=mode,  # type: ignore[arg-type]
        run_name="test-run",
        group="tests",
        job_type="sft",
        config=config,
        **kwargs,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_offline_run_round_trip(tmp_path: Path) -> None:
    tracker = make_tracker(tmp_path)
    for step in range(5):
        metrics = {"train/loss": 1.0 / (step + 1), "train/lr": np.float32(1e-4), "train/tokens": 10}
        tracker.log(metrics, step=step)
        if step in (1, 3):
            rows = [[step, "1+1=", f"answer {step}", 1.0], [step, "2+2=", "4", np.float64(0.5)]]
            tracker.log_table("samples", SAMPLE_COLUMNS, rows, step=step)
        if step in (2, 4):
            tracker.log_checkpoint(step, f"{step:06d}", f"local://run/weights/{step:06d}", "state")
    tracker.log_final_checkpoint("local://run/sampler_weights/final")
    tracker.summary(**{"eval/accuracy": 0.75})
    tracker.finish()
    tracker.finish()  # idempotent

    wb = read_offline_run(tmp_path)
    assert wb.run_ids == [(tmp_path / "wandb_run_id").read_text()]
    assert wb.config == {"model": "tiny", "lr": 1.0e-4, "nested": {"rank": 8}}
    assert [row["_step"] for row in wb.history] == [0, 1, 2, 3, 4]
    # metrics.jsonl and W&B history hold exactly the same values for every step.
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    for file_row, wb_row in zip(metrics, wb.history, strict=True):
        assert file_row.pop("step") == wb_row["_step"] == wb_row.pop("train/global_step")
        assert isinstance(file_row.pop("_time"), float)
        assert file_row == {k: v for k, v in wb_row.items() if not k.startswith("_")}
    assert metrics[4]["train/loss"] == 0.2 and metrics[0]["train/tokens"] == 10
    # One samples table, one increment per logged step; the files hold the same rows.
    assert list(wb.tables) == ["samples"]
    increments = wb.tables["samples"]
    assert [t.step for t in increments] == [1, 3]
    assert increments[0].rows[0] == dict(step=1, prompt="1+1=", completion="answer 1", reward=1.0)
    assert [r["completion"] for r in increments[1].rows] == ["answer 3", "4"]
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert [(s["table"], s["step"], s["completion"]) for s in samples] == [
        ("samples", 1, "answer 1"),
        ("samples", 1, "4"),
        ("samples", 3, "answer 3"),
        ("samples", 3, "4"),
    ]
    # No bookkeeping charts: no checkpoints table, no per-step table keys.
    assert not [k for row in wb.history for k in row if k.startswith("checkpoints")]
    assert [c["name"] for c in read_checkpoints(tmp_path)] == ["000002", "000004"]
    assert wb.summary["checkpoint/final"] == "local://run/sampler_weights/final"
    assert wb.summary["checkpoint/last"] == "local://run/weights/000004"
    assert wb.summary["eval/accuracy"] == 0.75 and wb.summary["status"] == "finished"
    assert wb.exit_codes == [0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoint/final"] == "local://run/sampler_weights/final"
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["nested"] == {"rank": 8}


def test_auto_mode_without_credentials_is_offline_and_says_how_to_sync(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not has_wandb_credentials()
    assert resolve_wandb_mode("auto") == "offline"
    tracker = make_tracker(tmp_path / "run", mode="auto")
    tracker.finish()
    out = capsys.readouterr().out
    assert tracker.wandb_mode == "offline"
    assert f"wandb sync {tmp_path / 'run' / 'wandb'}/offline-run-" in out
    assert f"wandb leet {tmp_path / 'run' / 'wandb'}" in out
    assert out.count("wandb sync") == 1


def test_auto_mode_with_credentials_is_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert resolve_wandb_mode("auto") == "online"
    (tmp_path / "netrc").write_text("machine example.com login u password p\n")
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError):
        resolve_wandb_mode("sometimes")


def test_failed_online_init_falls_back_to_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    real_init, modes = wandb.init, []

    def init(*args, **kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise RuntimeError("no route to api.wandb.ai")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    tracker = make_tracker(tmp_path, mode="online")
    tracker.wait_for_wandb()  # W&B starts on the worker thread
    assert modes == ["online", "offline"] and tracker.wandb_mode == "offline"
    assert "W&B online init failed (RuntimeError: no route" in capsys.readouterr().out

    # A W&B error later turns W&B off once; the files keep going.
    run = tracker._run
    tracker.log({"train/loss": 1.0}, step=0)
    tracker.wait_for_wandb()  # W&B calls run on a worker thread: step 0 reached W&B
    monkeypatch.setattr(run, "log", lambda *a, **k: 1 / 0)
    tracker.log({"train/loss": 0.5}, step=1)
    tracker.log({"train/loss": 0.25}, step=2)
    tracker.finish()
    run.finish()
    assert capsys.readouterr().out.count("W&B log failed (ZeroDivisionError") == 1
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_failed_offline_init_continues_with_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    modes = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: modes.append(kwargs["mode"]) or 1 / 0)
    with make_tracker(tmp_path, mode="online") as tracker:
        tracker.log({"train/loss": 1.0}, step=0)
    assert tracker.wandb_mode == "disabled"
    assert modes == ["online", "offline", "offline"]  # offline twice: a slow service start
    out = capsys.readouterr().out
    assert "trying once more" in out and "files only" in out
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["train/loss"] == 1.0


def test_disabled_mode_writes_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now fail
    tracker = make_tracker(tmp_path, mode="disabled")
    tracker.log({"train/loss": float("nan"), "train/grad_norm": float("inf")}, step=0)
    tracker.log_table("samples", ["prompt"], [["1+1="]], step=0)
    tracker.log_checkpoint(0, "000000", "local://run/weights/000000", "state")
    tracker.finish()
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "wandb").exists()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoints.jsonl", "samples.jsonl"} <= names
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]  # NaN/Infinity: Python's json reads them
    assert math.isnan(row["train/loss"]) and row["train/grad_norm"] == math.inf


def test_resume_continues_the_same_run_without_duplicate_steps(tmp_path: Path) -> None:
    with make_tracker(tmp_path) as tracker:
        for step in range(5):
            tracker.log({"train/loss": float(step)}, step=step)
            if step in (2, 4):
                tracker.log_checkpoint(
                    step, f"{step:06d}", f"local://r/weights/{step:06d}", "state"
                )
    run_id = (tmp_path / "wandb_run_id").read_text()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')  # the crash cut a line short

    with make_tracker(tmp_path, resume=True) as tracker:
        tracker.truncate_after(2)  # resumed from the checkpoint saved at step 2
        for step in range(3, 6):
            tracker.log({"train/loss": float(step) + 0.5}, step=step)
    assert (tmp_path / "wandb_run_id").read_text() == run_id
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3, 4, 5]
    assert [c["name"] for c in read_checkpoints(tmp_path)] == ["000002"]
    # The first attempt holds steps 3 and 4, which this one redoes: it is set aside, and this
    # attempt logs the steps it kept (0-2) again from metrics.jsonl: every step once.
    wb = read_offline_run(tmp_path)
    assert wb.run_ids == [run_id]
    assert [(r["_step"], r["train/loss"]) for r in wb.history] == [
        (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.5), (4, 4.5), (5, 5.5)]
    assert len(list((tmp_path / "wandb" / "incomplete").glob(f"offline-run-*-{run_id}"))) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_a_new_run_in_an_old_directory_starts_over(tmp_path: Path) -> None:
    make_tracker(tmp_path, mode="disabled").log({"a": 1}, step=0)
    first_id = (tmp_path / "wandb_run_id").read_text()
    make_tracker(tmp_path, mode="disabled").log({"a": 2}, step=0)
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["a"] == 2
    assert (tmp_path / "wandb_run_id").read_text() != first_id


def test_secrets_never_reach_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tinker_key, wandb_key = "tml-SECRETSECRET123", "wandb-0123456789abcdef0123456789"
    monkeypatch.setenv("TINKER_API_KEY", tinker_key)
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)
    config = {
        "backend": {"api_key": tinker_key, "base_url": f"https://x.dev/?key={tinker_key}"},
        "note": f"key is {wandb_key}",
        "args": ["--tinker_api_key", tinker_key],
    }
    with make_tracker(tmp_path, mode="offline", config=config) as tracker:
        tracker.log({"train/loss": 1.0}, step=0)
        tracker.log_table("samples", ["prompt", "completion"], [[f"say {tinker_key}", "ok"]], 0)
        tracker.log_checkpoint(0, "000000", f"local://{tinker_key}/weights/000000", "state")
        tracker.summary(note=f"done with {wandb_key}")
    assert tracker.wandb_mode == "offline"
    assert tinker_key not in capsys.readouterr().out
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        assert tinker_key.encode() not in path.read_bytes(), path
        assert wandb_key.encode() not in path.read_bytes(), path
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["backend"] == {"api_key": MASK, "base_url": f"https://x.dev/?key={MASK}"}
    assert saved["args"] == ["--tinker_api_key", MASK]
    assert read_jsonl(tmp_path / "samples.jsonl")[0]["prompt"] == f"say {MASK}"


def test_context_manager_records_failure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"), make_tracker(tmp_path) as tracker:
        tracker.log({"train/loss": 1.0}, step=0)
        raise ValueError("boom")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "ValueError: boom"
    wb = read_offline_run(tmp_path)
    assert wb.summary["status"] == "failed" and wb.summary["error"] == "ValueError: boom"
    assert wb.exit_codes == [1]

    with pytest.raises(KeyboardInterrupt), make_tracker(tmp_path / "b", mode="disabled"):
        raise KeyboardInterrupt
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "interrupted"


def test_run_name() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5)
    name = run_name("train_sft.py", "Qwen/Qwen3-4B-Instruct-2507", 5e-4, 32, 0, when)
    assert name == "train_sft-Qwen3-4B-Instruct-2507-lr5e-04-bs32-s0-20260102-030405"
    assert run_name("rl", "/models/my model/", 2.5e-4, 8, 1, when).startswith(
        "rl-my-model-lr2.5e-04-bs8-s1-"
    )
    assert run_name("rl", "tiny", 1.0, 8, 1, when) == "rl-tiny-lr1e+00-bs8-s1-20260102-030405"


def test_redact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "svc-0123456789")
    monkeypatch.setenv("TINKER_API_KEY", "short")  # too short to mask inside text
    assert {"hf_abcdefghijkl", "svc-0123456789"} <= set(secret_values())
    assert "short" not in secret_values()
    config = {
        "hf_token": "anything",
        "WANDB_API_KEY": None,
        "apiKey": 123,
        "max_tokens": 512,
        "pad_token_id": 0,
        "eos_token": "<|im_end|>",
        "rows": [("x hf_abcdefghijkl y", 1)],
        "url": "https://svc/?k=svc-0123456789",
        "note": "short",
    }
    redacted = redact(config)
    assert redacted == {
        "hf_token": MASK,
        "WANDB_API_KEY": None,
        "apiKey": MASK,
        "max_tokens": 512,
        "pad_token_id": 0,
        "eos_token": "<|im_end|>",
        "rows": [("x *** y", 1)],
        "url": "https://svc/?k=***",
        "note": "short",
    }
    assert config["hf_token"] == "anything"  # the input is left alone
    assert redact("a secret b", secrets=["secret"]) == "a *** b"
    assert is_secret_key("db_password") and not is_secret_key("tokens/trained")


def test_a_failing_online_run_continues_offline(tmp_path: Path, capsys) -> None:
    tracker = make_tracker(tmp_path)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.wait_for_wandb()  # W&B calls run on a worker thread: step 1 is logged fine
    tracker.wandb_mode = "online"  # as if this run were online, and its connection now broke

    def broken_log(*args, **kwargs):
        raise ConnectionError("network is gone")
    tracker._run.log = broken_log
    tracker.log({"train/loss": 0.5}, step=2)  # must not raise
    tracker.wait_for_wandb()
    assert "continuing this run offline" in capsys.readouterr().out
    assert tracker.wandb_mode == "offline" and tracker._run.log is not broken_log
    tracker.log({"train/loss": 0.25}, step=3)
    tracker.finish()
    run = read_offline_run(tmp_path)
    assert [r["_step"] for r in run.history if "train/loss" in r] == [1, 2, 3]
    assert set(run.run_ids) == {tracker.run_id}  # the same W&B run, continued


def wandb_records(run_dir: Path, kind: str) -> list[dict]:
    return [r[kind] for r in read_offline_run(run_dir).records if r["type"] == kind]


def test_each_sampler_checkpoint_is_a_model_reference_artifact(tmp_path: Path) -> None:
    config = {"model": "tiny-math", "backend": "local", "lora_rank": 32, "lr": 2.0e-4}
    with make_tracker(tmp_path, config=config) as tracker:
        for step, name in ((20, "000020"), (40, "000040"), (50, "final")):
            tracker.log({"train/loss": 1.0 / step}, step=step)
            # As save_checkpoint records them: the state first, then the sampler weights.
            tracker.log_checkpoint(step, name, f"local://r/weights/{name}", "state")
            tracker.log_checkpoint(step, name, f"local://r/sampler_weights/{name}", "sampler")
        tracker.log_final_checkpoint("local://r/sampler_weights/final")
    artifacts = [a for a in wandb_records(tmp_path, "artifact") if a["type"] == "model"]
    assert [a["name"] for a in artifacts] == [f"model-{tracker.run_id}"] * 3  # one collection
    assert [sorted(a["aliases"]) for a in artifacts] == [
        ["latest", "step-000020"], ["latest", "step-000040"], ["final", "latest", "step-000050"]]
    for artifact, name, step in zip(artifacts, ("000020", "000040", "final"), (20, 40, 50),
                                    strict=True):
        (entry,) = artifact["manifest"]["contents"]
        assert entry["ref"] == f"local://r/sampler_weights/{name}" and entry["path"] == "weights"
        assert json.loads(artifact["metadata"]) == {
            "step": step, "name": name, "base_model": "tiny-math", "lora_rank": 32,
            "backend": "local", "sampler_path": f"local://r/sampler_weights/{name}",
            "state_path": f"local://r/weights/{name}"}
    # checkpoints.jsonl keeps both records of every save (resume reads the state ones).
    assert [c["kind"] for c in read_checkpoints(tmp_path)] == ["state", "sampler"] * 3
    summary = read_offline_run(tmp_path).summary
    assert summary["checkpoint/artifact"] == f"model-{tracker.run_id}:final"


def test_summaries_rank_by_best_and_bookkeeping_stays_in_the_files(tmp_path: Path) -> None:
    config = {"model": "tiny-chat", "backend": "local"}
    with make_tracker(tmp_path, config=config) as tracker:
        for step, (loss, accuracy) in enumerate([(3.0, 0.2), (1.0, 0.6), (2.0, 0.4)], start=1):
            tracker.log({"train/loss": loss, "eval/loss": loss + 1, "eval/accuracy": accuracy,
                         "progress/step": step, "cost/step_usd": 0.0}, step=step)
        tracker.set_summary({"train/loss": 2.0, "eval/accuracy": 0.4, "tokens/total": 7,
                             "progress/step": 3, "cost/cumulative_usd": 0.0})
    metrics = {m.get("name") or m.get("glob_name"): m for m in wandb_records(tmp_path, "metric")}
    assert metrics["train/loss"]["summary"] == {"min": True, "last": True}
    assert metrics["eval/accuracy"]["summary"] == {"max": True, "last": True}
    assert metrics["rl/accuracy"]["summary"] == {"max": True, "last": True}
    wb = read_offline_run(tmp_path)
    # No step counter beside W&B's own _step, no $0 cost chart for the free local backend;
    # metrics.jsonl keeps both.
    assert not [k for row in wb.history for k in row if k.startswith(("progress/", "cost/"))]
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["cost/step_usd"] == 0.0
    summary = wb.summary
    # The end-of-run summary update leaves W&B's best-and-last alone.
    assert summary["train/loss"] == {"min": 1.0, "last": 2.0}
    assert summary["eval/loss"] == {"min": 2.0, "last": 3.0}
    assert summary["eval/accuracy"] == {"max": 0.6, "last": 0.4}
    assert summary["tokens/total"] == 7
    assert "progress/step" not in summary and "cost/cumulative_usd" not in summary
    assert json.loads((tmp_path / "summary.json").read_text())["train/loss"] == 2.0


def test_a_resumed_run_continues_the_samples_table_from_its_checkpoint(tmp_path: Path) -> None:
    """The killed attempt logged increments for steps 2, 4, 6 and saved at 4; the resumed one
    continues the table with the rows kept (steps 2 and 4), then redoes 6 and goes on to 8."""
    tracker = make_tracker(tmp_path)
    for step in (1, 2, 3, 4, 5, 6):
        tracker.log({"train/loss": 1.0 / step}, step)
        if step % 2 == 0:
            tracker.log_table("samples", SAMPLE_COLUMNS, [[step, "q", f"first {step}", 0.0]], step)
    tracker.wait_for_wandb()  # W&B had all of it (a kill may also lose what is still queued)
    tracker._run.finish(exit_code=137)  # as good as killed: no Tracker.finish
    with make_tracker(tmp_path, resume=True) as tracker:
        tracker.truncate_after(4)
        for step in (5, 6, 7, 8):
            tracker.log({"train/loss": 2.0 / step}, step)
            if step % 2 == 0:
                tracker.log_table("samples", SAMPLE_COLUMNS, [[step, "q", f"again {step}", 0.0]],
                                  step)
    wb = read_offline_run(tmp_path)
    increments = wb.tables["samples"]
    assert {t.info["_type"] for t in increments} == {"incremental-table-file"}
    assert [t.info["increment_num"] for t in increments] == [0, 1, 2]
    # What W&B's UI shows for the table at the end: this attempt's increments, starting with
    # the rows kept from the killed one; every sampled step once, none past the checkpoint.
    shown = wb.incremental_table("samples")
    assert [[r["completion"] for r in t.rows] for t in shown] == [
        ["first 2", "first 4"], ["again 6"], ["again 8"]]
    assert [s["completion"] for s in read_jsonl(tmp_path / "samples.jsonl")] == [
        "first 2", "first 4", "again 6", "again 8"]
    # The steps the killed attempt had logged before its checkpoint are logged again.
    assert [r["_step"] for r in wb.history if "train/loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_signal_stop_ends_the_wandb_run_preempting_with_its_exit_code(tmp_path: Path) -> None:
    with make_tracker(tmp_path) as tracker:
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.stopped(143)
    assert wandb_records(tmp_path, "exit")[0]["exit_code"] == 143
    assert len(wandb_records(tmp_path, "preempting")) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"


def test_wandb_options_tags_notes_group_and_config(tmp_path: Path, capsys) -> None:
    config = {"model": "Qwen/Qwen3-4B-Instruct-2507", "backend": "tinker", "lr": 1e-4,
              "wandb_mode": "offline", "run_name": None, "resume": False, "dry_run": False,
              "wandb_project": None, "wandb_group": None}
    make_tracker(tmp_path, config=config, tags=["try-1"], notes="first try").finish()
    (run,) = wandb_records(tmp_path, "run")
    assert run["tags"] == ["try-1", "backend:tinker", "model:Qwen3-4B-Instruct-2507"]
    assert run["notes"] == "first try" and run["run_group"] == "tests"
    # W&B's config is what defines the run; config.yaml keeps every flag.
    assert read_offline_run(tmp_path).config == {
        "model": "Qwen/Qwen3-4B-Instruct-2507", "backend": "tinker", "lr": 1e-4}
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["wandb_mode"] == "offline"
    assert (tmp_path / "wandb_group").read_text() == "tests"
    diff = (tmp_path / "git_diff.patch").read_text()
    assert diff.startswith("# commit ") and len(diff.split()[2]) == 40
    assert "git_diff.patch" in {p.name for p in tmp_path.glob("wandb/offline-run-*/files/*")}


def test_an_online_run_prints_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """W&B's own "View run at" line is silenced (Settings(silent=True)); ours replaces it."""
    import wandb

    real_init = wandb.init

    def init(**kwargs):  # an offline run that says it is online (no server here)
        run = real_init(**{**kwargs, "mode": "offline"})
        url = property(lambda self: f"https://wandb.ai/e/p/runs/{self.id}")
        monkeypatch.setattr(type(run), "url", url)
        return run

    monkeypatch.setattr(wandb, "init", init)
    make_tracker(tmp_path, mode="online").finish()
    out = capsys.readouterr().out
    run_id = (tmp_path / "wandb_run_id").read_text()
    assert f"tracking: W&B run: https://wandb.ai/e/p/runs/{run_id}" in out
    assert "wandb sync" not in out


def test_old_servers_get_the_whole_table_under_one_key_when_asked(tmp_path: Path) -> None:
    """--nowandb_incremental_tables (W&B Server < 0.70): still one key, every row so far."""
    with make_tracker(tmp_path, incremental_tables=False) as tracker:
        for step in (1, 2):
            tracker.log_table("samples", SAMPLE_COLUMNS, [[step, "q", f"a{step}", 0.5]], step)
    versions = read_offline_run(tmp_path).tables["samples"]
    assert [t.info["_type"] for t in versions] == ["table-file", "table-file"]
    assert [[r["completion"] for r in t.rows] for t in versions] == [["a1"], ["a1", "a2"]]


def test_the_loop_does_not_wait_for_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B calls run on a worker thread: a step is in metrics.jsonl and log() has returned while
    W&B is still busy; finish() gives W&B every step, in order."""
    import threading

    tracker = make_tracker(tmp_path)
    tracker.wait_for_wandb()  # W&B starts on the worker thread
    release, given = threading.Event(), []
    real_log = tracker._run.log

    def busy_log(values, step, **kwargs):
        release.wait(120)
        if values:  # not the end's commit of the last step ({})
            given.append(step)
        real_log(values, step=step, **kwargs)
    monkeypatch.setattr(tracker._run, "log", busy_log)
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0 / step}, step)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert given == []  # W&B is still on step 1
    release.set()
    tracker.finish()
    assert given == [1, 2, 3]
    history = read_offline_run(tmp_path).history
    assert [(r["_step"], r["train/loss"]) for r in history if "train/loss" in r] == [
        (1, 1.0), (2, 0.5), (3, 1 / 3)]


# --- round two: names, redaction, the step axis, settings W&B refuses -------------------------

def run_record(run_dir: Path) -> list[dict]:
    return wandb_records(run_dir, "run")


def test_secrets_in_names_group_tags_and_notes_are_masked_in_the_wandb_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-value-0123456789"
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    tracker = Tracker(tmp_path, project="tracking-test", mode="offline", run_name=f"run-{secret}",
                      group=f"group-{secret}", job_type="sft", config={},
                      tags=[f"tag-{secret}"[:20], secret], notes=f"tried with {secret} today")
    tracker.log_table("samples", ["prompt"], [[f"say {secret}"]], 1)
    tracker.finish()
    (run,) = run_record(tmp_path)
    assert run["notes"] == f"tried with {MASK} today"
    assert MASK in run["tags"] and not [t for t in run["tags"] if secret in t]
    assert run["display_name"] == f"run-{MASK}" and run["run_group"] == f"group-{MASK}"
    assert read_offline_run(tmp_path).table("samples").rows == [{"prompt": f"say {MASK}"}]
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


def test_a_resumed_run_keeps_its_display_name(tmp_path: Path) -> None:
    with make_tracker(tmp_path) as tracker:
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.stopped(143)
    resumed = Tracker(tmp_path, project="tracking-test", mode="offline", resume=True,
                      run_name="test-run-resumed-later", group="tests", job_type="sft",
                      config={})
    assert resumed.run_name == "test-run"
    resumed.truncate_after(1)
    resumed.log({"train/loss": 0.5}, step=2)
    resumed.finish()
    assert [r["display_name"] for r in run_record(tmp_path)] == ["test-run", "test-run"]
    assert (tmp_path / "wandb_run_name").read_text() == "test-run"


def test_evaluations_log_at_their_checkpoints_training_step(tmp_path: Path) -> None:
    """A training run (eval/accuracy at steps 3 and 6) and an evaluation of its checkpoints:
    both on train/global_step, the evaluation's points at 0 (base), 3 and 6 under evaluate/*,
    per-part rows in a table, no key naming a model, one summary shape per key."""
    with make_tracker(tmp_path / "train") as train:
        for step in range(1, 7):
            train.log({"train/loss": 1.0 / step, **({"eval/accuracy": step / 10} if step % 3 == 0
                                                    else {})}, step)
    label = "train_rl-tiny-lr2e-04-bs8-s0-20261205-172001"
    evaluation = Tracker(tmp_path / "eval", project="tracking-test", mode="offline",
                         run_name="evaluate-tiny", group="tests", job_type="eval", config={})
    for step, accuracy in ((None, 0.1), (3, 0.4), (6, 0.3)):
        evaluation.log_evaluation(
            "base:tiny-instruct" if step is None else f"{label}#{step}", step,
            {"accuracy": accuracy, "accuracy_low": accuracy - 0.1, "n": 99},
            parts=[{"part": "pairs=3", "accuracy": accuracy / 2, "n": 33}],
            samples=[{"completion": "<answer>7</answer>", "correct": True}])
    evaluation.finish()

    wb = read_offline_run(tmp_path / "eval")
    assert [(r["_step"], r["train/global_step"], r["evaluate/accuracy"]) for r in wb.history] == [
        (0, 0, 0.1), (1, 3, 0.4), (2, 6, 0.3)]
    keys = {k for row in wb.history for k in row}
    assert {"evaluate/accuracy", "evaluate/accuracy_low", "evaluate/n"} <= keys
    assert not [k for k in keys if "tiny" in k or "172001" in k or k.startswith("eval/")]
    rows = [r for t in wb.incremental_table("evaluate/results") for r in t.rows]
    assert [(r["model"], r["global_step"], r["part"], r["accuracy"]) for r in rows] == [
        ("base:tiny-instruct", None, "all", 0.1), ("base:tiny-instruct", None, "pairs=3", 0.05),
        (f"{label}#3", 3, "all", 0.4), (f"{label}#3", 3, "pairs=3", 0.2),
        (f"{label}#6", 6, "all", 0.3), (f"{label}#6", 6, "pairs=3", 0.15)]
    assert len([r for t in wb.incremental_table("evaluate/samples") for r in t.rows]) == 3
    # Every key of both runs is charted against train/global_step.
    for run_dir in (tmp_path / "train", tmp_path / "eval"):
        metrics = wandb_records(run_dir, "metric")
        assert {"name": STEP_METRIC, "options": {"defined": True}} in metrics
        assert [m for m in metrics if m.get("glob_name") == "*"][0]["step_metric"] == STEP_METRIC
        assert all(m["step_metric"] == STEP_METRIC for m in metrics if "summary" in m)
    # The same summary shape for an accuracy in either kind of run.
    assert read_offline_run(tmp_path / "train").summary["eval/accuracy"] == {
        "max": 0.6, "last": 0.6}
    assert wb.summary["evaluate/accuracy"] == {"max": 0.4, "last": 0.3}


def test_the_run_id_of_wandb_agent_names_the_run_and_finds_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("WANDB_RUN_ID", "agent123")
    assert requeued_run_dir(runs) is None  # a new run: no directory holds the id yet
    sweep_run = runs / "sweeps" / "rl-lr" / "rl-lr-03"
    make_tracker(sweep_run, mode="disabled").finish()
    assert (sweep_run / "wandb_run_id").read_text() == "agent123"
    make_tracker(runs / "other", mode="disabled").finish()
    (runs / "other" / "wandb_run_id").write_text("other123")
    assert requeued_run_dir(runs) == sweep_run
    monkeypatch.delenv("WANDB_RUN_ID")
    assert requeued_run_dir(runs) is None
    assert find_run_dir("other123", runs) == runs / "other"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("wandb_project", "team/project", "W&B names cannot contain"),
    ("wandb_project", "p" * 129, "129 characters; W&B takes at most 128"),
    ("wandb_project", "  ", "empty"),
    ("wandb_entity", "a:b", "W&B names cannot contain"),
    ("wandb_group", "g" * 200, "200 characters"),
    ("run_name", "n" * 129, "129 characters"),
    ("wandb_tags", ["ok", "t" * 65], "65 characters; a W&B tag has 1 to 64"),
    ("wandb_tags", [""], "0 characters"),
])
def test_settings_wandb_would_refuse_are_refused_naming_the_flag(flag, value, message) -> None:
    import types

    import wandb

    cfg = types.SimpleNamespace(wandb_mode="offline", wandb_project=None, wandb_entity=None,
                                wandb_group=None, run_name=None, wandb_tags=[])
    setattr(cfg, flag, value)
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        check_wandb_settings(cfg)
    assert str(refused.value).startswith(f"--{flag} ") and "\n" not in str(refused.value)
    if flag in ("wandb_project", "wandb_tags") and str(value).strip():
        # W&B's own settings refuse the same values (at wandb.init, where the run would lose W&B).
        name = {"wandb_project": "project", "wandb_tags": "run_tags"}[flag]
        with pytest.raises(Exception):  # noqa: B017, PT011 - W&B raises UsageError / ValueError
            wandb.Settings(**{name: value})
    check_wandb_settings(types.SimpleNamespace(**{**vars(cfg), "wandb_mode": "disabled"}))


def test_a_bad_wandb_project_stops_a_script_before_it_starts(tmp_path: Path) -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "train_sft.py"), "--backend", "local", "--wandb_mode",
         "offline", "--wandb_project", "team/project", "--log_dir", str(tmp_path / "run")],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --wandb_project 'team/project': W&B names cannot contain / \\ # ? % : (found /)"]
    assert not (tmp_path / "run").exists()


def test_wandb_config_paths_are_relative_and_summary_json_is_valid_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = {"log_dir": str(tmp_path / "runs" / "a"), "heldout": str(ROOT / "data" / "h.jsonl"),
              "checkpoint": [str(tmp_path / "runs" / "b"), "tinker://x/sampler_weights/final"],
              "elsewhere": "/opt/data", "model": "tiny"}
    with make_tracker(tmp_path / "runs" / "a", config=config) as tracker:
        tracker.set_summary({"eval/loss": float("nan"), "best": float("inf")})
    assert read_offline_run(tmp_path / "runs" / "a").config == {
        "log_dir": "runs/a", "heldout": "data/h.jsonl",
        "checkpoint": ["runs/b", "tinker://x/sampler_weights/final"], "elsewhere": "/opt/data",
        "model": "tiny"}
    text = (tmp_path / "runs" / "a" / "summary.json").read_text()

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    summary = json.loads(text, parse_constant=refuse)
    assert summary["eval/loss"] is None and summary["best"] is None


def test_wandbs_start_overlaps_what_the_script_does_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B's start (import, service, init: ~1 s) runs on the worker: the tracker is ready, and
    the run's files take steps, while W&B is still starting; W&B then gets every step."""
    import threading

    import wandb

    real_init, release = wandb.init, threading.Event()

    def slow_init(**kwargs):
        assert release.wait(120), "the test never released W&B's start"
        return real_init(**kwargs)
    monkeypatch.setattr(wandb, "init", slow_init)
    tracker = make_tracker(tmp_path)
    tracker.log({"train/loss": 1.0}, 1)  # W&B has not started: the files have the step
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "wandb").exists()
    release.set()
    tracker.log({"train/loss": 0.5}, 2)
    tracker.finish()
    assert [r["_step"] for r in read_offline_run(tmp_path).history] == [1, 2]


def test_a_checkpoint_of_unknown_step_goes_to_the_tables_only(tmp_path: Path) -> None:
    with make_tracker(tmp_path, config={}) as tracker:
        tracker.log_evaluation("base:tiny", None, {"accuracy": 0.2})
        tracker.log_evaluation("abc/final", None, {"accuracy": 0.5}, plot=False)
    wb = read_offline_run(tmp_path)
    assert [(r["train/global_step"], r["evaluate/accuracy"]) for r in wb.history
            if "evaluate/accuracy" in r] == [(0, 0.2)]
    rows = [r for t in wb.incremental_table("evaluate/results") for r in t.rows]
    assert [(r["model"], r["accuracy"]) for r in rows] == [("base:tiny", 0.2), ("abc/final", 0.5)]


def test_a_resumed_runs_summary_keeps_the_best_value_of_earlier_attempts(tmp_path: Path) -> None:
    """W&B computes define_metric summaries per process: the attempt after a stop would report
    max = its own best. The tracker sends the whole run's best and last (metrics.jsonl)."""
    with make_tracker(tmp_path) as tracker:
        for step, accuracy in ((3, 0.6), (5, 0.3)):
            tracker.log({"eval/accuracy": accuracy, "train/loss": 1.0 / step}, step)
        tracker.stopped(143)
    with make_tracker(tmp_path, resume=True) as tracker:
        tracker.truncate_after(5)
        for step, accuracy in ((6, 0.4), (10, 0.5)):
            tracker.log({"eval/accuracy": accuracy, "train/loss": 1.0 / step}, step)
        tracker.set_summary({"eval/accuracy": 0.5})  # as end_of_run does
    wb = read_offline_run(tmp_path)  # the summary updates of both attempts, merged in order
    assert len(wb.run_ids) == 2  # the stopped attempt finished cleanly: it is kept
    assert [r["_step"] for r in wb.history] == [3, 5, 6, 10]
    assert wb.summary["eval/accuracy"] == {"max": 0.6, "last": 0.5}
    assert wb.summary["train/loss"] == {"min": 0.1, "last": 0.1}
