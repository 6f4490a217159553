"""Sweep YAMLs against W&B's engine and the scripts' flags, and the offline runner end to end.

The runner tests that need only its logic (bayes, failures, hyperband stopping) sweep a fake
program that writes metrics.jsonl like a training script, in well under a second per run; one
test runs a real two-run grid of train_sft.py.
"""

import dataclasses
import importlib
import importlib.util
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import sweeps
from common.cli import parse_config
from common.evaluation import wilson_interval
from tests.wandb_records import read_offline_run

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "sweeps" / "run_offline.py"
YAMLS = sorted((ROOT / "sweeps").glob("*.yaml"))

spec = importlib.util.spec_from_file_location("run_offline", RUNNER)
run_offline = sys.modules["run_offline"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_offline)  # after registering it: its dataclass looks itself up


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def config_fields(program: str) -> set[str]:
    module = importlib.import_module(Path(program).stem)
    return {f.name for f in dataclasses.fields(module.Config)}


HANG_CAP_S = 600  # only stops a hung test; a busy machine is slow, not wrong


def run_runner(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_CAP_S)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + HANG_CAP_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_sweeps_is_the_engine_not_this_folder():
    assert Path(sweeps.__file__).parent.parent.name == "site-packages"
    assert not (ROOT / "sweeps" / "__init__.py").exists()
    assert run_offline.next_run is sweeps.next_run


def test_there_are_lr_and_batch_size_sweeps_for_both_scripts():
    names = {p.name for p in YAMLS}
    assert {"sft_lr.yaml", "sft_batch_size.yaml", "rl_lr.yaml", "rl_batch_size.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_is_a_valid_sweep_of_real_flags_and_logged_metrics(path):
    config = load(path)
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert run_offline.load_sweep(path)["method"] == config["method"]
    assert config["command"] == ["${env}", "${interpreter}", "${program}", "${args}"]
    program = ROOT / config["program"]
    assert program.is_file()
    unknown = set(config["parameters"]) - config_fields(config["program"])
    assert not unknown, f"{path.name}: not fields of {config['program']}'s Config: {unknown}"
    for spec_ in config["parameters"].values():  # PyYAML reads 1e-4 as a string
        assert not any(isinstance(v, str) and re.fullmatch(r"[-+.\d]+e[-+]?\d+", v)
                       for v in [spec_.get("value"), spec_.get("min"), spec_.get("max"),
                                 *spec_.get("values", [])])
    # The metric is a literal key the program itself logs, not just any string.
    assert f'"{config["metric"]["name"]}"' in program.read_text()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_engine_suggestions_parse_as_the_agent_passes_them(path):
    config = run_offline.load_sweep(path)
    suggestion = sweeps.next_run(config, [], validate=True)
    params = {k: v["value"] for k, v in suggestion.config.items()}
    argv = run_offline.expand_command(config["command"], config["program"], params)
    assert argv[:3] == ["/usr/bin/env", sys.executable, str(ROOT / config["program"])]
    assert all(a.startswith("--") and "=" in a for a in argv[3:])
    module = importlib.import_module(Path(config["program"]).stem)
    cfg = parse_config(module.Config, argv[3:])
    for name, value in params.items():
        assert getattr(cfg, name) == pytest.approx(value), name


def test_a_null_sweep_value_reaches_the_script_as_none():
    import train_rl

    argv = run_offline.expand_command(["${args}"], "train_rl.py",
                                      {"concise_bonus_after": None, "lr": 1e-4})
    assert argv == ["--concise_bonus_after=None", "--lr=0.0001"]  # as `wandb agent` writes it
    cfg = parse_config(train_rl.Config, argv)
    assert cfg.concise_bonus_after is None and cfg.lr == 1e-4
    spaced = parse_config(train_rl.Config, ["--concise_bonus_after", "null"])
    assert spaced.concise_bonus_after is None
    assert parse_config(train_rl.Config, []).concise_bonus_after == 6


@pytest.mark.parametrize("path", [p for p in YAMLS if p.name.startswith("rl_")],
                         ids=lambda p: p.name)
def test_rl_sweeps_rank_on_a_heldout_metric_logged_more_than_once(path):
    config = load(path)
    params = {k: v.get("value") for k, v in config["parameters"].items()}
    assert config["metric"] == {"name": "eval/accuracy", "goal": "maximize"}
    assert 0 < params["eval_every"] < params["max_steps"]


def test_lr_flag_in_agent_style_parses():
    import train_rl

    assert parse_config(train_rl.Config, ["--lr=0.0001", "--batch_size=4"]).lr == 1e-4


def test_invalid_yaml_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("program: train_sft.py\nmethod: nope\nparameters:\n  log_dir: {value: x}\n")
    result = run_runner(bad, "--out", tmp_path / "out")
    assert result.returncode != 0
    assert str(bad) in result.stderr and "nope" in result.stderr and "log_dir" in result.stderr


# --- the runner with a fake program: metrics.jsonl rows, no training

FAKE = textwrap.dedent('''\
    import argparse, json, pathlib, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--meet", type=int, default=0)
    for flag in ("--wandb_mode", "--wandb_group", "--log_dir", "--run_name"):
        p.add_argument(flag, required=True)
    a = p.parse_args()
    out = pathlib.Path(a.log_dir)
    (out / "config.yaml").write_text(json.dumps(vars(a)))
    if a.lr < 0:
        sys.exit(3)
    if a.meet:  # wait until `meet` runs are alive at once (once per sweep), then go on
        alive, met = out.parent / f"alive-{out.name}", out.parent / "met"
        alive.touch()
        deadline = time.time() + 600  # a hang guard: a sweep that never runs them together
        while not met.exists() and len(list(out.parent.glob("alive-*"))) < a.meet:
            if time.time() > deadline:
                sys.exit(4)
            time.sleep(0.02)
        met.touch()
    for step in range(1, a.steps + 1):
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": a.lr * (1 + 1 / step)}) + "\\n")
        time.sleep(a.delay)
    if a.meet:
        alive.unlink()
''')


def fake_sweep(tmp_path: Path, **config) -> Path:
    program = tmp_path / "fake_train.py"
    program.write_text(FAKE)
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump({"program": str(program), "metric": {"name": "loss",
                                    "goal": "minimize"}, **config}))
    return path


