"""Datasets through Hugging Face `datasets`, with errors that name the file and the row.

A SPEC is a local file (.jsonl / .json / .csv / .parquet) or a hub dataset `org/name` or
`org/name:config`; `load_rows` returns its rows as dicts, numbered from 1 in every error, as a
person counts lines. CSV cells stay text (no "007" -> 7.0). Where `datasets` cannot read a text
file (a broken JSON line, a ragged CSV row), the file is scanned to name the line.

SFT rows (`load_chat_data`) hold a `messages` list of {role, content}, or `prompt` and
`completion` (the prompt a string or a messages list); shipped names: `foo` (the seed's 20
questions answered "foo") and `arithmetic-solutions[:PAIR_COUNTS]` (generated worked solutions
of the RL task, common/arithmetic.py). RL rows are read by common/tasks.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.arithmetic import Difficulty, solutions_dataset

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED = {"foo": DATA_DIR / "foo.jsonl"}
GENERATED = "arithmetic-solutions"
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROLES = ("system", "user", "assistant", "tool")
Conversation = list[dict[str, str]]


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the flag, source and, for rows, the row."""


def is_file_spec(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in FILE_FORMATS or path.exists()


def load_rows(spec: str, split: str = "train", where: str | None = None) -> list[dict[str, Any]]:
    """The rows of a local file or a hub dataset's `split` (see the module docstring); errors
    start with `where` (default: "--dataset SPEC")."""
    where = where or f"--dataset {spec}"
    if is_file_spec(spec):
        path = Path(spec)
        if not path.is_file():
            raise DatasetError(f"{where}: no such file")
        if path.suffix not in FILE_FORMATS:
            raise DatasetError(f"{where}: unsupported file type {path.suffix!r}; use one of "
                               f"{sorted(FILE_FORMATS)}")
        if path.suffix != ".parquet" and not _check_text(where, path):
            raise DatasetError(f"{where}: the dataset has no rows")
        rows = _load(where, FILE_FORMATS[path.suffix], dict(data_files=str(path)), "train",
                     path)
    elif "/" in spec:
        name, _, config = spec.partition(":")
        rows = _load(where, name, dict(name=config or None), split, None)
    else:
        raise DatasetError(f"{where}: not a file (.jsonl, .json, .csv, .parquet) or a hub "
                           "dataset org/name[:config]")
    if not rows:
        raise DatasetError(f"{where}: the dataset has no rows")
    return rows


def _load(where: str, builder: str, kwargs: dict[str, Any], split: str, path: Path | None
          ) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()  # one bar per load, and a log line for every failure
    logging.getLogger("datasets").setLevel(logging.CRITICAL)
    if builder == "csv" and path is not None:  # every column as text, empty cells included
        header = next(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))), [])
        kwargs.update(na_filter=False, features=datasets.Features(
            {name: datasets.Value("string") for name in header}))
    try:
        return datasets.load_dataset(builder, split=split, **kwargs).to_list()
    except Exception as exc:  # datasets' errors are long: keep the cause, name the input
        while exc.__cause__ is not None and "error occurred while generating" in str(exc):
            exc = exc.__cause__
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DatasetError(f"{where}: could not load ({type(exc).__name__}: {first_line})"
                           ) from None


def _check_text(where: str, path: Path) -> int:
    """Rows in a text data file, after checking every line: `datasets` reads a ragged CSV row or
    a JSON array of strings without complaint, and names no line when it does complain."""
    data = path.read_bytes()
    if not data.strip():
        raise DatasetError(f"{where}: the file is empty")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DatasetError(f"{where}: the file is UTF-16; save it as UTF-8")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{where} line {line}: not UTF-8 text (byte {exc.start}); save the "
                           "file as UTF-8") from None
    text = data.decode("utf-8-sig")
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows = 0
        try:
            width = len(next(reader))
            for row in reader:
                if row and len(row) != width:
                    raise DatasetError(f"{where} line {reader.line_num}: {len(row)} fields, the "
                                       f"header has {width}")
                rows += bool(row)
        except csv.Error as exc:
            raise DatasetError(f"{where} line {reader.line_num}: not valid CSV ({exc})") from None
        return rows
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where} line {number}: not valid JSON ({exc.msg} at "
                                       f"column {exc.colno}); one JSON object per line") from None
    for number, row in numbered:
        if not isinstance(row, dict):
            raise DatasetError(f"{where} {'item' if text.lstrip().startswith('[') else 'line'} "
                               f"{number}: expected a JSON object, got {type(row).__name__}")
    return len(numbered)


