"""Read an offline W&B run back, for tests: what would W&B show after `wandb sync`?

Records come from W&B's own reader, `wandb leet inspect --json <file>` (wandb >= 0.31 has no
Python-level reader any more), one JSON object per record of `run-<id>.wandb`. Tables are
stored by W&B as files under `files/media/table/...table.json`; history rows only point at
them, so they are returned parsed. A resumed run writes one more `offline-run-*` directory
for the same id (W&B adds `-1`, `-2` when two start in the same second): all are read, in
order, and merged. An attempt killed with SIGKILL may have left no records at all (W&B's service
died with it before writing); its directory is skipped. Attempts the Tracker set aside (under
`wandb/incomplete/`, out of what `wandb sync` is told to upload) are not read.

`read_offline_run(run_dir, dirs=..., strict=True)` reads exactly the given attempt directories
(what a `wandb sync` command names) and fails on any file W&B's reader finds incomplete: what
`wandb sync` would stop at.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TABLE_TYPES = ("table-file", "incremental-table-file")


@dataclass
class Table:
    key: str
    step: int
    columns: list[str]
    data: list[list[Any]]
    info: dict[str, Any] = field(default_factory=dict)
    """The history item's other fields for this table (artifact_path, increment_num, ...)."""

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.data]


@dataclass
class OfflineRun:
    run_ids: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per committed step ("_step" plus the logged keys; table references removed)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Merged summary updates; nested values appear flattened ("checkpoints.path")."""
    config: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[Table]] = field(default_factory=dict)
    """Every logged version (or increment) of every table key, in logging order."""
    exit_codes: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def table(self, key: str) -> Table:
        """The latest version of a table."""
        return self.tables[key][-1]

    def incremental_table(self, key: str) -> list[Table]:
        """The increments an INCREMENTAL table shows at the end of the run, in order: those its
        last increment lists as previous, then itself (what W&B's UI assembles)."""
        by_path = {t.info["artifact_path"]: t for t in self.tables[key]}
        last = self.tables[key][-1]
        return [by_path[p] for p in [*last.info["previous_increments_paths"],
                                     last.info["artifact_path"]]]


def offline_run_dirs(run_dir: Path) -> list[Path]:
    """`run_dir/wandb/offline-run-<YYYYmmdd_HHMMSS>-<id>[-N]` directories, oldest first."""

    def order(path: Path) -> tuple[str, int]:
        match = re.match(r"offline-run-(\d{8}_\d{6})-.+?(?:-(\d+))?$", path.name)
        assert match, path
        return match.group(1), int(match.group(2) or 0)

    return sorted(Path(run_dir).glob("wandb/offline-run-*"), key=order)


class IncompleteFile(AssertionError):
    """W&B's reader stopped at a torn record, or found no record at all."""


def read_records(wandb_file: Path, strict: bool = False) -> list[dict[str, Any]]:
    """Every record of one .wandb file, as W&B's inspector prints it; `strict`: the file must
    be whole (W&B's reader says when it ends in a torn record; `wandb sync` stops there)."""
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if strict and ("incomplete" in done.stderr or not any(r["type"] == "run" for r in records)):
        raise IncompleteFile(f"{wandb_file}: {done.stderr.strip() or 'no run record'}")
    return records


def read_offline_run(run_dir: Path, dirs: list[Path] | None = None,
                     strict: bool = False) -> OfflineRun:
    """Everything the offline W&B run(s) in `run_dir/wandb` (or `dirs`, in that order)
    recorded, merged in order; `strict`: every directory holds one whole .wandb file."""
    run = OfflineRun()
    dirs = offline_run_dirs(run_dir) if dirs is None else dirs
    assert dirs, f"no offline W&B run under {run_dir}/wandb"
    for offline_dir in dirs:
        wandb_files = list(offline_dir.glob("run-*.wandb"))
        if not wandb_files and not strict:  # killed (SIGKILL) before W&B wrote anything
            continue
        (wandb_file,) = wandb_files
        for record in read_records(wandb_file, strict):
            run.records.append(record)
            kind = record["type"]
            if kind == "run":
                run.run_ids.append(record["run"]["run_id"])
                run.config.update(record["run"].get("config", {}).get("update", {}))
            elif kind == "config":
                run.config.update(record["config"].get("update", {}))
            elif kind == "summary":
                run.summary.update(record["summary"].get("update", {}))
            elif kind == "history":
                row = _split_tables(record["history"]["item"], offline_dir, run)
                # As W&B applies a resumed run on sync: a step at or below the run's last
                # step is dropped (the interrupted attempt's rows stand).
                if not run.history or row["_step"] > run.history[-1]["_step"]:
                    run.history.append(row)
            elif kind == "exit":
                run.exit_codes.append(record["exit"].get("exit_code", 0))
    run.config.pop("_wandb", None)
    return run


def _split_tables(item: dict[str, Any], offline_dir: Path, run: OfflineRun) -> dict[str, Any]:
    """Move table references out of a history row into `run.tables`, reading their files."""
    keys = [k.removesuffix("._type") for k, v in item.items() if k.endswith("._type")]
    tables = [k for k in keys if item[f"{k}._type"] in TABLE_TYPES]
    for key in tables:
        content = json.loads((offline_dir / "files" / item[f"{key}.path"]).read_text())
        info = {k.removeprefix(f"{key}."): v for k, v in item.items() if k.startswith(f"{key}.")}
        table = Table(key, item["_step"], content["columns"], content["data"], info)
        run.tables.setdefault(key, []).append(table)
    prefixes = tuple(f"{key}." for key in tables)
    return {k: v for k, v in item.items() if not k.startswith(prefixes)}
