"""What `wandb sync` would upload after kills, resumes and requeues, read with W&B's own reader.

Each test runs the real scripts as processes of their own (as from a shell, or as `wandb agent`
starts them), takes the `wandb sync` command the run printed, expands it as a shell would, and
reads exactly those attempt directories with `wandb leet inspect` (W&B's reader, strict: a torn
file, which `wandb sync` stops at, fails the test). No step may appear twice across them, since
nothing here can show what W&B's server would make of a duplicate.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.wandb_records import read_offline_run, read_records

ROOT = Path(__file__).resolve().parent.parent
HANG_CAP_S = 1800  # only stops a hung test: a loaded machine is slow, not wrong
DEAD_SERVER = "http://127.0.0.1:9"  # nothing listens: `wandb sync` fails at its first request
RL_FLAGS = ["--backend", "local", "--wandb_mode", "offline", "--max_steps", "6",
            "--save_every", "2", "--eval_every", "3", "--batch_size", "2", "--group_size", "2",
            "--max_tokens", "8", "--eval_problems", "2", "--sample_every", "1",
            "--concise_bonus_after", "0", "--noconcise_needs_answer"]
SFT_FLAGS = ["--backend", "local", "--wandb_mode", "offline", "--max_steps", "12",
             "--save_every", "0", "--sample_every", "2", "--sample_prompts", "1",
             "--eval_every", "0"]


def start(script: str, *flags: str, cwd: Path = ROOT, **env: str) -> subprocess.Popen:
    # Not attached to this pytest process's W&B service (W&B hands it to children through
    # WANDB_SERVICE): a killed run's service must die as a shell-started one's would.
    environ = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | env
    return subprocess.Popen([sys.executable, str(ROOT / script), *flags], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def wait_until(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + HANG_CAP_S
    while not condition():
        assert process.poll() is None, f"the run ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def printed_sync_paths(output: str, cwd: Path = ROOT) -> list[Path]:
    """The directories of the last `wandb sync` command a run printed, as bash expands it."""
    pattern = re.findall(r"upload: wandb sync (\S+)", output)[-1]
    paths = sorted(glob.glob(pattern if os.path.isabs(pattern) else str(cwd / pattern)))
    assert paths, f"the printed command matches nothing: {pattern}"
    return [Path(p) for p in paths]


def uploaded_history(paths: list[Path]) -> list[dict]:
    """Every history record of those attempts (strict: each file whole), in sync order."""
    history = []
    for path in paths:
        (wandb_file,) = path.glob("run-*.wandb")
        history += [r["history"]["item"] for r in read_records(wandb_file, strict=True)
                    if r["type"] == "history"]
    return history


def test_an_rl_run_killed_in_its_first_seconds_then_resumed_uploads_complete(tmp_path):
    """SIGKILL right after step 2's checkpoint (W&B writes its file in blocks, so the killed
    attempt's .wandb is typically just its 7-byte header), resume, then what the printed
    `wandb sync` command names: every step once, one samples table, every checkpoint."""
    log_dir = tmp_path / "rl"
    flags = [*RL_FLAGS, "--log_dir", str(log_dir)]
    victim = start("train_rl.py", *flags)
    wait_until(lambda: any(c["kind"] == "state" and c["step"] == 2
                           for c in read_jsonl(log_dir / "checkpoints.jsonl")), victim,
               "step 2's checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=HANG_CAP_S)
    (killed,) = log_dir.glob("wandb/offline-run-*")
    killed_records = read_records(next(killed.glob("run-*.wandb")))
    if not killed_records:  # the case of the issue: `wandb sync` stops before uploading anything
        failed = subprocess.run(
            [sys.executable, "-m", "wandb", "sync", str(killed)], capture_output=True, text=True,
            timeout=300, env={**{k: v for k, v in os.environ.items() if k != "WANDB_SILENT"},
                              "WANDB_BASE_URL": DEAD_SERVER, "WANDB_API_KEY": "a" * 40})
        assert "error getting next record" in failed.stderr, failed.stderr

    resumed = start("train_rl.py", *flags, "--resume")
    output, _ = resumed.communicate(timeout=HANG_CAP_S)
    assert resumed.returncode == 0, output
    assert "set aside 1 W&B attempt(s)" in output
    assert (log_dir / "wandb" / "incomplete" / killed.name).is_dir()

    paths = printed_sync_paths(output)
    run_id = (log_dir / "wandb_run_id").read_text()
    assert all(p.name.endswith(run_id) for p in paths) and killed not in paths
    history = uploaded_history(paths)
    steps = [row["_step"] for row in history if "reward/mean" in row]  # every RL step has it
    assert steps == [1, 2, 3, 4, 5, 6]  # every step once, across everything uploaded
    assert [row["train/global_step"] for row in history if "reward/mean" in row] == steps
    metrics = read_jsonl(log_dir / "metrics.jsonl")
    for row, recorded in zip([r for r in history if "reward/mean" in r], metrics, strict=True):
        assert row["reward/mean"] == recorded["reward/mean"]
    assert [row["_step"] for row in history if "eval/accuracy" in row] == [3, 6]

    uploaded = read_offline_run(log_dir, dirs=paths, strict=True)
    assert list(uploaded.tables) == ["samples"]
    shown = uploaded.incremental_table("samples")  # what W&B's UI assembles at the end
    sampled = [r["step"] for t in shown for r in t.rows]
    assert sorted(set(sampled)) == [1, 2, 3, 4, 5, 6]
    assert sampled == [r["step"] for r in read_jsonl(log_dir / "samples.jsonl")]
    artifacts = [r["artifact"] for r in uploaded.records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert [sorted(a["aliases"]) for a in artifacts] == [
        ["latest", "step-000002"], ["latest", "step-000004"], ["final", "latest", "step-000006"]]
    assert uploaded.exit_codes[-1] == 0 and uploaded.summary["status"] == "finished"


def test_a_requeued_agent_run_continues_at_the_next_step(tmp_path):
    """`wandb agent` stops a run with SIGTERM and, when the run is requeued, reruns the same
    argv with the same WANDB_RUN_ID (no --log_dir): it must continue its own directory from the
    checkpoint, under the same W&B run and display name."""
    run_id = "requeue1"
    first = start("train_sft.py", *SFT_FLAGS, cwd=tmp_path, WANDB_RUN_ID=run_id)
    wait_until(lambda: any(len(read_jsonl(m)) >= 3
                           for m in tmp_path.glob("runs/*/metrics.jsonl")), first, "step 3")
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=HANG_CAP_S)
    assert first.returncode == 143, output
    (run_dir,) = tmp_path.glob("runs/*")
    stopped = json.loads((run_dir / "summary.json").read_text())["interrupted_at_step"]
    assert "last saved checkpoint tinker://" in output, output  # not "final checkpoint None"

    time.sleep(1.1)  # a new default name (it holds the time) would differ by now
    second = start("train_sft.py", *SFT_FLAGS, cwd=tmp_path, WANDB_RUN_ID=run_id)
    output, _ = second.communicate(timeout=HANG_CAP_S)
    assert second.returncode == 0, output
    assert list(tmp_path.glob("runs/*")) == [run_dir]  # no second directory
    assert f"continuing the run in runs/{run_dir.name} after step {stopped}" in output
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 13))
    started = min(m["_time"] for m in metrics if m["step"] == stopped + 1)
    assert all(m["_time"] < started for m in metrics if m["step"] <= stopped)  # not redone

    paths = printed_sync_paths(output, cwd=tmp_path)
    assert len(paths) == 2  # the stopped attempt (it finished cleanly) and this one
    history = uploaded_history(paths)
    assert [row["_step"] for row in history if "train/loss" in row] == list(range(1, 13))
    uploaded = read_offline_run(run_dir, dirs=paths, strict=True)
    names = [r["run"].get("display_name") for r in uploaded.records if r["type"] == "run"]
    assert uploaded.run_ids == [run_id, run_id]
    assert names == [run_dir.name, run_dir.name]  # one display name for the run's life
    shown = uploaded.incremental_table("samples")
    assert [r["step"] for t in shown for r in t.rows] == list(range(2, 13, 2))
