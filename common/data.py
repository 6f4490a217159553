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
    import datasets

    path = SHIPPED.get(spec, Path(spec))
    try:
        if path.suffix in FILE_FORMATS or path.exists():
            if not path.is_file():
                raise DatasetError(f"--dataset {spec}: no such file {path}")
            kind = FILE_FORMATS.get(path.suffix)
            if kind is None:
                raise DatasetError(f"--dataset {spec}: unsupported file type {path.suffix!r}; "
                                   f"use one of {sorted(FILE_FORMATS)}")
            table = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif "/" in spec:
            name, _, config = spec.partition(":")
            table = datasets.load_dataset(name, config or None, split=split)
        else:
            raise DatasetError(f"--dataset {spec!r}: not a file, a shipped dataset "
                               f"({', '.join([*SHIPPED, *GENERATED])}) or a hub name org/name")
    except DatasetError:
        raise
    except Exception as exc:  # datasets' own errors are long; keep the cause, name the input
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DatasetError(f"--dataset {spec}: could not load ({type(exc).__name__}: "
                           f"{first_line[:300]})") from None
    return table.to_list()


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
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else list(prompt))
        messages.append({"role": "assistant", "content": row["completion"]})
    else:
        raise ValueError(f"no 'messages' (or 'prompt' and 'completion') column; has {sorted(row)}")
    if not isinstance(messages, list) or not messages:
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
