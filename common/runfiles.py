"""The run directory's files: what they hold, how they are read back, how they are written.

Everything a run records lands here first, so the files alone describe a run:
  config.yaml        the resolved config, secrets redacted
  metrics.jsonl      one {"step", **metrics, "_time"} object per logged step; NaN and inf are
                     written as NaN / Infinity (Python's json default, which json.loads reads back)
  checkpoints.jsonl  one {"step", "name", "path", "kind", "_time"} object per saved checkpoint
  samples.jsonl      every row of every samples table, as {"table", "step", **row}
  summary.json       the run summary, merged and rewritten atomically on every update
  wandb_run_id       the W&B run id; a resumed run continues that W&B run (and a requeued
                     sweep run, which `wandb agent` gives the same WANDB_RUN_ID, finds its
                     directory by it)
  wandb_run_name     the W&B display name, kept for the run's whole life (a resume keeps it)
  wandb_group        the W&B group the run joined (evaluate.py puts its run in the same one)
  wandb_tables.json  the columns of the W&B tables logged, so a resumed run continues them
  wandb_attempts.json  one entry per process that ran the W&B run offline: its directory under
                     wandb/, whether it finished and its last step (what `wandb sync` may take)
  git_diff.patch     `git diff HEAD` of the code that ran (first line: the commit)
  wandb/             W&B's own files (common.tracking writes those)

Crash rule: a record is in the kernel (written and flushed, one whole line per write) before
the step it describes is reported done, so a killed process loses no reported step; a line a
crash cut short is skipped when read back. Whole-file rewrites (config, summary, truncation)
go through a temporary file and `os.replace`, so a reader sees the old file or the new one.

This module imports neither W&B nor any other part of the project but `common.secrets`: code
that only reads a run directory (costs, evaluation, config) depends on this and nothing more.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import IO, Any

import yaml

from common.secrets import redact

METRICS, CHECKPOINTS, SAMPLES = "metrics.jsonl", "checkpoints.jsonl", "samples.jsonl"
SUMMARY, CONFIG, RUN_ID = "summary.json", "config.yaml", "wandb_run_id"
GROUP, TABLES, GIT_DIFF = "wandb_group", "wandb_tables.json", "git_diff.patch"
RUN_NAME, ATTEMPTS = "wandb_run_name", "wandb_attempts.json"
RECORD_FILES = (METRICS, CHECKPOINTS, SAMPLES)  # the append-only logs truncation cuts back
CHECKPOINT_COLUMNS = ["step", "name", "path", "kind"]
ROOT = Path(__file__).resolve().parent.parent


class RunFileError(ValueError):
    """A run directory's file is damaged; the message names the file and line."""


def _not_a_directory(path: Path) -> None:
    if path.is_dir():
        raise RunFileError(f"{path}: damaged, a directory where the run keeps a file; move it "
                           "aside")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run directory recorded ({} when it has none)."""
    path = Path(run_dir) / CONFIG
    _not_a_directory(path)
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunFileError(f"{path}: damaged, not the YAML a run writes "
                           f"({' '.join(str(exc).split())[:200]})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RunFileError(f"{path}: damaged, expected a mapping of config keys, "
                           f"got {type(config).__name__}")
    return config


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json ({} when absent). It is derived data, rewritten on every update, so a
    damaged one is started over with a warning rather than stopping the run."""
    path = Path(run_dir) / SUMMARY
    _not_a_directory(path)
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_bytes().decode("utf-8"))
        if isinstance(summary, dict):
            return summary
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    print(f"warning: {path} is damaged; starting the run summary over", flush=True)
    return {}


def read_group(run_dir: Path) -> str | None:
    """The W&B group a run directory's run joined (None for runs made before it was kept)."""
    return read_text_file(Path(run_dir) / GROUP)


def read_text_file(path: Path) -> str | None:
    """A one-line file's stripped text (run id, name, group), None when absent or empty."""
    return (path.read_text().strip() or None) if path.is_file() else None


def find_run_dir(run_id: str, root: Path, depth: int = 3) -> Path | None:
    """The run directory under `root` whose wandb_run_id is `run_id` (runs/<run>/ and the
    sweep runner's runs/sweeps/<group>/<run>/ are within the default depth), or None."""
    root = Path(root)
    for level in range(1, depth + 1):
        for path in sorted(root.glob("/".join(["*"] * level) + f"/{RUN_ID}")):
            if read_text_file(path) == run_id:
                return path.parent
    return None


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """wandb_attempts.json ([] when absent; a damaged file is treated as empty: the attempts it
    named are then set aside as unfinished, which loses nothing the run files hold)."""
    path = Path(run_dir) / ATTEMPTS
    try:
        attempts = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        return []
    return [a for a in attempts if isinstance(a, dict) and isinstance(a.get("dir"), str)] \
        if isinstance(attempts, list) else []