def read_board(out: Path) -> list[dict]:
    return json.loads((out / "leaderboard.json").read_text())["runs"]


def test_grid_ranks_by_best_value_and_lists_failed_runs(tmp_path):
    path = fake_sweep(tmp_path, method="grid", parameters={
        "lr": {"values": [3.0, -1.0, 1.0, 2.0]}, "steps": {"value": 2}})
    result = run_runner(path, "--out", tmp_path / "out", "--group", "g1", "--poll", "0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = read_board(tmp_path / "out")
    assert [(r["params"]["lr"], r["rank"], r["state"]) for r in runs] == [
        (1.0, 1, "finished"), (2.0, 2, "finished"), (3.0, 3, "finished"),
        (-1.0, None, "failed")]
    assert runs[0]["metric"] == 1.5 and runs[0]["final"] == 1.5  # best = final (at step 2)
    assert runs[3]["exit_code"] == 3
    table = (tmp_path / "out" / "leaderboard.md").read_text()
    assert table.startswith("# Leaderboard: g1\n") and "failed (exit 3)" in table
    assert table.split("\n\n", 1)[1] in result.stdout  # the same table is printed
    for run in runs:
        flags = json.loads((Path(run["log_dir"]) / "config.yaml").read_text())
        assert flags["wandb_group"] == "g1" and flags["wandb_mode"] == "offline"
        assert flags["run_name"] == run["name"] == Path(run["log_dir"]).name
        assert (Path(run["log_dir"]) / "stdout.log").read_text().startswith("$ /usr/bin/env ")


def test_bayes_runs_count_runs_in_parallel(tmp_path):
    path = fake_sweep(tmp_path, method="bayes", parameters={
        "lr": {"distribution": "log_uniform_values", "min": 1.0e-3, "max": 1.0},
        "meet": {"value": 2}})
    result = run_runner(path, "--out", tmp_path / "out", "--count", 4, "--parallel", 2,
                        "--poll", "0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = read_board(tmp_path / "out")
    assert len(runs) == 4 and all(r["state"] == "finished" for r in runs)
    assert all(1e-3 <= r["params"]["lr"] <= 1.0 for r in runs)
    assert len({r["params"]["lr"] for r in runs}) == 4
    assert [r["metric"] for r in runs] == sorted(r["metric"] for r in runs)
    assert (tmp_path / "out" / "met").exists()  # two runs were alive at once


def test_random_and_bayes_need_a_count(tmp_path):
    path = fake_sweep(tmp_path, method="random", parameters={"lr": {"min": 0.1, "max": 1.0}})
    result = run_runner(path, "--out", tmp_path / "out")
    assert result.returncode == 2 and "--count" in result.stderr


def test_hyperband_stops_runs_that_fall_behind(tmp_path):
    path = fake_sweep(tmp_path, method="grid",
                      early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2},
                      parameters={"lr": {"values": [1.0, 2.0, 3.0, 4.0]},
                                  "steps": {"value": 40}, "delay": {"value": 0.1}})
    result = run_runner(path, "--out", tmp_path / "out", "--parallel", 4, "--poll", "0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    states = {r["params"]["lr"]: r["state"] for r in read_board(tmp_path / "out")}
    assert states[1.0] == "finished" and states[4.0] == "stopped", result.stdout
    assert "hyperband stops" in result.stdout
    runs = read_board(tmp_path / "out")
    stopped = [r for r in runs if r["state"] == "stopped"]
    # Stopped as `wandb agent` stops a run (SIGTERM), and ranked with what it reached.
    assert {r["exit_code"] for r in stopped} == {-signal.SIGTERM}
    assert all(r["rank"] is not None and r["metric"] is not None for r in runs)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ctrl_c_stops_the_runs_and_still_writes_the_leaderboard(tmp_path):
    """Also when the runner inherits SIGINT ignored, as a job started with `&` from a script
    does (the runner then ran its grid to the end: this test once timed out that way)."""
    path = fake_sweep(tmp_path, method="grid", parameters={
        "lr": {"values": [1.0, 2.0]}, "steps": {"value": 600}, "delay": {"value": 0.1}})
    runner = subprocess.Popen([sys.executable, str(RUNNER), str(path), "--out",
                               str(tmp_path / "out"), "--poll", "0.1"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=ignore_sigint)
    try:
        assert any("[sweep] start" in line for line in runner.stdout)  # stops at the first
        wait_for((tmp_path / "out" / "fake-01-lr1" / "metrics.jsonl").exists,
                 "the first run's metrics")
        runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=HANG_CAP_S)
    finally:
        if runner.poll() is None:
            runner.terminate()  # the runner stops its runs on SIGTERM too
            runner.communicate(timeout=HANG_CAP_S)
    assert runner.returncode == 1, output  # no run finished
    (run,) = read_board(tmp_path / "out")  # the second grid point never started
    assert run["state"] == "stopped" and run["exit_code"] is not None, output
    assert "interrupted" in output


# --- a real grid: train_sft.py, two LRs, two steps each


def test_offline_sft_lr_grid(tmp_path, local_server):
    """Two runs at once, both on one local server (as `python -m local_tinker serve` would be)."""
    url, server = local_server
    jobs_before = server.scheduler.jobs_run
    path = tmp_path / "sft_tiny.yaml"
    path.write_text(textwrap.dedent("""\
        program: train_sft.py
        method: grid
        metric: {name: eval/loss, goal: minimize}
        parameters:
          lr: {values: [1.0e-3, 3.0e-3]}
          max_steps: {value: 2}
          sample_every: {value: 0}
          sample_prompts: {value: 0}
          save_every: {value: 0}
        command:  # block style: in a flow list, `${env}` would open a YAML mapping
          - ${env}
          - ${interpreter}
          - ${program}
          - ${args}
        """))
    out = tmp_path / "out"
    result = run_runner(path, "--out", out, "--group", "sft-lr-test", "--parallel", 2,
                        "--base_url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = read_board(out)
    assert [r["state"] for r in runs] == ["finished", "finished"]
    assert {r["params"]["lr"] for r in runs} == {1e-3, 3e-3}
    assert runs[0]["metric"] <= runs[1]["metric"]
    configs = [load(Path(r["log_dir"]) / "config.yaml") for r in runs]
    differing = {k for k in configs[0] if configs[0][k] != configs[1][k]}
    assert differing == {"lr", "log_dir", "run_name"}
    assert {c["wandb_group"] for c in configs} == {"sft-lr-test"}
    assert {c["base_url"] for c in configs} == {url}
    assert server.scheduler.jobs_run > jobs_before  # the shared server did the work
    for run, cfg in zip(runs, configs, strict=True):
        assert cfg["lr"] == run["params"]["lr"] and cfg["max_steps"] == 2
        assert cfg["wandb_mode"] == "offline"
        metrics = [json.loads(line) for line in
                   (Path(run["log_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["eval/loss"] == pytest.approx(run["metric"])
        (record,) = [r for r in read_offline_run(Path(run["log_dir"])).records
                     if r["type"] == "run"]
        assert record["run"]["run_group"] == "sft-lr-test"  # what W&B shows after `wandb sync`
    table = (out / "leaderboard.md").read_text()
    assert table.index(runs[0]["name"]) < table.index(runs[1]["name"])
    assert "eval/loss" in table


# --- secrets and a leaderboard that says what is noise

ACCURACY_FAKE = textwrap.dedent('''\
    import argparse, json, pathlib
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--eval_problems", type=int, default=99)
    args, _ = p.parse_known_args()  # --wandb_group, --base_url, ... as the runner passes them
    out = pathlib.Path(next(a.split("=", 1)[1] for a in __import__("sys").argv
                            if a.startswith("--log_dir=")))
    (out / "config.yaml").write_text(json.dumps(vars(args)))
    # accuracy per lr: its best and its last (a tie on the best is broken by the last)
    curve = {1.0: [0.50, 0.60], 2.0: [0.60, 0.55], 3.0: [0.60, 0.58], 4.0: [0.30, 0.35]}[args.lr]
    with open(out / "metrics.jsonl", "w") as f:
        for step, accuracy in enumerate(curve, start=1):
            f.write(json.dumps({"step": step, "eval/accuracy": accuracy}) + "\\n")
''')


def accuracy_sweep(tmp_path: Path, **parameters) -> Path:
    program = tmp_path / "fake_rl.py"
    program.write_text(ACCURACY_FAKE)
    path = tmp_path / "acc.yaml"
    path.write_text(yaml.safe_dump({
        "program": str(program), "method": "grid", "parameters": parameters,
        "metric": {"name": "eval/accuracy", "goal": "maximize"}}))
    return path


def test_leaderboard_breaks_ties_by_the_last_value_and_marks_runs_within_noise(tmp_path):
    path = accuracy_sweep(tmp_path, lr={"values": [1.0, 2.0, 3.0, 4.0]},
                          eval_problems={"value": 99})
    result = run_runner(path, "--out", tmp_path / "out", "--poll", "0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = read_board(tmp_path / "out")
    # 3.0 and 2.0 tie on their best (0.60); 3.0's last value is higher. 1.0's best is the same
    # 0.60 too, and its last is the highest of all.
    assert [(r["params"]["lr"], r["rank"], r["metric"], r["final"]) for r in runs] == [
        (1.0, 1, 0.6, 0.6), (3.0, 2, 0.6, 0.58), (2.0, 3, 0.6, 0.55), (4.0, 4, 0.35, 0.35)]
    assert runs[0]["interval"] == pytest.approx(list(wilson_interval(59, 99)))
    # 0.35 over 99 problems is outside 0.60's interval; the ties are within it.
    assert [r["within_noise"] for r in runs] == [True, True, True, False]
    table = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "95% CI" in table and table.count("] | ~1 |") == 3 and "[0.266, 0.452] |  |" in table

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    json.loads((tmp_path / "out" / "leaderboard.json").read_text(), parse_constant=refuse)


def test_secrets_in_base_url_and_group_reach_no_output_of_the_runner(tmp_path, monkeypatch):
    secret = "grp-s3cr3t-0123456789"
    monkeypatch.setenv("MY_TEAM_TOKEN", secret)
    path = accuracy_sweep(tmp_path, lr={"values": [1.0]})
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(path), "--group", f"team-{secret}", "--base_url",
         "http://user:PASSWORD-xyz@127.0.0.1:1", "--poll", "0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_CAP_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSWORD-xyz" not in result.stdout + result.stderr
    assert secret not in result.stdout + result.stderr and "http://user:***@" in result.stdout
    (out,) = (tmp_path / "runs" / "sweeps").iterdir()
    assert secret not in out.name
    for file in out.rglob("*"):
        if file.is_file():
            assert b"PASSWORD-xyz" not in file.read_bytes() and secret.encode() not in \
                file.read_bytes(), file
    assert json.loads((out / "leaderboard.json").read_text())["group"] == "team-***"
