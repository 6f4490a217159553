"""The run directory: one process at a time, a rerun that is the same run, damaged files and
checkpoints, and secrets kept out of names, paths, the console and W&B."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import train_sft
from common import runs
from common.cli import run_main
from common.runfiles import read_metrics
from common.secrets import MASK, redact, secret_values

ROOT = Path(__file__).resolve().parent.parent
SFT = ["--backend", "local", "--wandb_mode", "disabled", "--sample_every", "0",
       "--eval_every", "0"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sft(log_dir: Path, *flags: str) -> int:
    return run_main(train_sft.main, train_sft.Config, [*SFT, "--log_dir", str(log_dir), *flags])


def local_dir(path: str) -> Path:
    return Path(os.environ["LOCAL_TINKER_ROOT"]) / path.split("://", 1)[1]


def states(run_dir: Path) -> list[dict]:
    return [c for c in read_jsonl(run_dir / "checkpoints.jsonl") if c["kind"] == "state"]


# --- the lock -------------------------------------------------------------------------------

HOLD = ("import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.seek(0); f.truncate(); f.write(f'{os.getpid()}\\n'); f.flush()\n"
        "print('held', flush=True); time.sleep(3600)\n")


def test_a_run_dir_held_by_a_live_process_is_refused_naming_its_pid(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sft(run_dir, "--max_steps", "2") == 2
        err = capsys.readouterr().err
        assert f"error: --log_dir {run_dir}: in use by another run (PID {holder.pid})" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing else touched
    finally:
        holder.kill()
        holder.wait()
    # The OS released the lock with the (killed) holder: the directory is free again.
    assert sft(run_dir, "--max_steps", "2") == 0
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


def test_a_run_that_finds_the_lock_taken_but_no_pid_yet_waits_for_the_pid(tmp_path, monkeypatch):
    # The holder writes its PID just after taking the lock; a run checking in between must
    # name that PID, not "unknown". The holder here writes only once the loser has polled.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True); sys.stdin.readline()\n"
         "f.write(f'{os.getpid()}\\n'); f.flush(); print('written', flush=True)\n"
         "sys.stdin.readline()\n", str(run_dir / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    polled, refusal = threading.Event(), []
    real_sleep = time.sleep
    monkeypatch.setattr(runs.time, "sleep", lambda s: (polled.set(), real_sleep(s)))

    def take_lock():
        try:
            runs.lock(run_dir)
        except runs.RunDirBusy as error:
            refusal.append(str(error))

    try:
        assert holder.stdout.readline().strip() == "held"
        loser = threading.Thread(target=take_lock)
        loser.start()
        while not polled.wait(0.05) and loser.is_alive():
            pass
        holder.stdin.write("write\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "written"
        loser.join()
    finally:
        holder.kill()
        holder.wait()
    assert polled.is_set()  # it found the file empty and waited
    assert refusal and f"in use by another run (PID {holder.pid})" in refusal[0]


def test_two_runs_started_together_on_one_dir_one_runs_one_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train_sft.py"), *SFT, "--log_dir", str(run_dir),
               "--max_steps", "6", "--save_every", "2"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=1800), p.stdout.read() + p.stderr.read(), p.pid)
               for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(pid for code, _, pid in results if code == 0)
    refused = next(out for code, out, _ in results if code == 2)
    assert f"in use by another run (PID {winner})" in refused
    assert "Traceback" not in refused
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 7))


# --- a rerun is the same run ----------------------------------------------------------------

def test_rerun_refuses_changed_settings_and_accepts_a_longer_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert sft(run_dir, "--max_steps", "2", "--save_every", "1") == 0
    config = (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert sft(run_dir, "--max_steps", "2", "--lora_rank", "4", "--batch_size", "4",
               "--model", "tiny-math", "--dataset", "arithmetic-solutions") == 2
    err = capsys.readouterr().err
    for difference in ("--lora_rank 4 (the run has 8)", "--batch_size 4 (the run has 8)",
                       "--model tiny-math (the run has tiny-instruct)",
                       "--dataset arithmetic-solutions (the run has foo)"):
        assert difference in err
    assert (run_dir / "config.yaml").read_text() == config  # not rewritten
    # Length, checkpoint cadence and tracking may change; the change is said and recorded.
    assert sft(run_dir, "--max_steps", "4", "--save_every", "2") == 0
    out = capsys.readouterr().out
    changes = out.split("continuing with changed settings: ")[1].splitlines()[0].split("; ")
    assert sorted(changes) == ["max_steps 2 -> 4", "save_every 1 -> 2"]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert "max_steps: 4" in (run_dir / "config.yaml").read_text()


# --- damaged files and checkpoints ------------------------------------------------------------

def as_if_killed(run_dir: Path) -> None:
    """The run's files as a kill after its last checkpoint leaves them: no final status (a
    finished run's rerun only says it is finished)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("status")
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_missing_or_cut_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    straight = tmp_path / "straight"
    assert sft(straight, "--max_steps", "4", "--save_every", "1") == 0
    expected = {m["step"]: m["train/loss"] for m in read_jsonl(straight / "metrics.jsonl")}

    run_dir = tmp_path / "run"
    assert sft(run_dir, "--max_steps", "4", "--save_every", "1") == 0
    as_if_killed(run_dir)
    saved = states(run_dir)
    shutil.rmtree(local_dir(saved[-1]["path"]))  # final (step 4): deleted
    adapter = local_dir(saved[-2]["path"]) / "adapter.pt"  # step 3: cut short
    adapter.write_bytes(adapter.read_bytes()[:100])
    capsys.readouterr()
    assert sft(run_dir, "--max_steps", "4", "--save_every", "1") == 0
    out = capsys.readouterr().out
    assert "cannot load the checkpoint of step 4" in out
    assert "cannot load the checkpoint of step 3" in out
    assert "continuing from step 2; the steps after it are redone" in out
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # each step once
    assert {m["step"]: m["train/loss"] for m in metrics} == expected  # redone, same result
    assert [c["step"] for c in states(run_dir)] == [1, 2, 3, 4]
    assert read_jsonl(run_dir / "checkpoints.jsonl")[-1]["name"] == "final"


