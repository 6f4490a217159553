"""Tasks beyond the seed's (common/tasks.py): dataset files and their formats, reasoning-gym,
the answer / exact / user rewards, held-out splits that never overlap training, and bad input."""

import json
import math
from pathlib import Path

import pytest

from common.cli import run_main
from common.data import DatasetError
from common.rewards import answer_reward, answers_match, extract_answer, reference_answer
from common.tasks import TaskConfig, TaskError, fingerprint, make_task, solved

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
QA = ROOT / "data" / "arithmetic_qa.jsonl"  # the seed's problems, GSM8K-style ("... #### 48")

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 friends in April, and half as many in May. How many "
                 "clips did she sell altogether?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72"},
    {"question": "What is half of one?", "answer": "#### 0.5"},
    {"question": "Name the colour of the sky.", "answer": "#### blue"},
    {"question": "Weng earns $12 an hour. How much for 50 minutes?", "answer": "#### 10"},
]


def write_gsm8k(tmp_path: Path, kind: str, rows: list[dict] = GSM8K_ROWS) -> Path:
    """The fixture as JSONL, CSV or parquet, written through `datasets` as a user would."""
    import datasets

    path = tmp_path / f"gsm8k.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_rewards_match_equal_numbers_in_any_notation():
    for reference, answer in [("0.5", "1/2"), ("0.5", "\\frac{1}{2}"), ("72", "72.0"),
                              ("1,000", "1000"), ("blue", " blue ")]:
        assert answers_match(reference, answer), (reference, answer)
    assert not answers_match("72", "73") and not answers_match("blue", "red")
    assert reference_answer("Natalia ... <<48+24=72>>72\n#### 72") == "72"
    assert reference_answer(3.5) == "3.5" and reference_answer("no marker") == "no marker"


def test_answers_are_read_from_tags_or_the_last_box():
    assert extract_answer("<answer>X</answer> then <answer> 7 </answer>") == "7"
    assert extract_answer("none here") is None
    assert extract_answer("\\boxed{1} and \\boxed{\\frac{1}{2}}", "boxed") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{unclosed", "boxed") is None
    assert answer_reward("<answer>1/2</answer>", "0.5") == {"format": 0.1, "correct": 1.0,
                                                             "total": 1.1}
    assert answer_reward("<answer>1/2</answer>", "0.5", exact=True)["correct"] == 0.0
    assert answer_reward("the answer is 0.5", "0.5") == {"format": 0.0, "correct": 0.0,
                                                         "total": 0.0}


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_gsm8k_file_is_a_task_in_any_format(tmp_path, kind):
    path = write_gsm8k(tmp_path, kind)
    task = make_task(TaskConfig(task=f"dataset:{path}", heldout_fraction=0.25))
    heldout = task.heldout()
    assert len(heldout) == 1
    train = [task.train(0, k) for k in range(3)]
    # Problem k of a seed is fixed; the first epoch covers every training row once.
    assert [p.where for p in train] == [task.train(0, k).where for k in range(3)]
    assert sorted(p.answer for p in train + heldout) == ["0.5", "10", "72", "blue"]
    assert {p.messages[-1]["content"] for p in train}.isdisjoint(
        {p.messages[-1]["content"] for p in heldout})
    problem = next(p for p in train + heldout if p.answer == "0.5")
    assert problem.messages[0] == {"role": "system", "content": "Solve the problem. Put your "
                                   "final answer in <answer>X</answer> tags."}
    assert task.reward(problem, "so <answer>\\frac{1}{2}</answer>")["total"] == 1.1
    assert solved(task.reward(problem, "<answer>2</answer>")) is False


def test_the_three_formats_give_the_same_problems(tmp_path):
    tasks = [make_task(TaskConfig(task=f"dataset:{write_gsm8k(tmp_path, kind)}"))
             for kind in ("jsonl", "csv", "parquet")]
    problems = [[(p.messages, p.answer) for p in (*t.heldout(), *map(
        lambda k, t=t: t.train(5, k), range(8)))] for t in tasks]
    assert problems[0] == problems[1] == problems[2]


def test_heldout_file_messages_rows_and_fields(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}], "label": 4}) + "\n" + json.dumps({
            "messages": [{"role": "user", "content": "3+3?"}], "label": "6"}) + "\n")
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"messages": [{"role": "user", "content": "3+3?"}],
                                "label": 6}) + "\n")
    task = make_task(TaskConfig(task=f"dataset:{chat}", answer_field="label",
                                heldout=str(held), system_prompt="Answer in tags."))
    # A held-out prompt is never trained on, even from another row of the training file.
    assert {task.train(0, k).messages[-1]["content"] for k in range(4)} == {"2+2?"}
    trained = task.train(0, 0)
    assert trained.messages == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "2+2?"}]  # its own answer dropped
    assert trained.answer == "4" and task.heldout()[0].answer == "6"
    assert task.heldout()[0].messages[0] == {"role": "system", "content": "Answer in tags."}


