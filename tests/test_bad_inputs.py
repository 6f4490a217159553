"""Bad inputs, as a hostile user would give them: each ends with exit code 2 and one `error:`
line that names the problem (flag, file, line or row), no traceback, and nothing a previous run
saved is changed.

Most cases run in-process through `run_main` (the scripts' own entry point); a few run as real
processes to show the entry point is what `python train_sft.py ...` uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import train_rl
import train_sft
from common import compare
from common.cli import run_main

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"sft": train_sft, "rl": train_rl, "eval": evaluate, "compare": compare}
GOOD_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
SFT_RUN = ["--backend", "local", "--wandb_mode", "disabled", "--max_steps", "2",
           "--save_every", "1", "--sample_every", "0", "--eval_every", "0"]
RL_RUN = ["--backend", "local", "--wandb_mode", "disabled", "--max_steps", "1",
          "--batch_size", "2", "--group_size", "2", "--max_tokens", "8", "--eval_problems", "2",
          "--sample_every", "0"]


# ---------------------------------------------------------------------------------------------
# The inputs. Each case: (script, argv, regex the error line must match). `{d}` is the directory
# of bad files, `{sft}` / `{rl}` finished runs (copied per case when a case damages them),
# `{new}` a fresh run directory.

def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


DATA_FILES: dict[str, bytes | str] = {
    "empty.jsonl": "",
    "blank.jsonl": "\n\n  \n",
    "nonutf8.jsonl": b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
    "utf16.jsonl": jsonl(GOOD_ROW).encode("utf-16"),
    "utf16.csv": "prompt,completion\nhi,yo\n".encode("utf-16"),
    "list_row.jsonl": jsonl(GOOD_ROW, [1, 2]),
    "string_row.jsonl": jsonl(GOOD_ROW, '"hello"'),
    "number_row.jsonl": jsonl("42"),
    "truncated.jsonl": jsonl(GOOD_ROW) + '{"messages": [{"role": "user", "cont',
    "garbled_middle.jsonl": jsonl(GOOD_ROW, "{not json", GOOD_ROW),
    "messages_str.jsonl": jsonl({"messages": "hello"}),
    "messages_dict.jsonl": jsonl({"messages": {"role": "user"}}),
    "messages_empty.jsonl": jsonl(GOOD_ROW, {"messages": []}),
    "messages_null.jsonl": jsonl({"messages": None}),
    "no_columns.jsonl": jsonl({"text": "hello"}),
    "bad_role.jsonl": jsonl({"messages": [{"role": "bot", "content": "x"}]}),
    "no_role.jsonl": jsonl({"messages": [{"content": "x"}]}),
    "content_int.jsonl": jsonl({"messages": [{"role": "user", "content": 5},
                                             {"role": "assistant", "content": "x"}]}),
    "message_str.jsonl": jsonl({"messages": ["hi", "yo"]}),
    "last_user.jsonl": jsonl({"messages": [{"role": "user", "content": "hi"}]}),
    "empty_answer.jsonl": jsonl({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "  "}]}),
    "prompt_int.jsonl": jsonl({"prompt": 5, "completion": "x"}),
    "prompt_no_completion.jsonl": jsonl({"prompt": "hi"}),
    "bad.csv": "prompt,completion\nhi,yo\nonly one field\n",
    "too_many.csv": "prompt,completion\nhi,yo,extra\n",
    "quote.csv": 'prompt,completion\n"hi,yo\n',
    "header_only.csv": "prompt,completion\n",
    "empty.csv": "",
    "csv_no_columns.csv": "a,b\n1,2\n",
    "obj.json": '{"a": 1}',
    "broken_array.json": '[{"messages": [}',
    "string_array.json": '["a", "b"]',
    "empty_array.json": "[]",
    "garbage.parquet": b"not a parquet file at all",
    "notes.txt": "hello",
    "binary.jsonl": bytes(range(256)),
    "qa.jsonl": jsonl({"question": "1, 2", "answer": "#### 3"}, {"question": "3, 4",
                                                                 "answer": "#### 7"}),
    "qa_no_answer.jsonl": jsonl({"question": "1, 2", "answer": "3"}, {"question": "3, 4"}),
    "qa_blank_answer.jsonl": jsonl({"question": "1, 2", "answer": "  "}),
    "qa_one_row.jsonl": jsonl({"question": "1, 2", "answer": "3"}),
    "qa_bad_messages.jsonl": jsonl(*[{"messages": {"role": "user"}, "answer": "3"}] * 2),
    "reward.py": "def crash(completion, row):\n    raise ValueError('no')\n"
                 "def nan(completion, row):\n    return float('nan')\n"
                 "def text(completion, row):\n    return 'high'\n"
                 "def parts(completion, row):\n    return {'a': 1.0}\n"
                 "def flag(completion, row):\n    return True\n"
                 "not_callable = 3\n",
    "broken_reward.py": "def f(completion, row)\n    return 1\n",
    "raising_import.py": "raise RuntimeError('at import')\n",
    "prompt.txt": "Answer in tags.",
    "heldout_bad.jsonl": jsonl({"numbers": [1, 2, 3]}),
}

DATA_CASES = [
    ("empty.jsonl", r"empty.jsonl: the file is empty"),
    ("blank.jsonl", r"blank.jsonl: the file is empty"),
    ("nonutf8.jsonl", r"nonutf8.jsonl line 1: not UTF-8"),
    ("utf16.jsonl", r"utf16.jsonl: the file is UTF-16"),
    ("utf16.csv", r"utf16.csv: the file is UTF-16"),
    ("list_row.jsonl", r"list_row.jsonl line 2: expected a JSON object"),
    ("string_row.jsonl", r"string_row.jsonl line 2: expected a JSON object"),
    ("number_row.jsonl", r"number_row.jsonl line 1: expected a JSON object"),
    ("truncated.jsonl", r"truncated.jsonl line 2: not valid JSON"),
    ("garbled_middle.jsonl", r"garbled_middle.jsonl line 2: not valid JSON"),
    ("messages_str.jsonl", r"messages_str.jsonl row 1: 'messages' must be a list.*str"),
    ("messages_dict.jsonl", r"messages_dict.jsonl row 1: 'messages' must be a list.*dict"),
    ("messages_empty.jsonl", r"messages_empty.jsonl row 2: 'messages' is empty"),
    ("messages_null.jsonl", r"messages_null.jsonl row 1: no 'messages'"),
    ("no_columns.jsonl", r"no_columns.jsonl row 1: no 'messages'.*\['text'\]"),
    ("bad_role.jsonl", r"bad_role.jsonl row 1: message 1 has unknown role 'bot'"),
    ("no_role.jsonl", r"no_role.jsonl row 1: message 1 has unknown role None"),
    ("content_int.jsonl", r"content_int.jsonl row 1: message 1 has no text content"),
    ("message_str.jsonl", r"message_str.jsonl row 1: message 1 is not a"),
    ("last_user.jsonl", r"last_user.jsonl row 1: the last message is not an assistant turn"),
    ("empty_answer.jsonl", r"empty_answer.jsonl row 1: the final assistant turn is empty"),
    ("prompt_int.jsonl", r"prompt_int.jsonl row 1: 'prompt' must be text"),
    ("prompt_no_completion.jsonl", r"prompt_no_completion.jsonl row 1: no 'messages'"),
    ("bad.csv", r"bad.csv line 3: 1 fields, the header has 2"),
    ("too_many.csv", r"too_many.csv line 2: 3 fields, the header has 2"),
    ("quote.csv", r"quote.csv line \d+: not valid CSV"),
    ("header_only.csv", r"header_only.csv: the dataset has no rows"),
    ("empty.csv", r"empty.csv: the file is empty"),
    ("csv_no_columns.csv", r"csv_no_columns.csv row 1: no 'messages'.*\['a', 'b'\]"),
    ("obj.json", r"obj.json row 1: no 'messages'"),
    ("broken_array.json", r"broken_array.json line 1: not valid JSON"),
    ("string_array.json", r"string_array.json item 1: expected a JSON object"),
    ("empty_array.json", r"empty_array.json: the dataset has no rows"),
    ("garbage.parquet", r"garbage.parquet: could not load \(\w+"),
    ("notes.txt", r"notes.txt: unsupported file type '.txt'"),
    ("binary.jsonl", r"binary.jsonl line \d+: not UTF-8"),
    ("missing.jsonl", r"missing.jsonl: no such file"),
]

# Flags: (script, flag, value, regex). Values a type check refuses, then values a range check does.
BAD_INT = r"(invalid int value|must be)"
BAD_FLOAT = r"(invalid float value|must be)"
FLAG_CASES = [
    *[("sft", f, v, rf"--{f}\b.*{BAD_INT}") for f, values in {
        "batch_size": ["0", "-1", "2.7", "abc"], "lora_rank": ["0", "-8", "100000", "x"],
        "max_steps": ["0", "-3", "1.5"], "save_every": ["-1", "two"],
        "sample_every": ["-1"], "epochs": ["0", "-2"], "max_length": ["1", "0"],
        "max_tokens": ["0", "-5"], "eval_every": ["-1"], "sample_prompts": ["-1"],
        "warmup_steps": ["-1"], "dataset_size": ["0"], "seed": ["1.5", "seven"]}.items()
      for v in values],
    *[("sft", f, v, rf"--{f}\b.*{BAD_FLOAT}") for f, values in {
        "lr": ["0", "-1", "nan", "inf", "-inf", "abc"], "eval_fraction": ["1", "-0.1", "nan"],
        "temperature": ["-1", "nan", "inf", "warm"]}.items() for v in values],
    ("sft", "learning_rate", "nan", r"--lr: must be a positive number"),
    ("sft", "lr_schedule", "bogus", r"--lr_schedule: invalid choice: 'bogus'"),
    ("sft", "wandb_mode", "bogus", r"--wandb_mode: invalid choice: 'bogus'"),
    ("sft", "backend", "remote", r"--backend: invalid choice: 'remote'"),
    ("sft", "dry_run", "maybe", r"--dry_run.*Boolean value expected"),
    ("sft", "skip_invalid", "2", r"--skip_invalid.*Boolean value expected"),
    ("sft", "warmup_steps", "5", r"--warmup_steps: 5 is longer than the run \(--max_steps 2\)"),
    ("sft", "base_url", "http://tinker.example:1", r"--base_url: .*not on this machine"),
    ("sft", "load_checkpoint", "local://r/sampler_weights/000001",
     r"--load_checkpoint: .*sampler weights"),
    ("sft", "load_checkpoint", "/no/such/run", r"--load_checkpoint: /no/such/run is neither"),
    ("sft", "load_checkpoint", "local://nope/weights/000001",
     r"--load_checkpoint local://nope/weights/000001: .*not found"),
    ("sft", "model", "org/not-cached", r"--model org/not-cached.*Available offline"),
    ("sft", "dataset", "nonsense", r"--dataset nonsense: not a file"),
    ("sft", "dataset", "arithmetic-solutions:x", r"--dataset arithmetic-solutions:x: "),
    ("sft", "dataset", "arithmetic-solutions:0", r"--dataset arithmetic-solutions:0: "),
    ("sft", "dataset", "nobody/no-such-dataset", r"--dataset nobody/no-such-dataset: could not"),
    *[("rl", f, v, rf"--{f}\b.*(invalid int value|must be|group advantages)") for f, values in {
        "group_size": ["0", "1", "-2", "2.5"], "batch_size": ["0", "x"], "max_tokens": ["0"],
        "eval_every": ["-1"], "eval_problems": ["-1"], "max_steps": ["0", "1e3"],
        "concise_bonus_after": ["-1", "soon"], "lora_rank": ["0", "100000"],
        "max_steps_off_policy": ["-1"]}.items()
      for v in values],
    *[("rl", f, v, rf"--{f}\b.*{BAD_FLOAT}") for f, values in {
        "temperature": ["0", "-1", "nan", "inf"], "large_share": ["2", "-0.5", "nan"],
        "lr": ["nan", "-1e-4", "-inf"]}.items() for v in values],
    ("rl", "pair_counts", "a,b", r"--pair_counts/--large_share: "),
    ("rl", "pair_counts", "0", r"--pair_counts/--large_share: "),
    ("rl", "loss_fn", "reinforce", r"--loss_fn: invalid choice: 'reinforce'"),
    ("rl", "advantage", "none", r"--advantage: invalid choice: 'none'"),
    ("rl", "base_url", "http://tinker.example:1", r"--base_url: .*not on this machine"),
    ("rl", "load_checkpoint", "local://r/sampler_weights/final",
     r"--load_checkpoint: .*sampler weights"),
    *[("eval", f, v, rf"--{f}\b.*(invalid (int|float) value|must be)") for f, values in {
        "temperature": ["-1", "nan", "inf"], "max_tokens": ["0"], "num_problems": ["0", "x"],
        "seed": ["x"]}.items() for v in values],
    ("eval", "task", "poetry", r"--task poetry: expected arithmetic, dataset:SPEC or "),
    ("eval", "base_url", "http://tinker.example:1", r"--base_url: .*not on this machine"),
]

TASK = ["--task", "dataset:{d}/qa.jsonl", "--heldout_fraction", "0.5"]
TASK_CASES = [  # (script, argv, regex): --task and its flags, in train_rl.py and evaluate.py
    *[(script, argv, regex) for script in ("rl", "eval") for argv, regex in [
        (["--task", "poetry"], r"--task poetry: expected arithmetic, dataset:SPEC or "),
        (["--task", "dataset:"], r"--task dataset:: expected arithmetic"),
        (["--task", "reasoning_gym:"], r"--task reasoning_gym:: expected arithmetic"),
        (["--task", "arithmetic:x"], r"--task arithmetic:x: expected arithmetic"),
        (["--task", "reasoning_gym:chainsum"], r"no such reasoning-gym dataset; did you mean "
                                               r"chain_sum"),
        (["--task", "reasoning_gym:zzzz"], r"no such reasoning-gym dataset \(see"),
        (["--task", "reasoning_gym:chain_sum", "--task_config", "{"], r"--task_config: not valid"),
        (["--task", "reasoning_gym:chain_sum", "--task_config", "[1]"],
         r"--task_config: expected a JSON object"),
        (["--task", "reasoning_gym:chain_sum", "--task_config", '{"bogus": 1}'],
         r"reasoning_gym:chain_sum refused it"),
        (["--task", "reasoning_gym:chain_sum", "--task_config", '{"min_terms": -3}'],
         r"reasoning_gym:chain_sum refused it"),
        (["--task_config", "{}"], r"--task_config: only for --task reasoning_gym"),
        (["--task", "dataset:{d}/missing.jsonl"], r"dataset:.*missing.jsonl: no such file"),
        (["--task", "dataset:{d}/empty.jsonl"], r"empty.jsonl: the file is empty"),
        (["--task", "dataset:{d}/notes.txt"], r"unsupported file type '.txt'"),
        (["--task", "dataset:{d}/truncated.jsonl"], r"truncated.jsonl line 2: not valid JSON"),
        (["--task", "dataset:{d}/bad.csv"], r"bad.csv line 3: 1 fields"),
        (["--task", "dataset:{d}/qa_no_answer.jsonl"], r"qa_no_answer.jsonl row 2: no 'answer'"),
        (["--task", "dataset:{d}/qa_blank_answer.jsonl"], r"row 1: no 'answer'"),
        (["--task", "dataset:{d}/qa_bad_messages.jsonl", "--prompt_field", "messages"],
         r"qa_bad_messages.jsonl row 1: 'messages' must be a list of \{role, content\}"),
        ([*TASK, "--prompt_field", "nope"], r"qa.jsonl row 1: no prompt column \(nope"),
        ([*TASK, "--answer_field", "nope"], r"qa.jsonl row 1: no 'nope'"),
        ([*TASK, "--pair_counts", "1"], r"--pair_counts: only for --task arithmetic"),
        ([*TASK, "--large_share", "0.5"], r"--large_share: only for --task arithmetic"),
        ([*TASK, "--system_prompt", "@{d}/missing.txt"], r"--system_prompt @.*: no such file"),
        ([*TASK, "--reward", "loose"], r"--reward loose: expected answer, exact or FILE.py"),
        ([*TASK, "--reward", "{d}/missing.py:f"], r"--reward .*missing.py:f: no such file"),
        ([*TASK, "--reward", "{d}/reward.py"], r"--reward .*reward.py: expected answer, exact"),
        ([*TASK, "--reward", "{d}/reward.py:absent"], r"has no function 'absent'"),
        ([*TASK, "--reward", "{d}/reward.py:not_callable"], r"has no function 'not_callable'"),
        ([*TASK, "--reward", "{d}/reward.py:crash"], r"raised ValueError: no on .*row \d"),
        ([*TASK, "--reward", "{d}/reward.py:nan"], r"returned total=nan, not a finite number"),
        ([*TASK, "--reward", "{d}/reward.py:text"], r"returned total='high', not a number"),
        ([*TASK, "--reward", "{d}/reward.py:parts"], r"returned a dict without 'total'"),
        ([*TASK, "--reward", "{d}/reward.py:flag"], r"returned total=True, not a number"),
        ([*TASK, "--reward", "{d}/broken_reward.py:f"], r"failed to load \(SyntaxError"),
        ([*TASK, "--reward", "{d}/raising_import.py:f"], r"failed to load \(RuntimeError"),
        (["--task", "dataset:{d}/qa_one_row.jsonl"], r"1 row\(s\) leave nothing to train on"
         if script == "rl" else r"1 row\(s\) leave nothing to train on"),
        ([*TASK, "--heldout", "{d}/missing.jsonl"], r"--heldout .*missing.jsonl: no such file"),
        (["--heldout", "{d}/heldout_bad.jsonl"], r"heldout_bad.jsonl row 1: problem .*even count"),
        ([*TASK[:2], "--heldout_fraction", "1.5"], r"--heldout_fraction: must be in \(0, 1\)"),
        ([*TASK[:2], "--heldout_fraction", "0"], r"--heldout_fraction: must be in \(0, 1\)"),
        (["--answer_format", "latex"], r"--answer_format: invalid choice: 'latex'"),
    ]],
]
# A flag that takes a value, given none (it used to mean its default, silently), or given ''.
NO_VALUE = [("sft", f) for f in ("lr", "learning_rate", "max_steps", "model", "base_url",
                                  "log_dir", "load_checkpoint", "seed", "dataset", "batch_size",
                                  "run_name", "wandb_project", "threads")] + \
    [("rl", f) for f in ("lr", "concise_bonus_after", "task", "reward", "system_prompt",
                          "heldout", "task_config", "max_steps", "log_dir", "group_size")] + \
    [("eval", f) for f in ("checkpoint", "task", "num_problems", "heldout", "log_dir", "model")]
EXTREMES = [
    ("sft", ["--seed", str(2**70)], r"--seed: must be in \[0, 2\*\*63\)"),
    ("sft", ["--seed=-1"], r"--seed: must be in \[0, 2\*\*63\)"),
    ("rl", ["--seed", str(2**64)], r"--seed: must be in"),
    ("eval", ["--seed", str(2**63)], r"--seed: must be in"),
    ("sft", ["--lr", "1e39"], r"--lr: must be a positive number <= 1e\+30, got 1e\+39"),
    ("rl", ["--lr", "1e31"], r"--lr: must be a positive number <= 1e\+30"),
    ("sft", ["--threads", "0"], r"--threads: must be >= 1"),
    ("sft", ["--log_dir", ""], r"--log_dir: expected a value"),
    ("sft", ["--log_dir="], r"--log_dir: expected a value"),
    ("rl", ["--log_dir", "{d}/ok.jsonl"], r"--log_dir .*ok.jsonl: is a file, not a directory"),
    ("sft", ["--log_dir", "{d}"], r"--log_dir .*: not a run directory"),
    ("eval", ["--log_dir", "{sft}"], r"holds a train_sft run; evaluate writes its own"),
    ("eval", ["--log_dir", "{rl}"], r"holds a train_rl run; evaluate writes its own"),
    ("rl", ["--log_dir", "{sft}"], r"holds a train_sft run; train_rl writes its own"),
    ("sft", ["--log_dir", "{rl}"], r"holds a train_rl run; train_sft writes its own"),
    ("sft", ["--max_steps", "1e3"], r"--max_steps.*invalid int value"),
    ("rl", ["--max_tokens", "99999999999999999999"],
     r"--max_tokens 99999999999999999999 .*: the service refused .*exceeds the context"),
]

ARGV_CASES = [  # whole command lines
    ("sft", ["--learning_rat", "1e-4"], r"unrecognized arguments: --learning_rat"),
    ("sft", ["--batch", "4"], r"unrecognized arguments: --batch 4"),
    ("sft", ["--max_step", "4"], r"unrecognized arguments: --max_step 4"),
    ("sft", ["--bogus"], r"unrecognized arguments: --bogus"),
    ("sft", ["stray"], r"unrecognized arguments: stray"),
    ("sft", ["--batch_size"], r"--batch_size: expected a value"),
    ("sft", ["--batch_size", ""], r"--batch_size: expected a value"),
    ("sft", ["--lr", "-1e-4"], r"--lr: must be a positive number <= 1e\+30, got -0.0001"),
    ("sft", ["--config_path"], r"--config_path: expected a YAML file"),
    ("sft", ["--config_path", "{d}/missing.yaml"], r"--config_path: no such file .*missing.yaml"),
    ("sft", ["--resume", "--log_dir", "{new}"], r"--resume: no run in .* to continue"),
    ("sft", ["--dataset", "{d}/ok.jsonl", "--batch_size", "5"],
     r"--batch_size: 5 is more than the 2 training rows"),
    ("sft", ["--dataset", "{d}/ok.jsonl", "--max_length", "8"], r"ok.jsonl row 1: .*max_length"),
    ("sft", ["--dataset", "{d}/last_user.jsonl", "--skip_invalid"],
     r"last_user.jsonl: every row is invalid"),
    ("rl", ["--learning_rat", "1e-4"], r"unrecognized arguments: --learning_rat"),
    ("rl", ["--group", "4"], r"unrecognized arguments: --group 4"),
    ("rl", ["--resume", "--log_dir", "{new}"], r"--resume: no run in"),
    ("eval", ["--lr", "1"], r"unrecognized arguments: --lr 1"),
    ("eval", ["--checkpoint", "/no/such/dir"], r"--checkpoint /no/such/dir: neither"),
    ("eval", ["--checkpoint", "{d}"], r"--checkpoint .*: no checkpoints.jsonl"),
    ("eval", ["--checkpoint", "{sft}", "--model", "tiny-math"],
     r"--model: tiny-math is not the base model of .*tiny-instruct"),
    ("eval", ["--compare", "{sft}"], r"unrecognized arguments: --compare"),
    ("eval", ["--nobase_model"], r"--base_model: nothing to score"),
    ("compare", ["{sft}", "--keys", "train/los"],
     r"--keys: \['train/los'\] logged by none of the runs"),
    ("compare", ["/no/such/run"], r"/no/such/run: no metrics.jsonl"),
    ("eval", ["--heldout", "{d}/missing.jsonl"], r"--heldout .*missing.jsonl: no such file"),
    ("eval", ["--task", "chat", "--dataset", "{d}/messages_str.jsonl"],
     r"messages_str.jsonl row 1: 'messages' must be a list"),
    ("eval", ["--task", "chat", "--dataset", "{d}/empty.jsonl"], r"empty.jsonl: the file is empty"),
]

CONFIG_FILES = [  # (script, YAML text or bytes, regex)
    ("sft", "batch_size: 2.7\n", r"\.yaml: batch_size: expected a whole number, got 2.7"),
    ("sft", "batch_size: '4'\n", r"\.yaml: batch_size: expected a whole number, got '4'"),
    ("sft", "max_steps: true\n", r"\.yaml: max_steps: expected a whole number, got True"),
    ("sft", "wandb_mode: bogus\n", r"\.yaml: wandb_mode: 'bogus' is not one of"),
    ("sft", "lr_schedule: step\n", r"\.yaml: lr_schedule: 'step' is not one of"),
    ("sft", "lr: abc\n", r"\.yaml: lr: expected a number, got 'abc'"),
    ("sft", "lr: [1, 2]\n", r"\.yaml: lr: expected a number"),
    ("sft", "lr: .nan\n", r"--lr: must be a positive number <= 1e\+30, got nan"),
    ("sft", "temperature: .inf\n", r"--temperature: must be a number >= 0, got inf"),
    ("sft", "skip_invalid: 'yes'\n", r"\.yaml: skip_invalid: expected true or false"),
    ("sft", "dry_run: 1\n", r"\.yaml: dry_run: expected true or false, got 1"),
    ("sft", "dataset: [a, b]\n", r"\.yaml: dataset: expected text"),
    ("sft", "dataset: {x: 1}\n", r"\.yaml: dataset: expected text"),
    ("sft", "batch_size: null\n", r"\.yaml: batch_size: expected a whole number, got None"),
    ("sft", "epochs: 0\n", r"--epochs: must be >= 1"),
    ("sft", "", r"\.yaml: the file is empty"),
    ("sft", "# only a comment\n", r"\.yaml: the file is empty"),
    ("sft", "- lr\n- batch_size\n", r"\.yaml: expected a mapping .* got list"),
    ("sft", "just some text\n", r"\.yaml: expected a mapping .* got str"),
    ("sft", "batchsize: 4\n", r"\.yaml: unknown keys \['batchsize'\]"),
    ("sft", "lr: [1,\n", r"\.yaml: not valid YAML"),
    ("sft", "lr: 1\n\tbatch_size: 2\n", r"\.yaml: not valid YAML"),
    ("sft", b"lr: 1.0e-4\nrun_name: caf\xe9\n", r"\.yaml: not UTF-8 text"),
    ("sft", "max_steps: 3\nmax_steps: x\n", r"\.yaml: max_steps: expected a whole number"),
    ("rl", "group_size: 1.5\n", r"\.yaml: group_size: expected a whole number"),
    ("rl", "loss_fn: reinforce\n", r"\.yaml: loss_fn: 'reinforce' is not one of"),
    ("rl", "max_steps: null\n", r"\.yaml: max_steps: expected a whole number, got None"),
    ("rl", "concise_needs_answer: no_thanks\n", r"\.yaml: concise_needs_answer: expected true"),
    ("rl", "temperature: -0.5\n", r"--temperature: must be a number > 0"),
    ("rl", "pair_counts: [1, 2]\n", r"\.yaml: pair_counts: expected text"),
    ("eval", "checkpoint: 5\n", r"--checkpoint 5: neither"),
    ("eval", "task: poetry\n", r"--task poetry: expected arithmetic"),
    ("compare", "keys: {a: 1}\n", r"\.yaml: keys: expected text"),
    ("eval", "num_problems: 1.5\n", r"\.yaml: num_problems: expected a whole number"),
]

# Continuing a finished run with flags that change what the run is: refused, listed.
CHANGED_FLAGS = [
    ("sft", ["--lora_rank", "4"], r"--lora_rank 4 \(the run has 8\)"),
    ("sft", ["--batch_size", "4"], r"--batch_size 4 \(the run has 8\)"),
    ("sft", ["--seed", "1"], r"--seed 1 \(the run has 0\)"),
    ("sft", ["--lr", "1e-3"], r"--lr 0.001 \(the run has 0.002\)"),
    ("sft", ["--model", "tiny-math"], r"--model tiny-math \(the run has tiny-instruct\)"),
    ("sft", ["--dataset", "arithmetic-solutions"], r"--dataset arithmetic-solutions \(the run"),
    ("sft", ["--eval_fraction", "0.2"], r"--eval_fraction 0.2 \(the run has 0.1\)"),
    ("sft", ["--max_length", "512"], r"--max_length 512 \(the run has 2048\)"),
    ("sft", ["--lr_schedule", "cosine"], r"--lr_schedule cosine \(the run has constant\)"),
    ("sft", ["--lora_rank", "4", "--seed", "3"], r"--lora_rank 4 .*; --seed 3 \(the run has 0\)"),
    ("rl", ["--loss_fn", "ppo"], r"--loss_fn ppo \(the run has importance_sampling\)"),
    ("rl", ["--group_size", "4"], r"--group_size 4 \(the run has 2\)"),
    ("rl", ["--advantage", "batch"], r"--advantage batch \(the run has group\)"),
    ("rl", ["--pair_counts", "1"], r"--pair_counts 1 \(the run has 1,2,3\)"),
    ("rl", ["--temperature", "1.0"], r"--temperature 1.0 \(the run has 0.8\)"),
    ("rl", ["--max_tokens", "16"], r"--max_tokens 16 \(the run has 8\)"),
    ("rl", ["--concise_bonus_after", "2"], r"--concise_bonus_after 2 \(the run has 6\)"),
]


def damage_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = text
    path.write_text("".join(lines))


RUN_DAMAGE = [  # (script, how the run dir copy is damaged, extra argv, regex)
    ("sft", lambda r: damage_line(r / "metrics.jsonl", 1, "{garbled\n"), [],
     r"metrics.jsonl line 1: damaged"),
    ("sft", lambda r: damage_line(r / "checkpoints.jsonl", 1, "step 1 saved\n"), [],
     r"checkpoints.jsonl line 1: damaged"),
    ("sft", lambda r: damage_line(r / "checkpoints.jsonl", 2, "[1, 2]\n"), [],
     r"checkpoints.jsonl line 2: damaged"),
    ("sft", lambda r: (r / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n'), [],
     r"metrics.jsonl: damaged, not UTF-8"),
    ("sft", lambda r: (r / "config.yaml").write_text("model: [tiny\n"), [],
     r"config.yaml: damaged, not the YAML"),
    ("sft", lambda r: (r / "config.yaml").write_text("- just\n- a list\n"), [],
     r"config.yaml: damaged, expected a mapping"),
    ("rl", lambda r: damage_line(r / "metrics.jsonl", 1, "\x00\x00\x00\n"), [],
     r"metrics.jsonl line 1: damaged"),
    ("rl", lambda r: (r / "config.yaml").write_text("{{{{"), [], r"config.yaml: damaged"),
    ("eval", lambda r: (r / "config.yaml").write_text("model: [tiny\n"), ["--checkpoint"],
     r"config.yaml: damaged"),
    ("eval", lambda r: damage_line(r / "checkpoints.jsonl", 1, "oops\n"), ["--checkpoint"],
     r"checkpoints.jsonl line 1: damaged"),
    ("compare", lambda r: damage_line(r / "metrics.jsonl", 1, "oops\n"), [],
     r"metrics.jsonl line 1: damaged"),
    # Records that parse but are not what a run writes, and directories where files belong.
    *[(script, damage, [], regex) for script in ("sft", "rl") for damage, regex in [
        (lambda r: damage_line(r / "checkpoints.jsonl", 2, '{"step": 1, "name": "000001", '
                               '"path": "tinker://x/weights/000001"}\n'),
         r"checkpoints.jsonl record 2: damaged, not a checkpoint record"),
        (lambda r: damage_line(r / "checkpoints.jsonl", 1, '{"step": 1, "kind": "weights", '
                               '"name": "a", "path": "p"}\n'), r"checkpoints.jsonl record 1"),
        (lambda r: damage_line(r / "checkpoints.jsonl", 1, '{"step": "1", "kind": "state", '
                               '"name": "a", "path": "p"}\n'),
         r"checkpoints.jsonl line 1: damaged, its step is '1'"),
        (lambda r: damage_line(r / "metrics.jsonl", 1, '{"step": 1.5}\n'),
         r"metrics.jsonl line 1: damaged, its step is 1.5"),
        (lambda r: damage_line(r / "metrics.jsonl", 1, '{"step": -1}\n'),
         r"metrics.jsonl line 1: damaged, its step is -1"),
        (lambda r: damage_line(r / "metrics.jsonl", 1, '{"loss": 1}\n'),
         r"metrics.jsonl line 1: damaged, its step is None"),
        (lambda r: ((r / "metrics.jsonl").unlink(), (r / "metrics.jsonl").mkdir()),
         r"metrics.jsonl: damaged, a directory where the run keeps a file"),
        (lambda r: ((r / "checkpoints.jsonl").unlink(), (r / "checkpoints.jsonl").mkdir()),
         r"checkpoints.jsonl: damaged, a directory"),
        (lambda r: ((r / "config.yaml").unlink(), (r / "config.yaml").mkdir()),
         r"config.yaml: damaged, a directory"),
        (lambda r: ((r / "summary.json").unlink(), (r / "summary.json").mkdir()),
         r"summary.json: damaged, a directory"),
        (lambda r: (r / "metrics.jsonl").unlink(),
         r"metrics.jsonl lacks steps \[1"),
        (lambda r: damage_line(r / "metrics.jsonl", 1, '{"step": 7, "train/loss": 1}\n'),
         r"metrics.jsonl lacks steps \[1\]"),
        (lambda r: (r / "config.yaml").write_text(
            (r / "config.yaml").read_text().replace("script: train_", "script: evaluate_")),
         r"holds a evaluate_\w+ run"),
    ]],
]


def all_cases() -> list[tuple[str, str, list[str], str, object]]:
    """(id, script, argv, regex, damage) for every case."""
    cases = []
    for name, regex in DATA_CASES:
        cases.append((f"data-{name}", "sft", ["--dataset", f"{{d}}/{name}"], regex, None))
    for name in ("empty.jsonl", "list_row.jsonl", "bad.csv", "messages_str.jsonl"):
        regex = dict(DATA_CASES)[name]
        cases.append((f"evaldata-{name}", "eval", ["--task", "chat", "--dataset",
                                                   f"{{d}}/{name}"], regex, None))
    for script, flag, value, regex in FLAG_CASES:
        cases.append((f"flag-{script}-{flag}={value}", script, [f"--{flag}", value], regex, None))
    for i, (script, argv, regex) in enumerate(ARGV_CASES):
        cases.append((f"argv-{script}-{i}-{'_'.join(argv)[:30]}", script, argv, regex, None))
    for i, (script, argv, regex) in enumerate(TASK_CASES):
        cases.append((f"task-{script}-{i}-{'_'.join(argv)[-30:]}", script, argv, regex, None))
    for script, flag in NO_VALUE:
        cases.append((f"novalue-{script}-{flag}", script, [f"--{flag}"],
                      rf"--{flag}: expected a value", None))
    for i, (script, argv, regex) in enumerate(EXTREMES):
        cases.append((f"extreme-{script}-{i}", script, ["@asis", *argv], regex, None))
    for i, (script, _text, regex) in enumerate(CONFIG_FILES):
        cases.append((f"config-{script}-{i}", script, ["--config_path", f"{{d}}/config{i}.yaml"],
                      regex, None))
    for script, argv, regex in CHANGED_FLAGS:
        run = "{sft}" if script == "sft" else "{rl}"
        cases.append((f"changed-{script}-{'_'.join(argv)}", script,
                      ["@run", "--log_dir", run, *argv], regex, None))
    for i, (script, damage, argv, regex) in enumerate(RUN_DAMAGE):
        cases.append((f"damage-{script}-{i}", script, ["@damaged", *argv], regex, damage))
    return cases


CASES = all_cases()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Bad files, and one finished SFT run and one finished RL run to rerun and damage."""
    base = tmp_path_factory.mktemp("bad_inputs")
    d = base / "files"
    d.mkdir()
    for name, content in DATA_FILES.items():
        path = d / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    (d / "ok.jsonl").write_text(jsonl(GOOD_ROW, GOOD_ROW))
    for i, (_, text, _) in enumerate(CONFIG_FILES):
        path = d / f"config{i}.yaml"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    sft, rl = base / "sft-run", base / "rl-run"
    assert run_main(train_sft.main, train_sft.Config, [*SFT_RUN, "--log_dir", str(sft)]) == 0
    assert run_main(train_rl.main, train_rl.Config, [*RL_RUN, "--log_dir", str(rl)]) == 0
    return {"d": d, "sft": sft, "rl": rl, "base": base}