def write_attempts(run_dir: Path, attempts: list[dict[str, Any]]) -> None:
    write_atomic(Path(run_dir) / ATTEMPTS, json.dumps(attempts, indent=1) + "\n")


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and +-inf as None, so `json.dumps` writes standard JSON (Python's default
    writes NaN / Infinity, which JSON parsers other than Python's reject)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of a run, in order (a line cut short by a crash is skipped)."""
    return [row for _, row in read_jsonl(Path(run_dir) / METRICS)]


CHECKPOINT_KINDS = ("state", "sampler")


def read_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """The checkpoint records of a run, oldest first; a record without a kind, name or path of
    the kinds a run writes is damage, named by file and line."""
    path = Path(run_dir) / CHECKPOINTS
    records = read_jsonl(path)
    for number, (_, row) in enumerate(records, start=1):
        if (row.get("kind") not in CHECKPOINT_KINDS or not isinstance(row.get("path"), str)
                or not isinstance(row.get("name"), str)):
            raise RunFileError(f"{path} record {number}: damaged, not a checkpoint record "
                               f"(needs kind {'/'.join(CHECKPOINT_KINDS)}, name and path); fix "
                               "or delete that line")
    return [row for _, row in records]


def read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, parsed) pairs. A last line with no newline is what a crash mid-write leaves: it
    is skipped with a warning. A bad line anywhere else is damage: RunFileError names it, and so
    is a record whose `step` is not a whole number."""
    _not_a_directory(path)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(f"{path}: damaged, not UTF-8 (byte {exc.start})") from None
    lines = text.splitlines(keepends=True)
    pairs = []
    for number, line in enumerate(lines, start=1):
        torn = number == len(lines) and not line.endswith("\n")
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and (not torn or "step" in row):
            step = row.get("step")
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise RunFileError(f"{path} line {number}: damaged, its step is {step!r}, not a "
                                   "whole number; fix or delete that line")
            pairs.append((line if line.endswith("\n") else line + "\n", row))
        elif torn:
            if _warned_torn.get(path) != line:
                _warned_torn[path] = line
                print(f"warning: {path}: the last line was cut short (a crash while "
                      "writing); ignoring it", flush=True)
        elif line.strip():
            raise RunFileError(f"{path} line {number}: damaged, not a JSON record "
                               f"({line.strip()[:80]!r}); fix or delete that line")
    return pairs


_warned_torn: dict[Path, str] = {}


def jsonl_lines(rows: list[dict[str, Any]]) -> str:
    """Rows as JSON lines (values JSON cannot hold are written as their str())."""
    return "".join(json.dumps(row, default=str) + "\n" for row in rows)


def write_atomic(path: Path, text: str) -> None:
    """Replace a file's content so that a reader (or a crash) sees the old text or the new."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def keep_rows(run_dir: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite metrics, checkpoints and samples with only the rows `keep` accepts; a last
    line a crash cut short goes too."""
    for name in RECORD_FILES:
        if (path := Path(run_dir) / name).exists():
            write_atomic(path, "".join(line for line, row in read_jsonl(path) if keep(row)))


def write_git_diff(path: Path) -> None:
    """The commit and the uncommitted changes of the code that runs (nothing outside git)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=20, check=True).stdout
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return
    write_atomic(path, redact(f"# commit {commit}\n{diff}"))


def plain(obj: Any) -> Any:
    """Plain Python (dict/list/str/number/bool/None) for YAML, JSON and W&B."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if isinstance(obj, Enum):
        return plain(obj.value)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return plain(obj.tolist())
    return str(obj)


class RecordLog:
    """One append-only JSON-lines file of a run, kept open for its appends.

    Each `append` writes whole lines and flushes them to the kernel before it returns: a
    process killed right after (SIGKILL included) leaves them in the file. Reopening per append
    did the same at the price of an open and a close per step. `close` before the file is
    rewritten (truncation) so that no stale handle writes past the new end.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def append(self, rows: list[dict[str, Any]]) -> None:
        if self._file is None or self._file.closed:
            self._file = self.path.open("a")  # noqa: SIM115 - kept open between appends
        self._file.write(jsonl_lines(rows))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
