"""train_rl.py and evaluate.py on tasks beyond the seed's generator: a dataset file in each
format, a reasoning-gym task and a reward file, run end to end on the local backend; a resumed
dataset run repeats the uninterrupted one; and (e2e) the README's dataset command learns."""

import json
from pathlib import Path

import pytest

import evaluate
import train_rl
from common.cli import run_main
from tests.test_rl_pipeline import readme_commands, run
from tests.test_tasks import write_gsm8k
from tests.wandb_records import read_offline_run

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("reward/mean", "reward/length", "train/loss", "tokens/cumulative/trained")
LENGTH_REWARD = "def f(completion, row):\n    return {'length': len(completion) / 100, " \
                "'total': len(completion) / 100}\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rl_argv(log_dir: Path, *extra: str) -> list[str]:
    # tiny-chat: the fastest to sample; a reward by length differs within every group, so every
    # step trains and a resumed run has weights and optimizer state to get exactly right.
    return ["--backend", "local", "--model", "tiny-chat", "--wandb_mode", "offline",
            "--batch_size", "2", "--group_size", "4", "--max_tokens", "16", "--eval_problems",
            "4", "--sample_every", "1", "--save_every", "1", "--lr", "1e-2", "--log_dir",
            str(log_dir), *extra]


def test_a_dataset_run_with_a_reward_file_is_tracked_and_resumes_exactly(tmp_path):
    reward = tmp_path / "length.py"
    reward.write_text(LENGTH_REWARD)
    task = ["--task", f"dataset:{write_gsm8k(tmp_path, 'csv')}", "--heldout_fraction", "0.25",
            "--reward", f"{reward}:f"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_main(train_rl.main, train_rl.Config,
                    rl_argv(straight, *task, "--max_steps", "3")) == 0
    assert run_main(train_rl.main, train_rl.Config,
                    rl_argv(resumed, *task, "--max_steps", "2")) == 0
    assert run_main(train_rl.main, train_rl.Config,
                    rl_argv(resumed, *task, "--max_steps", "3")) == 0
    expected, got = read_jsonl(straight / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3]
    assert [{k: m[k] for k in COMPARED} for m in got] == [
        {k: m[k] for k in COMPARED} for m in expected]
    assert "rl/accuracy" not in expected[0]  # the reward has no `correct` part
    config = (straight / "config.yaml").read_text()
    assert "task: dataset:" in config and "reward: " in config and "data_fingerprint" in config
    run = read_offline_run(straight)
    (table, *_) = run.tables["samples"]
    assert {"length", "reward", "advantage", "answer"} <= set(table.columns)


def test_a_changed_data_file_is_not_the_same_run(tmp_path, capsys):
    path = write_gsm8k(tmp_path, "jsonl")
    task = ["--task", f"dataset:{path}", "--heldout_fraction", "0.25"]
    assert run_main(train_rl.main, train_rl.Config,
                    rl_argv(tmp_path / "run", *task, "--max_steps", "1")) == 0
    path.write_text(path.read_text().replace("#### 72", "#### 73"))
    capsys.readouterr()
    assert run_main(train_rl.main, train_rl.Config,
                    rl_argv(tmp_path / "run", *task, "--max_steps", "2")) == 2
    assert "--data_fingerprint" in capsys.readouterr().err


@pytest.mark.parametrize("task", [
    ["--task", "dataset:{parquet}", "--heldout_fraction", "0.5"],
    ["--task", "reasoning_gym:basic_arithmetic", "--task_config", '{"max_terms": 2}'],
    ["--task", "dataset:data/arithmetic_qa.jsonl", "--reward", "data/example_reward.py:score"],
])
def test_evaluate_scores_any_task(tmp_path, task):
    task = [a.replace("{parquet}", str(write_gsm8k(tmp_path, "parquet"))) for a in task]
    argv = ["--backend", "local", "--model", "tiny-chat", "--wandb_mode", "disabled",
            "--num_problems", "3", "--max_tokens", "8", "--log_dir", str(tmp_path / "eval"),
            *task]
    assert run_main(evaluate.main, evaluate.Config, argv) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    (model,) = report["models"]
    assert model["label"] == "base:tiny-chat" and "reward" in model
    assert model["n"] == (2 if task[1].endswith(".parquet") else 3)  # 2 held-out rows of 4
    assert report["task"] == task[1]
    samples = [r for r in read_jsonl(tmp_path / "eval" / "samples.jsonl")
               if r["table"] == "evaluate/samples"]
    assert len(samples) == model["n"] and all("completion" in s for s in samples)


@pytest.mark.e2e
def test_the_readme_dataset_command_learns(tmp_path):
    command = ("python train_rl.py --task dataset:data/arithmetic_qa.jsonl --system_prompt "
               "@data/arithmetic_prompt.txt")
    assert command in readme_commands(), "README no longer shows the dataset command"
    run(command.replace("data/", f"{ROOT}/data/"), tmp_path)
    (run_dir,) = (tmp_path / "runs").glob("train_rl-*")
    reward = [m["reward/mean"] for m in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(reward) == 10
    assert sum(reward[-3:]) / 3 >= sum(reward[:3]) / 3 + 0.10, reward
