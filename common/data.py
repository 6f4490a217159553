"""Chat datasets through Hugging Face `datasets`, with row validation that names file and row.

`--dataset` accepts:
- a shipped name: `foo` (the seed's 20 questions answered "foo", data/foo.jsonl) or
  `arithmetic-solutions[:PAIR_COUNTS]` (worked solutions of the RL task, generated, deliberately
  imperfect; e.g. `arithmetic-solutions:1,2` for one- and two-pair problems only);
- a local .jsonl / .json / .parquet / .csv file;
- a Hugging Face hub dataset `org/name` or `org/name:config` (cached or downloadable).
Rows hold a `messages` list of {role, content}, or `prompt` and `completion` columns (the prompt a
string or a messages list). Rows are numbered from 1 in errors, as a person counts lines.

`solutions_dataset` generates `arithmetic-solutions`: worked solutions of the RL task, wrong or
wordy on purpose some of the time, used to warm-start a small model with SFT (the seed's Qwen3-4B
needs none) and to make the tiny-instruct model (data/make_tiny_instruct.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.seeding import seeded_rng
from common.tasks import Difficulty, Problem, build_messages, problem_at, work_lines

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED = {"foo": DATA_DIR / "foo.jsonl"}
GENERATED = ("arithmetic-solutions",)
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROLES = ("system", "user", "assistant", "tool")
Conversation = list[dict[str, str]]
WARM_START_STREAM = "arithmetic-sft"
"""The warm-start problems' seed stream (common/seeding.py): not the RL training stream, so SFT
does not pre-teach the problems RL will see, in the same order."""

class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the source and, for rows, the row."""


@dataclass
class ChatData:
    source: str
    conversations: list[Conversation]
    skipped: int  # invalid rows dropped under --skip_invalid


def load_chat_data(spec: str, split: str = "train", skip_invalid: bool = False,
                   seed: int = 0, size: int = 2000) -> ChatData:
    """Load and validate conversations. `seed`/`size` only shape generated datasets."""
    name, _, pair_counts = spec.partition(":")
    if name in GENERATED:
        try:  # `arithmetic-solutions:1,2` restricts the pair counts (default: the task's 1,2,3)
            difficulty = Difficulty(pair_counts=tuple(int(p) for p in pair_counts.split(",")
                                                      if pair_counts) or (1, 2, 3))
        except ValueError as exc:
            raise DatasetError(f"--dataset {spec}: {exc}") from None
        return _validated(spec, solutions_dataset(size, seed, difficulty), skip_invalid)
    rows = _load_rows(spec, split)
    return _validated(spec, rows, skip_invalid)


def _load_rows(spec: str, split: str) -> list[dict[str, Any]]:
    path = SHIPPED.get(spec, Path(spec))
    if path.suffix in FILE_FORMATS or path.exists():
        if not path.is_file():
            raise DatasetError(f"--dataset {spec}: no such file {path}")
        kind = FILE_FORMATS.get(path.suffix)
        if kind is None:
            raise DatasetError(f"--dataset {spec}: unsupported file type {path.suffix!r}; "
                               f"use one of {sorted(FILE_FORMATS)}")
        if path.suffix == ".parquet":
            return _load_with_datasets(spec, "parquet", {"data_files": str(path)}, "train")
        # Text formats are read here, so an error can name the line (datasets' say
        # "An error occurred while generating the dataset").
        text = _read_text(spec, path)
        if path.suffix == ".csv":
            return _csv_rows(spec, text)
        return _json_rows(spec, text, path.suffix)
    if "/" in spec:
        name, _, config = spec.partition(":")
        return _load_with_datasets(spec, name, {"name": config or None}, split)
    raise DatasetError(f"--dataset {spec!r}: not a file, a shipped dataset "
                       f"({', '.join([*SHIPPED, *GENERATED])}) or a hub name org/name")