def test_system_prompt_from_a_file_and_the_seeds_problems_as_a_dataset(tmp_path):
    config = TaskConfig(task=f"dataset:{QA}",
                        system_prompt=f"@{ROOT / 'data' / 'arithmetic_prompt.txt'}")
    task = make_task(config)
    seed_task = make_task(TaskConfig())
    problem = task.train(0, 0)
    assert problem.messages[0] == seed_task.train(0, 0).messages[0]  # the seed's prompt
    assert len(task.heldout()) == 100  # 10% of the 1,000 rows
    assert task.reward(problem, f"<answer>{problem.answer}</answer>")["total"] == 1.1
    assert list(fingerprint(config)) == ["data"] and len(fingerprint(config)["data"]) == 16


def test_reasoning_gym_problems_come_by_seed_and_index_and_score_themselves():
    config = TaskConfig(task="reasoning_gym:basic_arithmetic",
                        task_config='{"min_terms": 2, "max_terms": 3}')
    task = make_task(config)
    problems = [task.train(1, k) for k in range(6)]
    assert [p.row for p in problems] == [make_task(config).train(1, k).row for k in range(6)]
    assert [p.row for p in problems] != [task.train(2, k).row for k in range(6)]
    held = {p.row["question"] for p in task.heldout()}
    assert len(task.heldout()) == 300 and not held & {p.row["question"] for p in problems}
    problem = problems[0]
    assert task.reward(problem, f"<answer>{problem.answer}</answer>") == {
        "format": 0.1, "correct": 1.0, "total": 1.1}
    assert task.reward(problem, "<answer>nope</answer>")["correct"] == 0.0
    assert problem.part and problem.part.startswith("num_terms=")


@pytest.mark.parametrize("config, message", [
    (dict(task="reasoning_gym:chainsum"), r"no such reasoning-gym dataset; did you mean chain_sum"),
    (dict(task="reasoning_gym:chain_sum", task_config="{"), r"--task_config: not valid JSON"),
    (dict(task="reasoning_gym:chain_sum", task_config='{"bogus": 1}'),
     r"--task_config \{\"bogus\": 1\}: reasoning_gym:chain_sum refused it"),
    (dict(task="arithmetic", task_config="{}"), r"--task_config: only for --task reasoning_gym"),
    (dict(task="dataset:x.jsonl", pair_counts="1"), r"--pair_counts: only for --task arithmetic"),
    (dict(task="wordle"), r"--task wordle: expected arithmetic, dataset:SPEC"),
    (dict(task="dataset:missing.jsonl"), r"--task dataset:missing.jsonl: no such file"),
    (dict(system_prompt="@missing.txt"), r"--system_prompt @missing.txt: no such file"),
    (dict(reward="nope.py:f"), r"--reward nope.py:f: no such file"),
    (dict(reward="loose"), r"--reward loose: expected answer, exact or FILE.py:FUNCTION"),
])
def test_bad_task_flags_name_what_is_wrong(config, message):
    with pytest.raises((TaskError, DatasetError), match=message):
        make_task(TaskConfig(**config))


