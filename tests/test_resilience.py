"""Crashes, interrupts, faults, unreachable services, divergence: real runs, real processes."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_rl
import train_sft
from common.backend import SESSION_CLOSE_TIMEOUT_S, BackendError
from common.runs import TrainingDiverged
from tests.wandb_records import read_offline_run

ROOT = Path(__file__).resolve().parent.parent
# Only stops a hung test: a loaded machine may take many times the idle time, and that is fine.
HANG_CAP_S = 1800
SFT_FLAGS = ["--backend", "local", "--wandb_mode", "offline", "--max_steps", "24",
             "--save_every", "4", "--sample_every", "0", "--eval_every", "6"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_sft(log_dir: Path, *extra: str) -> subprocess.Popen:
    # A process of its own, as from a shell: not attached to the W&B service of this pytest
    # process (W&B hands it to children via WANDB_SERVICE), which would still hold a killed
    # run's id when its resumed attempt starts ("run ID is in use").
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen([sys.executable, str(ROOT / "train_sft.py"), "--log_dir", str(log_dir),
                             *SFT_FLAGS, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_steps(log_dir: Path, steps: int, process: subprocess.Popen) -> None:
    metrics = log_dir / "metrics.jsonl"
    deadline = time.monotonic() + HANG_CAP_S
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(read_jsonl(metrics)) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach step {steps}: {process.poll()}")


@pytest.mark.e2e
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    straight = start_sft(tmp_path / "straight")
    assert straight.wait(timeout=HANG_CAP_S) == 0
    kill_at = random.Random().randint(3, 20)  # any step, between or on checkpoints
    victim = start_sft(tmp_path / "killed")
    wait_for_steps(tmp_path / "killed", kill_at, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=HANG_CAP_S)
    resumed = start_sft(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=HANG_CAP_S) == 0, resumed.stdout.read()

    expected = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    got = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, 25)), f"killed at step {kill_at}"
    for a, b in zip(expected, got, strict=True):
        assert a["train/loss"] == b["train/loss"] and a.get("eval/loss") == b.get("eval/loss")
    run = read_offline_run(tmp_path / "killed")
    run_id = (tmp_path / "killed" / "wandb_run_id").read_text()
    assert set(run.run_ids) == {run_id}  # the resumed attempt continued the same W&B run
    steps = [row["_step"] for row in run.history if "train/loss" in row]
    assert sorted(steps) == list(range(1, 25))  # nothing missing, nothing twice
    assert read_jsonl(tmp_path / "killed" / "checkpoints.jsonl")[-1]["name"] == "final"


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    log_dir = tmp_path / "run"
    process = start_sft(log_dir)
    wait_for_steps(log_dir, 5, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=HANG_CAP_S)
    assert process.returncode == 130, output
    assert "saving a checkpoint" in output
    summary = json.loads((log_dir / "summary.json").read_text())
    stopped = summary["interrupted_at_step"]
    assert summary["status"] == "interrupted"
    states = [c for c in read_jsonl(log_dir / "checkpoints.jsonl") if c["kind"] == "state"]
    assert states[-1]["step"] == stopped == len(read_jsonl(log_dir / "metrics.jsonl"))
    run = read_offline_run(log_dir)
    assert run.exit_codes == [130]  # W&B shows it stopped, not finished
    assert [r for r in run.records if r["type"] == "preempting"]  # ... and expects the resume

    resumed = start_sft(log_dir, "--resume")
    assert resumed.wait(timeout=HANG_CAP_S) == 0
    assert [m["step"] for m in read_jsonl(log_dir / "metrics.jsonl")] == list(range(1, 25))
    assert json.loads((log_dir / "summary.json").read_text())["status"] == "finished"


def test_sigterm_saves_the_step_and_ends_the_run_with_exit_code_143(tmp_path):
    """What `wandb agent`, Slurm and `docker stop` send: handled like Ctrl-C."""
    log_dir = tmp_path / "run"
    process = start_sft(log_dir)
    wait_for_steps(log_dir, 3, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=HANG_CAP_S)
    assert process.returncode == 143, output
    assert "SIGTERM: finishing the steps under way, then saving a checkpoint" in output
    stopped = json.loads((log_dir / "summary.json").read_text())["interrupted_at_step"]
    assert stopped == read_jsonl(log_dir / "metrics.jsonl")[-1]["step"]
    saved = [(c["step"], c["kind"]) for c in read_jsonl(log_dir / "checkpoints.jsonl")]
    assert (stopped, "state") in saved and (stopped, "sampler") in saved
    run = read_offline_run(log_dir)
    assert run.exit_codes == [143]
    assert [r for r in run.records if r["type"] == "preempting"]
    artifacts = [r["artifact"] for r in run.records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert f"step-{stopped:06d}" in artifacts[-1]["aliases"]


def test_samples_table_covers_every_sampled_step_across_sigkill_and_resume(tmp_path):
    log_dir = tmp_path / "run"
    flags = ("--max_steps", "12", "--sample_every", "2", "--sample_prompts", "1")
    victim = start_sft(log_dir, *flags)
    wait_for_steps(log_dir, 7, victim)  # saved at 4; sampled at 2, 4, 6
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=HANG_CAP_S)
    resumed = start_sft(log_dir, *flags, "--resume")
    output, _ = resumed.communicate(timeout=HANG_CAP_S)
    assert resumed.returncode == 0, output
    # (Tracking never stops training: had W&B failed, the run would go on with files alone.)
    assert not [line for line in output.splitlines()
                if line.startswith("tracking: W&B") and "failed" in line], output

    run = read_offline_run(log_dir)
    assert list(run.tables) == ["samples"]
    # One W&B run. (W&B may have lost the killed attempt's records entirely: its service can
    # die with the process before writing them.)
    assert set(run.run_ids) == {(log_dir / "wandb_run_id").read_text()}
    # The table W&B shows at the end: each sampled step once, whatever the kill lost: the
    # resumed attempt's first increment holds the rows kept from before (samples.jsonl).
    shown = run.incremental_table("samples")
    assert [[r["step"] for r in t.rows] for t in shown] == [[2, 4], [6], [8], [10], [12]], output
    samples = read_jsonl(log_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == list(range(2, 13, 2))
    assert [r["completion"] for t in shown for r in t.rows] == [s["completion"] for s in samples]


def test_injected_faults_do_not_change_the_result(tmp_path, monkeypatch):
    def run(name: str) -> dict:
        return train_sft.main(train_sft.Config(backend="local", log_dir=tmp_path / name,
                                               wandb_mode="disabled", max_steps=8, save_every=4,
                                               sample_every=4, eval_every=4))
    clean = run("clean")
    monkeypatch.setenv("LOCAL_TINKER_FAULT_RATE", "0.2")  # a fifth of all calls fail first
    faulty = run("faulty")
    for key in ("train/loss", "eval/loss"):
        assert faulty[key] == clean[key]


def test_unreachable_tinker_endpoint_fails_fast(monkeypatch, tmp_path, silent_url):
    monkeypatch.setenv("TINKER_API_KEY", "tml-not-a-real-key-000")
    # A server that never answers: the SDK would wait for a long time.
    for url in (silent_url, "http://127.0.0.1:9"):  # silent; refused
        started = time.monotonic()
        unreachable = "cannot reach the Tinker service at .* Check --base_url"
        with pytest.raises(BackendError, match=unreachable):
            train_sft.main(train_sft.Config(base_url=url, log_dir=tmp_path / "x",
                                            wandb_mode="disabled"))
        assert time.monotonic() - started < 30
    with pytest.raises(BackendError, match="not an http"):
        train_sft.main(train_sft.Config(base_url="tinker.example", wandb_mode="disabled"))
    monkeypatch.delenv("TINKER_API_KEY")
    with pytest.raises(BackendError, match="needs TINKER_API_KEY"):
        train_sft.main(train_sft.Config(backend="tinker", wandb_mode="disabled"))


def test_a_session_the_service_cannot_finish_does_not_hold_up_the_end(tmp_path):
    """The service went away mid-run: finishing its session gives up after its bound with a
    note, and the process exits, instead of the SDK retrying for minutes (a process of its own,
    as a script is: the SDK's retries die with it)."""
    script = f"""
import contextlib, sys, time
sys.path.insert(0, {str(ROOT)!r})
import local_tinker
from common.backend import connect
server = contextlib.ExitStack()
url, _ = server.enter_context(local_tinker.embedded({str(tmp_path)!r}))
with connect("local", url) as service:
    service.create_lora_training_client("tiny-chat", rank=2).result()  # opens the session
    server.close()
    print("server stopped", time.monotonic(), flush=True)
print("block left", time.monotonic(), flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=HANG_CAP_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: could not finish the local session" in proc.stdout
    times = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in proc.stdout.splitlines() if line.startswith(("server", "block"))}
    # The bound itself, with room for a loaded machine (an unbounded close waits 5 minutes).
    assert times["block left"] - times["server stopped"] < SESSION_CLOSE_TIMEOUT_S + 60


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    log_dir = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="train/(loss|grad_norm) is (nan|inf)"):
        train_sft.main(train_sft.Config(backend="local", log_dir=log_dir, wandb_mode="offline",
                                        lr=1e12, max_steps=30, save_every=1, sample_every=0))
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "TrainingDiverged" in summary["error"]
    metrics = read_jsonl(log_dir / "metrics.jsonl")
    checkpoints = read_jsonl(log_dir / "checkpoints.jsonl")
    assert checkpoints[-1]["step"] == metrics[-1]["step"]  # last logged step = last good one
    run = read_offline_run(log_dir)
    assert run.summary["status"] == "failed" and run.exit_codes == [1]  # failed, not stopped
    assert not [r for r in run.records if r["type"] == "preempting"]
    # The loss is computed before the update: a finite loss with a NaN grad norm wrote NaN into
    # the weights. No such update may be saved: every saved checkpoint is finite.
    assert all(math.isfinite(m.get("train/grad_norm", 0.0)) for m in metrics)
    for record in checkpoints:
        weights = local_checkpoint_dir(record["path"]) / "adapter.pt"
        for name, tensor in torch.load(weights, map_location="cpu").items():
            assert torch.isfinite(tensor).all(), (record["path"], name)


def local_checkpoint_dir(path: str) -> Path:
    """tinker://<run>/weights/<name> -> its directory under the local server's root."""
    return Path(os.environ["LOCAL_TINKER_ROOT"]) / path.split("://", 1)[1]


def test_secrets_never_reach_rl_run_files(tmp_path, monkeypatch):
    secret = "tml-PLANTED-secret-for-rl-run"
    monkeypatch.setenv("TINKER_API_KEY", secret)
    monkeypatch.setenv("WANDB_API_KEY", "planted-wandb-key-123456")
    train_rl.main(train_rl.Config(backend="local", log_dir=tmp_path / "rl", wandb_mode="offline",
                                  batch_size=2, group_size=2, max_tokens=8, max_steps=2,
                                  concise_bonus_after=0, concise_needs_answer=False,
                                  eval_problems=2, sample_every=1))
    for path in [*(tmp_path / "rl").rglob("*"), *Path(os.environ["LOCAL_TINKER_ROOT"]).rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and b"planted-wandb-key" not in data, path


def kill_points(seed: int) -> list[tuple[str, str, int]]:
    """(file, kind, step) triggers, in the order a run passes them: right after each
    checkpoint's sampler record and its state record (the last one too), right after the step's
    metrics row before each checkpoint, and a few random steps between checkpoints."""
    points = []
    for step in (4, 8, 12, 16, 20, 24):
        points += [("metrics", "", step), ("checkpoints", "sampler", step),
                   ("checkpoints", "state", step)]
    between = [s for s in range(1, 24) if s % 4]
    points += [("metrics", "", s) for s in random.Random(seed).sample(between, 2)]
    order = {"": 0, "sampler": 1, "state": 2}
    return sorted(points, key=lambda p: (p[2], order[p[1]]))


def fired(log_dir: Path, point: tuple[str, str, int], since: float) -> bool:
    """Whether the process started at `since` has written the record `point` names."""
    name, kind, step = point
    path = log_dir / f"{name}.jsonl"
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if row.get("step") == step and row.get("kind", "") == kind and row["_time"] > since:
            return True
    return False


@pytest.mark.e2e
def test_kills_at_20_points_lose_and_duplicate_no_step(tmp_path):
    """SIGKILL at 20 points, right after every checkpoint write among them, resuming each time:
    metrics.jsonl and the W&B history end with every step exactly once, values as a run that
    was never killed."""
    straight = start_sft(tmp_path / "straight")
    assert straight.wait(timeout=HANG_CAP_S) == 0
    seed = random.randrange(10**6)
    points = kill_points(seed)
    assert len(points) == 20
    log_dir = tmp_path / "killed"
    killed_at, overshot, escaped = [], [], []
    last_start = None
    for point in points:
        if last_start is not None and fired(log_dir, point, last_start):
            # The previous kill landed after this record too (a checkpoint's state record
            # follows its sampler record within microseconds): that kill covered it.
            overshot.append(point)
            continue
        last_start = time.time()
        process = start_sft(log_dir)
        while process.poll() is None and not fired(log_dir, point, last_start):
            time.sleep(0.002)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_at.append(point)
        else:  # the run got past this point before it could be watched (a fast step)
            assert process.returncode == 0, process.stdout.read()
            escaped.append(point)
        process.wait(timeout=HANG_CAP_S)
        process.stdout.close()
    final = start_sft(log_dir)
    output = final.communicate(timeout=HANG_CAP_S)[0]
    assert final.returncode == 0, output
    assert len(killed_at) + len(overshot) >= 18, (seed, killed_at, overshot, escaped)
    # Whichever process ends the run, its last line names the final checkpoint.
    assert "final checkpoint tinker://" in output.splitlines()[-1], output

    expected = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    got = read_jsonl(log_dir / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, 25)), (seed, killed_at)
    for a, b in zip(expected, got, strict=True):
        assert a["train/loss"] == b["train/loss"] and a.get("eval/loss") == b.get("eval/loss")
    assert got[-1]["tokens/cumulative/trained"] == expected[-1]["tokens/cumulative/trained"]
    # A kill before the first checkpoint leaves nothing to continue: the rerun starts over as a
    # new W&B run. The run that finished is the one with the directory's id.
    run_id = (log_dir / "wandb_run_id").read_text()
    for offline in (log_dir / "wandb").glob(f"offline-run-*-{run_id}*"):
        shutil.copytree(offline, tmp_path / "final_run" / "wandb" / offline.name)
    run = read_offline_run(tmp_path / "final_run")
    assert set(run.run_ids) == {run_id}
    history = [row for row in run.history if "train/loss" in row]
    assert [row["_step"] for row in history] == list(range(1, 25))
    for row, metrics in zip(history, got, strict=True):
        assert row["train/loss"] == pytest.approx(metrics["train/loss"])
    states = [c for c in read_jsonl(log_dir / "checkpoints.jsonl") if c["kind"] == "state"]
    assert [c["step"] for c in states] == [4, 8, 12, 16, 20, 24]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_evaluate_stops_on_a_signal_with_its_exit_code_and_wandb_record(tmp_path, signum, code):
    """evaluate.py has no step to finish: it stops at once, one line, its W&B run ended with the
    signal's exit code and its service session finished (no traceback, no hang)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    log_dir = tmp_path / "eval"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "evaluate.py"), "--backend", "local", "--wandb_mode",
         "offline", "--log_dir", str(log_dir), "--max_tokens", "256"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in process.stdout:  # scoring has begun once it says so
        seen.append(line)
        if line.startswith("scoring "):
            break
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=HANG_CAP_S)
    output = "".join(seen) + rest
    assert process.returncode == code, output
    assert "Traceback" not in output and f"stopped by {signal.Signals(signum).name}" in output
    assert read_offline_run(log_dir).exit_codes == [code]


def test_a_nan_held_out_loss_is_never_checkpointed_as_good(tmp_path, monkeypatch):
    """Every number of a step is checked before its checkpoint: a NaN eval/loss (with a finite
    train loss) ends the run failed, and the step's checkpoint is not saved."""
    real = train_sft.weighted_nll

    def nan_on_held_out(output, data):
        nll, weights = real(output, data)
        return (math.nan, weights) if len(data) == 2 else (nll, weights)  # foo's 2 held-out rows

    monkeypatch.setattr(train_sft, "weighted_nll", nan_on_held_out)
    log_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="eval/loss is nan at step 4"):
        train_sft.main(train_sft.Config(backend="local", log_dir=log_dir, wandb_mode="disabled",
                                        max_steps=6, eval_every=4, save_every=2,
                                        sample_every=0))
    assert [m["step"] for m in read_jsonl(log_dir / "metrics.jsonl")] == [1, 2, 3]
    assert {c["step"] for c in read_jsonl(log_dir / "checkpoints.jsonl")} == {2}
    assert json.loads((log_dir / "summary.json").read_text())["status"] == "failed"