def file_fingerprint(spec: str | None) -> str | None:
    """sha256 of a local data file (None for hub datasets and shipped generators): a rerun of
    a run directory refuses a file that changed under the same path."""
    if spec is None or not Path(spec).is_file():
        return None
    return hashlib.sha256(Path(spec).read_bytes()).hexdigest()[:16]


@dataclass
class ChatData:
    source: str
    conversations: list[Conversation]
    skipped: int  # invalid rows dropped under --skip_invalid


def load_chat_data(spec: str, split: str = "train", skip_invalid: bool = False,
                   seed: int = 0, size: int = 2000) -> ChatData:
    """Validated SFT conversations. `seed`/`size` only shape the generated dataset."""
    name, _, pair_counts = spec.partition(":")
    if name == GENERATED:  # `arithmetic-solutions:1,2`: only one- and two-pair problems
        try:
            counts = tuple(int(p) for p in pair_counts.split(",")) if pair_counts else (1, 2, 3)
            rows: list[dict[str, Any]] = solutions_dataset(size, seed, Difficulty(counts))
        except ValueError as exc:
            raise DatasetError(f"--dataset {spec}: {exc}") from None
    else:
        rows = load_rows(str(SHIPPED.get(spec, spec)), split, f"--dataset {spec}")
    conversations, skipped = [], 0
    for number, row in enumerate(rows, start=1):
        try:
            conversations.append(row_to_conversation(row))
        except ValueError as exc:
            if not skip_invalid:
                raise DatasetError(f"--dataset {spec} row {number}: {exc} (pass --skip_invalid "
                                   "to drop such rows)") from None
            skipped += 1
    if not conversations:
        raise DatasetError(f"--dataset {spec}: every row is invalid")
    return ChatData(spec, conversations, skipped)


def as_messages(value: Any, what: str) -> Conversation:
    """A list of {role, content} text messages, checked; ValueError names `what` is wrong."""
    if isinstance(value, list) and not value:
        raise ValueError(f"'{what}' is empty")
    if not isinstance(value, list):
        raise ValueError(f"'{what}' must be a list of {{role, content}} objects, got "
                         f"{type(value).__name__} {str(value)[:40]!r}")
    for turn, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {turn} is not a {{role, content}} object")
        if message.get("role") not in ROLES:
            raise ValueError(f"message {turn} has unknown role {message.get('role')!r}; "
                             f"expected one of {list(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {turn} has no text content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def row_to_conversation(row: dict[str, Any]) -> Conversation:
    """One SFT row as a conversation ending in an assistant turn; ValueError says why not."""
    if row.get("messages") is not None:
        messages = as_messages(row["messages"], "messages")
    elif row.get("prompt") is not None and row.get("completion") is not None:
        prompt, completion = row["prompt"], row["completion"]
        if not isinstance(prompt, str | list):
            raise ValueError(f"'prompt' must be text or a list of messages, got "
                             f"{type(prompt).__name__}")
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else as_messages(prompt, "prompt"))
        messages = as_messages([*messages, {"role": "assistant", "content": completion}],
                               "prompt + completion")
    else:
        raise ValueError(f"no 'messages' (or 'prompt' and 'completion') column; has {sorted(row)}")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message is not an assistant turn (nothing to train on)")
    if not messages[-1]["content"].strip():
        raise ValueError("the final assistant turn is empty")
    return messages
