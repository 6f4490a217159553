"""Chat datasets through Hugging Face `datasets`, with row validation that names file and row.

`--dataset` accepts:
- a shipped name: `foo` (the seed's 20 questions answered "foo", data/foo.jsonl) or
  `arithmetic-solutions[:PAIR_COUNTS]` (worked solutions of the RL task, generated, deliberately
  imperfect; e.g. `arithmetic-solutions:1,2` for one- and two-pair problems only);
- a local .jsonl / .json / .parquet / .csv file;
- a Hugging Face hub dataset `org/name` or `org/name:config` (cached or downloadable).
Rows hold a `messages` list of {role, content}, or `prompt` and `completion` columns (the prompt a
string or a messages list). Rows are numbered from 1 in errors, as a person counts lines.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED = {"foo": DATA_DIR / "foo.jsonl"}
GENERATED = ("arithmetic-solutions",)
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ROLES = ("system", "user", "assistant", "tool")
Conversation = list[dict[str, str]]


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
        from common.tasks import Difficulty, solutions_dataset

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
