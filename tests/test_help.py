"""`--help` of every script: the Config docstring on top, flags grouped in a fixed order, each
flag once with its real default once, lines a terminal can show."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import train_rl
import train_sft
from common.cli import FLAG_GROUPS, OTHER_FLAGS, parse_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train_sft.py": train_sft.Config, "train_rl.py": train_rl.Config,
           "evaluate.py": evaluate.Config}
ORDER = ["options", "task and data", "model and backend", "optimisation", "sampling",
         "evaluation", "tracking", "checkpoints"]
HEAVY = ("torch", "tinker", "wandb")  # each takes from 0.5 s (wandb) to 1.1 s (torch) to import


def run_help(script: str) -> str:
    """`python <script> --help` on a 200-column terminal."""
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)  # a hang guard only
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def help_in_process(config: type, columns: int, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as exited:
        parse_config(config, ["--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """{group title: [(invocation, help text joined), ...]} in the order printed."""
    out: dict[str, list[tuple[str, str]]] = {}
    title = None
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][a-z ]*:", line):
            title = line[:-1]
            out[title] = []
        elif title and re.match(r"  -", line):
            invocation, _, rest = line.strip().partition("  ")
            out[title].append((invocation, rest.strip()))
        elif title and line.strip():  # a wrapped help line
            invocation, rest = out[title][-1]
            out[title][-1] = (invocation, f"{rest} {line.strip()}".strip())
    return out


def option_strings(invocation: str) -> list[str]:
    return re.findall(r"--?[a-z_]+", invocation.split(" {")[0].split(" [")[0])


def expected_default(field: dataclasses.Field) -> str:
    value = field.default_factory() if callable(field.default_factory) else field.default
    if isinstance(value, bool):
        return {True: "on", False: "off"}[value]
    return "none" if value in (None, []) else str(value)


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def script_help(request) -> tuple[str, type, str]:
    return request.param, SCRIPTS[request.param], run_help(request.param)


def test_help_starts_with_the_configs_docstring(script_help):
    script, config, text = script_help
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: {script} ")
    assert " ".join(description.split()) == " ".join(config.__doc__.split())


def test_groups_are_in_the_fixed_order_and_every_field_is_in_one(script_help):
    _, config, text = script_help
    titles = list(sections(text))
    assert titles == [t for t in ORDER if t in titles], titles
    assert OTHER_FLAGS not in titles
    assert {"options", "model and backend", "tracking"} <= set(titles)


def test_every_flag_is_listed_once_with_one_default(script_help):
    _, config, text = script_help
    listed = [(inv, doc) for group in sections(text).values() for inv, doc in group]
    flags = [flag for inv, _ in listed for flag in option_strings(inv)]
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert sorted(flags) == sorted(set(flags)), "a flag listed twice"
    assert {f"--{name}" for name in fields} <= set(flags)
    for invocation, doc in listed:
        if invocation.startswith("-h"):
            continue
        said = re.findall(r"\bdefault:", doc, re.IGNORECASE)
        assert len(said) == 1, f"{invocation}: {doc}"
        assert "(default: None)" not in doc and "%(" not in doc, f"{invocation}: {doc}"
        name = option_strings(invocation)[0][2:]
        shown = re.search(r"\(default: (.*)\)$", doc)
        if name in fields and shown:  # the doc did not state its default in its own words
            value = expected_default(fields[name])
            assert shown.group(1) == value or value.endswith("/" + shown.group(1)), invocation


def test_booleans_read_as_a_pair_with_their_default(script_help):
    _, config, text = script_help
    invocations = {inv: doc for group in sections(text).values() for inv, doc in group}
    for field in dataclasses.fields(config):
        if field.type in (bool, "bool"):
            doc = invocations[f"--{field.name} / --no{field.name}"]
            assert doc.endswith(f"(default: {'on' if field.default else 'off'})"), doc


def test_lines_fit_a_terminal_however_wide(script_help, monkeypatch, capsys):
    _, config, text = script_help
    assert max(map(len, text.splitlines())) <= 100
    assert max(map(len, help_in_process(config, 80, monkeypatch, capsys).splitlines())) <= 80


def test_load_checkpoint_asks_for_a_run_directory_or_a_tinker_path(monkeypatch, capsys):
    text = help_in_process(train_rl.Config, 200, monkeypatch, capsys)
    (_, doc), = [(inv, doc) for inv, doc in sections(text)["checkpoints"]
                 if inv.startswith("--load_checkpoint RUN_DIR|tinker://")]
    assert "run directory" in doc and "tinker://" in doc


@pytest.mark.parametrize("config", SCRIPTS.values(), ids=SCRIPTS)
def test_every_config_field_has_a_help_group(config):
    grouped = {name for names in FLAG_GROUPS.values() for name in names}
    missing = [f.name for f in dataclasses.fields(config) if f.name not in grouped]
    assert not missing, f"add {missing} to common.cli.FLAG_GROUPS"


def test_no_field_is_in_two_groups():
    names = [name for names in FLAG_GROUPS.values() for name in names]
    assert len(names) == len(set(names))
    assert list(FLAG_GROUPS) == ORDER[1:]


def test_the_cli_layer_loads_no_heavy_module():
    """`--help` stays fast only if nothing on its path imports torch, tinker or wandb."""
    code = ("import sys, common.config, common.runs, common.tracking; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, check=True).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_loads_no_heavy_module(script):
    code = ("import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, script], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.stderr.strip().splitlines()[-1] == "[]"