def snapshot(*dirs: Path) -> dict[str, str]:
    """Every file's hash (the lock file aside: taking the lock writes the holder's PID)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file() and p.name != ".lock"}


def assert_one_error_line(rc: int, out: str, err: str, regex: str) -> str:
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err, err
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(regex, lines[0]), (regex, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(case, world, tmp_path, capsys):
    case_id, script, argv, regex, damage = case
    module = SCRIPTS[script]
    target = None
    if script == "eval":
        base = ["--backend", "local", "--wandb_mode", "disabled", "--log_dir",
                str(tmp_path / "eval"), "--num_problems", "2", "--max_tokens", "4"]
    elif script == "compare":
        base = ["--out_dir", str(tmp_path / "compare")]
    else:
        base = [*(SFT_RUN if script == "sft" else RL_RUN), "--log_dir"]
    if argv and argv[0] == "@damaged":  # a copy of a finished run, damaged
        target = tmp_path / "damaged"
        shutil.copytree(world["rl"] if script == "rl" else world["sft"], target)
        damage(target)
        argv = [*base, *argv[1:], str(target)]
    elif argv and argv[0] == "@run":  # the finished run itself, with changed flags
        argv = [*base, *argv[2:]]
    elif argv and argv[0] == "@asis":  # a case that names its own --log_dir, or none
        argv = [*(base[:-1] if script in ("sft", "rl") else base), *argv[1:]]
    elif script in ("eval", "compare"):
        argv = [*base, *argv]
    else:
        argv = [*base, str(tmp_path / "new"), *argv]
    values = {"d": str(world["d"]), "sft": str(world["sft"]), "rl": str(world["rl"]),
              "new": str(tmp_path / "new")}
    for key, value in values.items():
        argv = [a.replace(f"{{{key}}}", value) for a in argv]
    watched = [world["sft"], world["rl"], *([target] if target else [])]
    before = snapshot(*watched)
    capsys.readouterr()
    rc = run_main(module.main, module.Config, argv)
    out, err = capsys.readouterr()
    assert_one_error_line(rc, out, err, regex)
    assert snapshot(*watched) == before, "a failed start changed a saved run"



def test_real_processes_print_one_error_line(tmp_path):
    """The same entry point as `python train_sft.py ...`, for a handful of cases at once."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": "hello"}\n')
    config = tmp_path / "c.yaml"
    config.write_text("batch_size: 2.7\n")
    commands = [
        (["train_sft.py", "--learning_rat", "1e-4"], r"unrecognized arguments: --learning_rat"),
        (["train_sft.py", "--dataset", str(bad), "--log_dir", str(tmp_path / "a")],
         r"bad.jsonl row 1: 'messages' must be a list"),
        (["train_rl.py", "--config_path", str(config)], r"batch_size: expected a whole number"),
        (["train_rl.py", "--lora_rank", "100000", "--log_dir", str(tmp_path / "b")],
         r"--lora_rank: must be in \[1, 1024\], got 100000"),
        (["evaluate.py", "--temperature", "nan"], r"--temperature: must be a number >= 0"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = [(subprocess.Popen([sys.executable, str(ROOT / cmd[0]), *cmd[1:], "--backend",
                                  "local", "--wandb_mode", "disabled"], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), regex)
               for cmd, regex in commands]
    for process, regex in started:
        out, err = process.communicate(timeout=600)  # a hang guard only
        assert_one_error_line(process.returncode, out, err, regex)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_an_unknown_error_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_KEY", "svc-secret-0123456789")

    def main(cfg):
        raise RuntimeError(f"bug near {os.environ['MY_SERVICE_KEY']}")

    assert run_main(main, train_sft.Config, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: bug near ***" in err
    assert "svc-secret" not in err


# ---------------------------------------------------------------------------------------------
# `python -m local_tinker serve`: the fifth entry point, through its own main.

SERVE_CASES = [  # (flags, regex)
    (["--port", "70000"], r"--port"), (["--port", "-1"], r"--port"),
    (["--port", "http"], r"--port"),
    (["--fault_rate", "2"], r"--fault_rate"), (["--fault_rate", "-0.1"], r"--fault_rate"),
    (["--fault_rate", "nan"], r"--fault_rate"), (["--fault_rate", "often"], r"--fault_rate"),
    (["--latency_s", "nan"], r"--latency_s"), (["--latency_s", "inf"], r"--latency_s"),
    (["--latency_s", "-1"], r"--latency_s"), (["--latency_s", "1e400"], r"--latency_s"),
    (["--root", "{d}/ok.jsonl"], r"--root"), (["--root", "{d}/ok.jsonl/sub"], r"--root"),
    (["--device", "cuda:7"], r"--device cuda:7"), (["--device", "tpu9"], r"--device"),
    (["--model", "no-such/model"], r"--model"), (["--model", "{d}"], r"--model"),
    (["--host", "0.0.0.0"], r"--host"), (["--host", "256.0.0.1"], r"256.0.0.1"),
    (["--api_key", "tml-short"], r"--api_key"), (["--api_key", "no-prefix-but-long-enough"],
                                                 r"--api_key"),
    (["--api_key", "tml-local-backend-placeholder"], r"--api_key"), (["--bogus"], r"--bogus"),
    (["--port"], r"--port"), (["--root"], r"--root"),
]


@pytest.mark.parametrize("flags, regex", SERVE_CASES, ids=lambda c: str(c)[:40])
def test_bad_serve_settings_are_one_clear_error(flags, regex, world, capsys, monkeypatch):
    from local_tinker import __main__ as serve_command
    from local_tinker import server

    def never(*args, **kwargs):
        raise AssertionError(f"{flags} was accepted: the server would have started")

    monkeypatch.setattr(server, "serve_forever", never)
    monkeypatch.delenv("LOCAL_TINKER_API_KEY", raising=False)
    monkeypatch.delenv("LOCAL_TINKER_DEVICE", raising=False)
    argv = ["serve", "--port", "0", *[a.replace("{d}", str(world["d"])) for a in flags]]
    try:
        rc = serve_command.main(argv)
    except SystemExit as ended:
        rc = int(ended.code or 0)
    out, err = capsys.readouterr()
    assert_one_error_line(rc, out, err, regex)


# ---------------------------------------------------------------------------------------------
# `python sweeps/run_offline.py`: the sweep runner, through its own main.

SWEEP_YAMLS = {  # name -> YAML text
    "not_yaml.yaml": "method: [grid\n",
    "a_list.yaml": "- grid\n",
    "bad_method.yaml": "program: train_sft.py\nmethod: nope\nparameters:\n  lr: {value: 0.1}\n",
    "runner_flag.yaml": "program: train_sft.py\nmethod: grid\nparameters:\n  log_dir: {value: x}\n",
    "no_program.yaml": "program: nope.py\nmethod: grid\nparameters:\n  lr: {value: 0.1}\n",
    "bad_macro.yaml": "program: train_sft.py\nmethod: grid\ncommand: ['${bogus}']\n"
                      "parameters:\n  lr: {value: 0.1}\n",
    "no_parameters.yaml": "program: train_sft.py\nmethod: grid\n",
    "bad_goal.yaml": "program: train_sft.py\nmethod: grid\nmetric: {name: eval/loss, goal: up}\n"
                     "parameters:\n  lr: {values: [0.1]}\n",
    "bayes.yaml": "program: train_sft.py\nmethod: bayes\nmetric: {name: eval/loss, goal: minimize}"
                  "\nparameters:\n  lr: {min: 0.001, max: 0.1}\n",
}
SWEEP_CASES = [  # (argv, regex); `{s}` is the directory of the YAMLs above
    (["{s}/missing.yaml"], r"missing.yaml: cannot read the sweep YAML"),
    (["{s}/not_yaml.yaml"], r"not_yaml.yaml: cannot read the sweep YAML"),
    (["{s}/a_list.yaml"], r"a_list.yaml: expected a mapping"),
    (["{s}/bad_method.yaml"], r"bad_method.yaml: not a valid sweep config: .*nope"),
    (["{s}/runner_flag.yaml"], r"parameters \['log_dir'\] are set by the runner"),
    (["{s}/no_program.yaml"], r"program 'nope.py' is not a file"),
    (["{s}/bad_macro.yaml"], r"command macros \['\$\{bogus\}'\] are not supported"),
    (["{s}/no_parameters.yaml"], r"no_parameters.yaml: not a valid sweep config"),
    (["{s}/bad_goal.yaml"], r"bad_goal.yaml: not a valid sweep config"),
    (["{s}/bayes.yaml"], r"--count is required for method bayes"),
    (["sweeps/sft_lr.yaml", "--parallel", "0"], r"--parallel and --count must be >= 1"),
    (["sweeps/sft_lr.yaml", "--count", "0"], r"--parallel and --count must be >= 1"),
    (["sweeps/sft_lr.yaml", "--parallel", "two"], r"--parallel: invalid int value"),
    (["sweeps/sft_lr.yaml", "--wandb_mode", "bogus"], r"--wandb_mode: invalid choice"),
    (["sweeps/sft_lr.yaml", "--bogus"], r"unrecognized arguments: --bogus"),
    (["sweeps/sft_lr.yaml", "--paral", "2"], r"unrecognized arguments: --paral"),
    (["sweeps/sft_lr.yaml", "--poll"], r"--poll: expected one argument"),
    ([], r"the following arguments are required: sweep"),
]


@pytest.fixture(scope="module")
def sweep_runner(tmp_path_factory):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_offline", ROOT / "sweeps/run_offline.py")
    module = sys.modules["run_offline"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yamls = tmp_path_factory.mktemp("sweep_yamls")
    for name, text in SWEEP_YAMLS.items():
        (yamls / name).write_text(text)
    return module, yamls


@pytest.mark.parametrize("argv, regex", SWEEP_CASES, ids=lambda c: str(c)[:40])
def test_bad_sweep_runner_input_is_one_clear_error(argv, regex, sweep_runner, tmp_path, capsys,
                                                   monkeypatch):
    module, yamls = sweep_runner
    monkeypatch.chdir(ROOT)
    argv = [a.replace("{s}", str(yamls)) for a in argv]
    rc = module.main([*argv, "--out", str(tmp_path / "out")] if argv else argv)
    out, err = capsys.readouterr()
    assert_one_error_line(rc, out, err, regex)
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_the_readme_table_counts_these_cases():
    counted = len(CASES) + len(SERVE_CASES) + len(SWEEP_CASES)
    assert counted >= 300
    readme = (ROOT / "README.md").read_text()
    assert f"({counted} cases;" in readme, "update the README's bad-input table"