def test_a_file_without_the_answer_field_names_the_row(tmp_path):
    path = write_gsm8k(tmp_path, "jsonl", [*GSM8K_ROWS[:2], {"question": "q"}])
    with pytest.raises(TaskError, match=rf"dataset:{path} row 3: no 'answer'"):
        make_task(TaskConfig(task=f"dataset:{path}"))
    with pytest.raises(TaskError, match=r"row 1: no prompt column"):
        make_task(TaskConfig(task=f"dataset:{path}", prompt_field="problem"))


REWARD_FILE = '''
import math

def score(completion, row):
    """Reward parts: right (the file's own check) and short."""
    right = float(row["answer"].split("####")[-1].strip() in completion)
    return {"right": right, "short": 0.1 * (len(completion) < 40), "total": right + 0.1}

def plain(completion, row):
    return len(completion) / 100

def crash(completion, row):
    return row["missing"]

def not_a_number(completion, row):
    return "high"

def nan(completion, row):
    return math.nan

def no_total(completion, row):
    return {"right": 1.0}
'''


@pytest.fixture
def reward_file(tmp_path) -> Path:
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    return path


def test_a_reward_file_is_loaded_without_installing_and_its_parts_are_kept(reward_file):
    task = make_task(TaskConfig(task=f"dataset:{QA}", reward=f"{reward_file}:score"))
    assert task.reward_parts == ("right", "short")
    problem = task.train(0, 0)
    assert task.reward(problem, f"it is {problem.answer}") == {"right": 1.0, "short": 0.1,
                                                               "total": 1.1}
    assert solved(task.reward(problem, "")) is None  # no `correct` part: no accuracy
    plain = make_task(TaskConfig(reward=f"{reward_file}:plain"))  # the arithmetic task too
    assert plain.reward(plain.train(0, 0), "x" * 50) == {"total": 0.5}


@pytest.mark.parametrize("function, message", [
    ("crash", r"raised KeyError: 'missing' on data/arithmetic_qa.jsonl row \d+"),
    ("not_a_number", r"returned total='high', not a number"),
    ("nan", r"returned total=nan, not a finite number"),
    ("no_total", r"returned a dict without 'total'"),
    ("absent", r"has no function 'absent'"),
])
def test_a_broken_reward_fails_before_any_work_naming_the_row(reward_file, function, message):
    with pytest.raises(TaskError, match=rf"--reward {reward_file}:{function}: .*{message}"):
        make_task(TaskConfig(task="dataset:data/arithmetic_qa.jsonl",
                             reward=f"{reward_file}:{function}"))


def test_a_reward_that_breaks_mid_run_names_the_row(tmp_path):
    path = tmp_path / "flaky.py"
    path.write_text("def f(completion, row):\n    return float('nan') if 'x' in completion "
                    "else 1.0\n")
    task = make_task(TaskConfig(reward=f"{path}:f"))
    with pytest.raises(TaskError, match=r"on training problem 4: returned total=nan"):
        task.reward(task.train(0, 4), "x")
    assert math.isclose(task.reward(task.train(0, 4), "y")["total"], 1.0)


@pytest.mark.parametrize("argv, message", [
    (["--task", "reasoning_gym:chainsum"], "did you mean chain_sum"),
    (["--task", "dataset:data/foo.jsonl"], "dataset:data/foo.jsonl row 1: no 'answer'"),
    (["--reward", "nope.py:f"], "no such file"),
])
def test_bad_task_input_is_one_line_and_exit_2(argv, message, capsys):
    import train_rl

    assert run_main(train_rl.main, train_rl.Config, [*argv, "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
