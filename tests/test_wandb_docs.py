"""docs/wandb.md's commands run as typed: every `wandb` subcommand and flag exists, the sync
command has the shape the runs print, `wandb leet inspect --summary` reads a real run, and the
python commands' flags are the scripts' own."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from common.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "wandb.md"


def commands() -> list[list[str]]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                found.append(shlex.split(line))
    return found


def help_text(argv: list[str]) -> str:
    return subprocess.run(argv + ["--help"], capture_output=True, text=True, check=True,
                          timeout=120, cwd=ROOT).stdout


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a)[:50])
def test_every_command_and_flag_exists(argv):
    program = [sys.executable, "-m", "wandb"] if argv[0] == "wandb" else [sys.executable]
    words = [a for a in argv[1:] if not a.startswith("--") and "<" not in a]
    if argv[0] == "python":
        assert (ROOT / words[0]).is_file(), argv
        words = words[:1]
    else:  # the subcommands: `leet`, `leet inspect`, `sync`
        words = [w for w in words if w.isalpha()]
    text = help_text(program + words)
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in text, (argv, flag)


def test_the_sync_command_is_the_one_a_run_prints(tmp_path, capsys):
    (sync,) = [a for a in commands() if a[:2] == ["wandb", "sync"]]
    Tracker(tmp_path / "runs" / "r", project="p", mode="offline", run_name="r", group=None,
            job_type="sft", config={}).finish()
    run_id = (tmp_path / "runs" / "r" / "wandb_run_id").read_text()
    printed = re.search(r"upload: (wandb sync \S+)", capsys.readouterr().out).group(1)
    documented = " ".join(sync).replace("runs/<run>", str(tmp_path / "runs" / "r")).replace(
        "<run id>", run_id)
    assert printed == documented


def test_leet_inspect_summary_reads_a_run(tmp_path):
    (inspect,) = [a for a in commands() if a[:3] == ["wandb", "leet", "inspect"]]
    with Tracker(tmp_path / "runs" / "r", project="p", mode="offline", run_name="r", group=None,
                 job_type="sft", config={}) as tracker:
        tracker.log({"train/loss": 0.5}, 1)
    argv = [a.replace("runs/<run>", str(tmp_path / "runs" / "r")) for a in inspect[1:]]
    out = subprocess.run([sys.executable, "-m", "wandb", *argv], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "train/loss" in out