def _load_with_datasets(spec: str, path: str, kwargs: dict[str, Any], split: str
                        ) -> list[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(path, split=split, **kwargs).to_list()
    except Exception as exc:  # datasets' own errors are long; keep the cause, name the input
        while exc.__cause__ is not None and "error occurred while generating" in str(exc):
            exc = exc.__cause__  # the real reason, not the wrapper
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DatasetError(f"--dataset {spec}: could not load ({type(exc).__name__}: "
                           f"{first_line[:300]})") from None


def _read_text(spec: str, path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise DatasetError(f"--dataset {spec}: the file is empty")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DatasetError(f"--dataset {spec}: the file is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"--dataset {spec} line {line}: not UTF-8 text (byte "
                           f"{exc.start}: {data[exc.start:exc.start + 1]!r}); save the file "
                           "as UTF-8") from None


def _json_rows(spec: str, text: str, suffix: str) -> list[dict[str, Any]]:
    """A JSON Lines file (one object per line), or a .json file holding a list of objects
    (JSON Lines in a .json file are accepted too)."""
    stripped = text.lstrip()
    if suffix == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"--dataset {spec} line {exc.lineno}: not valid JSON "
                               f"({exc.msg})") from None
        numbered = list(enumerate(rows, start=1))
        what = "item"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"--dataset {spec} line {number}: not valid JSON ({exc.msg}"
                                   f" at column {exc.colno}); one JSON object per line") from None
        what = "line"
    for number, row in numbered:
        if not isinstance(row, dict):
            raise DatasetError(f"--dataset {spec} {what} {number}: expected a JSON object "
                               f"with 'messages' (or 'prompt' and 'completion'), got "
                               f"{type(row).__name__}")
    # Rows are numbered 1.. in later errors; blank lines are not rows.
    return [row for _, row in numbered]


def _csv_rows(spec: str, text: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"--dataset {spec} line {reader.line_num}: {len(row)} "
                                   f"fields, the header has {len(header)} ({header})")
            rows.append(dict(zip(header, row, strict=True)))
    except csv.Error as exc:
        raise DatasetError(f"--dataset {spec} line {reader.line_num}: not valid CSV "
                           f"({exc})") from None
    return rows


def _validated(source: str, rows: list[dict[str, Any]], skip_invalid: bool) -> ChatData:
    conversations, skipped = [], 0
    if not rows:
        raise DatasetError(f"{source}: the dataset has no rows")
    for number, row in enumerate(rows, start=1):
        try:
            conversations.append(row_to_conversation(row))
        except ValueError as exc:
            if not skip_invalid:
                raise DatasetError(f"{source} row {number}: {exc} "
                                   "(pass --skip_invalid to drop such rows)") from None
            skipped += 1
    if not conversations:
        raise DatasetError(f"{source}: every row is invalid")
    return ChatData(source, conversations, skipped)


def row_to_conversation(row: dict[str, Any]) -> Conversation:
    """One row as a validated conversation ending in an assistant turn; ValueError says why not."""
    if row.get("messages") is not None:
        messages = row["messages"]
    elif row.get("prompt") is not None and row.get("completion") is not None:
        prompt = row["prompt"]
        if not isinstance(prompt, str | list):
            raise ValueError(f"'prompt' must be text or a list of messages, got "
                             f"{type(prompt).__name__}")
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else list(prompt))
        messages.append({"role": "assistant", "content": row["completion"]})
    else:
        raise ValueError(f"no 'messages' (or 'prompt' and 'completion') column; has {sorted(row)}")
    if not isinstance(messages, list):
        raise ValueError(f"'messages' must be a list of {{role, content}} objects, got "
                         f"{type(messages).__name__} {str(messages)[:40]!r}")
    if not messages:
        raise ValueError("'messages' is empty")
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {turn} is not a {{role, content}} object")
        if message.get("role") not in ROLES:
            raise ValueError(f"message {turn} has unknown role {message.get('role')!r}; "
                             f"expected one of {list(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {turn} has no text content")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message is not an assistant turn (nothing to train on)")
    if not messages[-1]["content"].strip():
        raise ValueError("the final assistant turn is empty")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ---------------------------------------------------------------------------------------