def test_no_loadable_checkpoint_is_an_error_not_a_silent_restart(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert sft(run_dir, "--max_steps", "2", "--save_every", "1") == 0
    as_if_killed(run_dir)
    for record in states(run_dir):
        shutil.rmtree(local_dir(record["path"]))
    capsys.readouterr()
    assert sft(run_dir, "--max_steps", "2", "--save_every", "1") == 2
    err = capsys.readouterr().err
    assert "error: --log_dir" in err and "no saved state of this run can be loaded" in err
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]  # kept


def test_torn_last_lines_and_a_cut_summary_are_tolerated_and_said(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert sft(run_dir, "--max_steps", "2", "--save_every", "1") == 0
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "train/lo')  # a crash mid-write
    with (run_dir / "checkpoints.jsonl").open("a") as f:
        f.write('{"step": 3, "na')
    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(summary[: len(summary) // 2])
    capsys.readouterr()
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2]
    assert "metrics.jsonl: the last line was cut short" in capsys.readouterr().out
    assert sft(run_dir, "--max_steps", "3", "--save_every", "1") == 0
    out = capsys.readouterr().out
    assert "summary.json is damaged; starting the run summary over" in out
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert [c["step"] for c in states(run_dir)] == [1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# --- secrets ----------------------------------------------------------------------------------

def test_secret_env_names_are_matched_broadly(monkeypatch):
    planted = {"MY_SERVICE_KEY": "svc-0123456789ab", "OPENAI_KEY": "sk-proj-abcdefghij",
               "PRIVATE_KEY": "-----BEGIN PRIVATE abcdef", "SOME_PASSWORD": "hunter2hunter2",
               "GH_SECRET_VALUE": "ghs_abcdefghijkl", "DEPLOY_TOKEN_X": "dtok-123456789"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", "postgres://app:db-pass-123456@db.internal:5432/prod")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # short: never masked
    assert set(planted.values()) | {"db-pass-123456"} <= set(secret_values())
    text = " ".join([*planted.values(), "postgres://app:db-pass-123456@db", "false"])
    assert redact(text) == " ".join([MASK] * 6 + [f"postgres://app:{MASK}@db", "false"])
    # Credentials inside any URL, whatever they are.
    assert redact("https://u:p4ss@tinker.example/v1?api_key=abc&x=1") == \
        f"https://u:{MASK}@tinker.example/v1?api_key={MASK}&x=1"


def test_a_secret_in_run_name_or_base_url_reaches_no_name_path_console_or_wandb(tmp_path):
    secret = "hf_PLANTEDsecret0123456789"
    env = {**os.environ, "HF_TOKEN": secret, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("WANDB_SERVICE", None)  # this process's wandb-core, if a test started one: not ours
    run = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--backend", "local",
                          "--wandb_mode", "offline", "--max_steps", "2", "--sample_every", "1",
                          "--run_name", f"x-{secret}", "--wandb_group", f"g-{secret}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr
    assert secret not in run.stdout + run.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name == "x-REDACTED"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "output.log" for p in files)  # W&B's capture of the console
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
        assert secret not in str(path)
    from tests.wandb_records import read_offline_run

    wandb_run = read_offline_run(run_dir)
    assert "lr" in wandb_run.config  # the config arrived (the secret is nowhere: checked above)

    key = "tml-planted-key-0123456789"
    env["TINKER_API_KEY"] = key
    failed = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--base_url",
                             f"http://user:{key}@127.0.0.1:9/?api_key={key}", "--wandb_mode",
                             "disabled"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1800)
    assert failed.returncode == 2, failed.stderr
    assert key not in failed.stdout + failed.stderr
    assert "cannot reach the Tinker service" in failed.stderr


# --- W&B online attempt -----------------------------------------------------------------------

@pytest.mark.e2e
def test_an_unanswered_wandb_online_attempt_falls_back_within_the_bound(tmp_path, monkeypatch,
                                                                       silent_url):
    """With a key and a server that never answers, W&B's default waits 90 s before the offline
    fallback; Tracker bounds it (WANDB_INIT_TIMEOUT_S)."""
    import time

    from common.tracking import WANDB_INIT_TIMEOUT_S, Tracker

    monkeypatch.setenv("WANDB_BASE_URL", silent_url)
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    started = time.monotonic()
    tracker = Tracker(tmp_path, project="p", mode="online", run_name="n", group=None,
                      job_type="sft", config={})
    tracker.finish()  # W&B starts on the tracker's worker thread: the fallback is done by now
    took = time.monotonic() - started
    assert tracker.wandb_mode == "offline"
    assert took < WANDB_INIT_TIMEOUT_S + 45, took  # W&B's own default is 90 s


# --- crash points around a checkpoint -----------------------------------------------------------

class Crash(Exception):
    pass


@pytest.mark.parametrize("script", ["sft", "rl"])
@pytest.mark.parametrize("where", ["after_checkpoint", "disk_full_at_log"])
def test_a_crash_at_a_checkpoint_loses_no_step(tmp_path, monkeypatch, script, where):
    """A process dying right after step 2's checkpoint is written, or failing to write step 2's
    metrics (a full disk), must not lose step 2: the rerun holds steps 1..4 once each."""
    import train_rl
    from common import runs
    from common.tracking import Tracker

    module = train_sft if script == "sft" else train_rl
    flags = ["--backend", "local", "--wandb_mode", "disabled", "--max_steps", "4",
             "--save_every", "2", "--sample_every", "0", "--log_dir", str(tmp_path / "run")]
    if script == "rl":
        flags += ["--batch_size", "2", "--group_size", "2", "--max_tokens", "8",
                  "--eval_problems", "2", "--concise_bonus_after", "0",
                  "--noconcise_needs_answer"]
    if where == "after_checkpoint":
        real = runs.Run.save_if_due

        def save_then_die(run, step):
            real(run, step)
            if step == 2:
                raise Crash("killed right after the checkpoint was written")
        monkeypatch.setattr(runs.Run, "save_if_due", save_then_die)
    else:
        real_log = Tracker.log

        def log_or_disk_full(self, metrics, step):
            if step == 2:
                raise OSError(28, "No space left on device")
            real_log(self, metrics, step)
        monkeypatch.setattr(Tracker, "log", log_or_disk_full)
    assert run_main(module.main, module.Config, flags) == 1  # unknown error: traceback, 1
    monkeypatch.undo()
    assert run_main(module.main, module.Config, flags) == 0
    run_dir = tmp_path / "run"
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [c["step"] for c in states(run_dir)] == [2, 4]


# --- the file layer -------------------------------------------------------------------------------

def test_reading_a_run_directory_needs_neither_wandb_nor_the_tracker():
    """costs (and any other run-dir reader) import common.runfiles: no W&B, no Tracker."""
    code = ("import sys, common.runfiles, common.costs; "
            "print(sorted(m for m in ('wandb', 'common.tracking') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_rows_logged_before_a_sigkill_are_in_the_files(tmp_path):
    """A record is in the kernel when log() returns: SIGKILL right after loses none of it."""
    code = f"""
import os, signal
from common.tracking import Tracker
tracker = Tracker({str(tmp_path)!r}, project="p", mode="disabled", run_name="n", group=None,
                  job_type="sft", config={{}})
for step in range(1, 4):
    tracker.log({{"train/loss": 1.0 / step}}, step)
tracker.log_table("samples", ["step", "completion"], [[3, "foo"]], 3)
tracker.log_checkpoint(3, "000003", "tinker://x/weights/000003", "state")
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120)
    assert killed.returncode == -9
    assert [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert read_jsonl(tmp_path / "samples.jsonl")[0]["completion"] == "foo"
    assert read_jsonl(tmp_path / "checkpoints.jsonl")[0]["name"] == "000003"
