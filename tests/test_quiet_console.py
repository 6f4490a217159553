"""What a user sees: each script's console on the local backend holds no warning the user did
not cause (a library's deprecation, the SDK's long-poll retries), and a refused or finished
rerun answers before anything heavy loads."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--backend", "local", "--wandb_mode", "offline", "--max_steps", "2"]


def console(tmp_path: Path, script: str, *argv: str) -> tuple[int, str]:
    # No -W filters here and no pytest filters apply: what a user's terminal would show.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "WANDB_SERVICE")}
    done = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)  # a hang guard only
    return done.returncode, done.stdout + done.stderr


def test_no_warning_or_retry_line_in_any_scripts_console(tmp_path):
    runs = [("train_sft.py", *QUICK, "--log_dir", "runs/sft"),
            ("train_rl.py", *QUICK, "--batch_size", "2", "--group_size", "2",
             "--max_tokens", "16", "--eval_problems", "2", "--log_dir", "runs/rl"),
            ("evaluate.py", "--backend", "local", "--wandb_mode", "offline", "--checkpoint",
             "runs/rl", "--num_problems", "3", "--max_tokens", "16", "--log_dir", "runs/eval")]
    for script, *argv in runs:
        code, text = console(tmp_path, script, *argv)
        assert code == 0, text
        noisy = [line for line in text.splitlines()
                 if "Warning" in line or "warnings.warn" in line or "Retrying request" in line]
        assert not noisy, (script, noisy)


def test_a_finished_or_refused_rerun_answers_before_loading_the_backend(tmp_path):
    argv = ["train_sft.py", *QUICK, "--log_dir", "runs/sft", "--sample_every", "0"]
    assert console(tmp_path, *argv)[0] == 0
    started = time.monotonic()
    code, finished = console(tmp_path, *argv)
    finished_s = time.monotonic() - started
    assert code == 0 and "already finished (step 2)" in finished, finished
    # Not timed (a loaded machine may take longer), but nothing heavy started: no W&B run, no
    # backend (the import of torch alone is what made a refused run take 16-40 s).
    assert "tracking:" not in finished and "tokens:" not in finished, finished
    code, text = console(tmp_path, *argv, "--lora_rank", "4")
    assert code == 2 and "--lora_rank 4 (the run has 8)" in text, text
    code, text = console(tmp_path, "evaluate.py", "--backend", "local", "--wandb_mode",
                         "disabled", "--log_dir", "runs/sft", "--num_problems", "1")
    assert code == 2 and "holds a train_sft run; evaluate writes its own" in text, text
    print(f"finished rerun answered in {finished_s:.1f} s")
