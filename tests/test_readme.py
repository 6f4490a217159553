"""The commands of the README and docs/*.md as a reader types them: a shell that activated the
venv, flags the scripts really have, files that exist. (tests/test_headline_rl.py,
tests/test_rl_pipeline.py and tests/test_rl_tasks.py run the RL commands themselves; this checks
every command block, quickly.)"""

import re
import shlex
from pathlib import Path

import pytest

import evaluate
import train_rl
import train_sft
from common import compare
from common.cli import parse_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train_sft.py": train_sft.Config, "train_rl.py": train_rl.Config,
           "evaluate.py": evaluate.Config, "common.compare": compare.Config}


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def bash_blocks() -> list[str]:
    return [block for doc in DOCS
            for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)]


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
        for arg in argv:  # data files, reward files, @prompt files
            path = re.sub(r"^(@|dataset:)", "", arg).split(":")[0]
            if re.fullmatch(r"(data|sweeps|docs)/[\w./-]+\.\w+", path):
                assert (ROOT / path).is_file(), (argv, path)


def test_every_doc_the_readme_links_exists():
    for link in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).is_file(), link


def script_and_flags(argv: list[str]) -> tuple[str, list[str]]:
    """`python X.py flags` or `python -m module flags` -> (X.py or module, flags)."""
    return (argv[2], argv[3:]) if argv[1] == "-m" else (argv[1], argv[2:])


@pytest.mark.parametrize("argv", [a for a in commands() if script_and_flags(a)[0] in SCRIPTS],
                         ids=lambda a: " ".join(a[1:])[:60])
def test_script_commands_parse(argv):
    script, flags = script_and_flags(argv)
    parse_config(SCRIPTS[script], [a for a in flags if a not in ("[--latency", "1.0]")])
