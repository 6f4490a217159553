"""The README's commands as a reader types them: a shell that activated the venv, and flags
the scripts really have. (tests/test_headline_rl.py and tests/test_rl_pipeline.py run the RL
commands themselves; this checks every command block, quickly.)"""

import re
import shlex
from pathlib import Path

import pytest

import evaluate
import train_rl
import train_sft
from common import compare
from common.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train_sft.py": train_sft.Config, "train_rl.py": train_rl.Config,
           "evaluate.py": evaluate.Config, "common.compare": compare.Config}


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def commands() -> list[list[str]]:
    """Each `python <script> ...` command of the README, continuation lines joined."""
    found = []
    for block in bash_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python ") and not line.startswith("python3 -m venv"):
                found.append(shlex.split(re.sub(r"<[^>]*>", "X", line)))
    return found


def test_every_block_that_runs_python_activates_the_venv_first():
    for block in bash_blocks():
        if re.search(r"^python ", block, flags=re.M):
            assert block.startswith("source .venv/bin/activate"), block


def test_every_script_and_file_the_commands_name_exists():
    for argv in commands():
        target = argv[2] if argv[1] == "-m" else argv[1]
        if argv[1] != "-m":
            assert (ROOT / target).is_file(), argv


def script_and_flags(argv: list[str]) -> tuple[str, list[str]]:
    """`python X.py flags` or `python -m module flags` -> (X.py or module, flags)."""
    return (argv[2], argv[3:]) if argv[1] == "-m" else (argv[1], argv[2:])


@pytest.mark.parametrize("argv", [a for a in commands() if script_and_flags(a)[0] in SCRIPTS],
                         ids=lambda a: " ".join(a[1:])[:60])
def test_script_commands_parse(argv):
    script, flags = script_and_flags(argv)
    parse_config(SCRIPTS[script], [a for a in flags if a not in ("[--latency", "1.0]")])