# arithmetic-solutions: the generated warm-start data.

# Verbose worked solutions open the same way every time, as a chatty instruct model's answers
# do: the habit then lives in the first token, where even low-temperature sampling keeps it
# (openers spread over many phrasings would be sharpened away at temperature 0.3, leaving RL
# nothing to fix in an evaluation). What follows is the work checked again and again, the way
# thinking models waffle: every line costs tokens but is arithmetic a small model can write.
_OPENER = "Let me think about this step by step."
_RECHECK = "Let me double check: "


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _slip(value: int, rng: random.Random) -> int:
    """A plausible wrong result: off by one or two, or by ten."""
    delta = rng.choice((-10, -2, -1, 1, 2, 10))
    wrong = value + delta
    # Keep a positive result positive; a negative "sum" of positive numbers is not a slip a
    # model would learn anything useful from.
    return value - delta if value > 0 and wrong <= 0 else wrong


def worked_solution(
    problem: Problem, rng: random.Random, error_rate: float, verbose_rate: float
) -> str:
    """A worked solution in the seed's format, wrong or wordy on purpose some of the time.

    Plain (about 90 characters for three two-digit pairs):
        Add pairs: 3+5=8, 2+4=6
        Multiply: 8×6=48
        <answer>48</answer>
    With probability `error_rate` one step (a pair sum or the product) is off and everything
    after it follows the wrong value, so the final answer is wrong. With probability
    `verbose_rate` a preamble comes first: the same opening sentence, then the work checked
    again line after line (40 words up to about 90). One pair has no Multiply line.
    """
    _check_rate("error_rate", error_rate)
    _check_rate("verbose_rate", verbose_rate)
    sums = list(problem.sums)
    has_product = len(sums) > 1
    wrong_step = None
    if rng.random() < error_rate:
        wrong_step = rng.randrange(len(sums) + has_product)
    if wrong_step is not None and wrong_step < len(sums):
        sums[wrong_step] = _slip(sums[wrong_step], rng)
    result = math.prod(sums)
    if wrong_step is not None and (wrong_step == len(sums) or result == problem.answer):
        # The second case: a zero sum elsewhere (only possible with ranges reaching 0 or below)
        # hides the wrong sum, so the slip moves to the product to keep the answer wrong.
        result = _slip(problem.answer, rng)

    steps = work_lines(problem.numbers, sums, result)
    lines = [*steps, f"<answer>{result}</answer>"]

    if rng.random() < verbose_rate:
        target_words = rng.randint(40, 80)
        work = ", ".join(step.partition(": ")[2] for step in steps)  # "3+5=8, 2+4=6, 8×6=48"
        preamble = [_OPENER]
        while sum(len(s.split()) for s in preamble) < target_words:
            preamble.append(f"{_RECHECK}{work}.")
        lines.insert(0, "\n".join(preamble))
    return "\n".join(lines)


def solutions_dataset(
    n: int,
    seed: int,
    difficulty: Difficulty,
    error_rate: float = 0.3,
    verbose_rate: float = 0.7,
) -> list[dict[str, list[dict[str, str]]]]:
    """`n` SFT rows {"messages": [system, user, assistant]} with imperfect worked solutions.

    The defaults make a warm start like the seed's base model on this task: most answers open
    with a preamble that runs past the seed's 256-token limit (the seed's Qwen3-4B: 27%
    accuracy, 115 words at step 1, "a somewhat easy task, if not for the length cutoff"), and
    30% contain a slip.

    Problems come from their own stream (not the RL training stream for the same seed), and
    row k depends only on (seed, k), so a larger `n` extends a smaller one.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows = []
    for index in range(n):
        problem = problem_at(WARM_START_STREAM, seed, index, difficulty)
        rng = seeded_rng(f"{WARM_START_STREAM}-solution", seed, index)
        answer = worked_solution(problem, rng, error_rate, verbose_rate)
        rows.append(
            {"messages": build_messages(problem) + [{"role": "assistant", "content": answer}]}
        )
    return rows
