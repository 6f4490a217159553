"""Experiment tracking: one Tracker per run writes files first and mirrors them to W&B.

Everything lands in the run directory, so the files alone describe a run:
  config.yaml        the resolved config, secrets redacted
  metrics.jsonl      one {"step", **metrics, "_time"} object per log(); NaN and inf are written
                     as NaN / Infinity (Python's json default, which json.loads reads back)
  checkpoints.jsonl  one {"step", "name", "path", "kind", "_time"} object per saved checkpoint
  samples.jsonl      every row of every log_table() call, as {"table", "step", **row}
  summary.json       the run summary, merged and rewritten atomically on every update
  wandb_run_id       the W&B run id; a Tracker made with resume=True continues that W&B run
  wandb/             W&B's own files. Unlike DESIGN's `./wandb`, each run dir is self-contained:
                     browse with `wandb leet <run_dir>/wandb`, upload with `wandb sync`.

W&B mode "auto" is online when credentials exist, else offline; "disabled" never imports wandb.
Tracking never kills training: a failed online init falls back to offline, then to files only,
and a W&B error later turns W&B off for the rest of the run (one printed line each time).
Every string that reaches the console, a file or W&B goes through `common.secrets.redact`.
Per-step tables are logged under one W&B key per step (`samples/step_000020`), not with
log_mode="INCREMENTAL": increments need W&B Server >= 0.70 and cannot survive a resume.
"""

from __future__ import annotations

import dataclasses
import json
import netrc
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from common.secrets import redact

Mode = Literal["auto", "online", "offline", "disabled"]
METRICS, CHECKPOINTS, SAMPLES = "metrics.jsonl", "checkpoints.jsonl", "samples.jsonl"
SUMMARY, CONFIG, RUN_ID = "summary.json", "config.yaml", "wandb_run_id"
CHECKPOINT_COLUMNS = ["step", "name", "path", "kind"]
WANDB_INIT_TIMEOUT_S = 15.0  # longest an online W&B init may take before falling back to offline
# api.wandb.ai, plus wandb 0.31's default host, plus a self-hosted server's if one is set.
_WANDB_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


def has_wandb_credentials() -> bool:
    """WANDB_API_KEY is set, or a netrc file ($NETRC or ~/.netrc) has an entry for W&B."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    hosts = {*_WANDB_HOSTS, urlsplit(os.environ.get("WANDB_BASE_URL", "")).netloc}
    try:
        entries = netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any(host and host in entries for host in hosts)


class RunFileError(ValueError):
    """A run directory's file is damaged; the message names the file and line."""


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run directory recorded ({} when it has none)."""
    path = Path(run_dir) / CONFIG
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


def resolve_wandb_mode(mode: str) -> str:
    """Mode "auto" -> "online" with credentials, else "offline"; the others pass through."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"wandb mode must be auto/online/offline/disabled, got {mode!r}")
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


def run_name(
    script: str, model: str, lr: float, batch_size: int, seed: int, when: datetime | None = None
) -> str:
    """`<script>-<model>-lr<lr>-bs<batch>-s<seed>-<YYYYmmdd-HHMMSS>`, safe as a path part.

    The model keeps only what follows its last "/"; lr is scientific with trailing zeros
    dropped (5e-4 -> "5e-04", 2.5e-4 -> "2.5e-04") so runs of one sweep line up.
    """
    mantissa, exponent = f"{lr:e}".split("e")
    lr_text = mantissa.rstrip("0").rstrip(".") + "e" + exponent
    parts = [script.rsplit("/", 1)[-1].removesuffix(".py"), model.rstrip("/").rsplit("/", 1)[-1]]
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = f"{parts[0]}-{parts[1]}-lr{lr_text}-bs{batch_size}-s{seed}-{stamp}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of a run, in order (a line cut short by a crash is skipped)."""
    return [row for _, row in _read_jsonl(Path(run_dir) / METRICS)]


def read_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """The checkpoint records of a run, oldest first."""
    return [row for _, row in _read_jsonl(Path(run_dir) / CHECKPOINTS)]


class Tracker:
    """Files + W&B for one run; see the module docstring for what goes where."""

    def __init__(
        self,
        run_dir: Path,
        *,
        project: str,
        mode: Mode,
        run_name: str,
        group: str | None,
        job_type: str,
        config: Mapping[str, Any],
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a new run in an old directory starts its files over
            for name in (METRICS, CHECKPOINTS, SAMPLES, SUMMARY):
                (self.run_dir / name).unlink(missing_ok=True)
        self._summary = read_summary(self.run_dir)
        self._checkpoints: list[list[Any]] = []
        self._keep_rows(lambda row: True)  # drops a line a crash cut short, loads checkpoints
        self.config: dict[str, Any] = redact(_plain(config))
        _write_atomic(self.run_dir / CONFIG, yaml.safe_dump(self.config, sort_keys=False))
        id_path = self.run_dir / RUN_ID
        if not (resume and id_path.exists()):
            _write_atomic(id_path, uuid.uuid4().hex[:8])  # not `random`: scripts seed it
        self.run_id = id_path.read_text().strip()
        self._run: Any = None
        self._status: str | None = None
        self._error: str | None = None
        self._finished = False
        self._wandb_step = 0  # W&B rejects steps below its current one (with a warning)
        self._noted_old_steps = False
        self.wandb_mode = resolve_wandb_mode(mode)
        if self.wandb_mode != "disabled":
            self._init_args = (project, run_name, group, job_type)
            self._run = self._init_wandb(*self._init_args)

    def _init_wandb(self, project: str, name: str, group: str | None, job_type: str) -> Any:
        try:
            import wandb
        except ImportError as e:
            self._say(f"W&B unavailable ({_error(e)}); continuing with files only")
            self.wandb_mode = "disabled"
            return None
        attempts = ["online", "offline"] if self.wandb_mode == "online" else ["offline"]
        for attempt in attempts:
            try:
                run = wandb.init(
                    project=project,
                    name=name,
                    group=group,
                    job_type=job_type,
                    config=self.config,
                    dir=str(self.run_dir),
                    id=self.run_id,
                    resume="allow",
                    mode=attempt,
                    # Bounded: with a key but no network the online attempt would take ~90 s
                    # before the offline fallback below.
                    settings=wandb.Settings(silent=True, init_timeout=WANDB_INIT_TIMEOUT_S),
                )
            except Exception as e:
                then = "falling back to offline" if attempt == "online" else "files only from now"
                self._say(f"W&B {attempt} init failed ({_error(e)}); {then}")
                _teardown_wandb()
                continue
            self.wandb_mode = attempt
            self._wandb_step = int(getattr(run, "starting_step", 0) or 0)
            if run.id != self.run_id:  # a sweep agent assigns the id: resume must use that one
                self.run_id = run.id
                _write_atomic(self.run_dir / RUN_ID, run.id)
            if attempt == "offline":
                wandb_dir = self.run_dir / "wandb"
                self._say(
                    f"W&B is offline; this run lives in {wandb_dir}\n"
                    f"  browse: wandb leet {wandb_dir}\n"
                    f"  upload: wandb sync {wandb_dir}/offline-run-*-{self.run_id}*"
                )
            return run
        self.wandb_mode = "disabled"
        return None

    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        """Append one row to metrics.jsonl and log the same values to W&B at `step`."""
        row = redact({k: _plain(v) for k, v in metrics.items()})
        _append_jsonl(self.run_dir / METRICS, [{"step": step, **row, "_time": time.time()}])
        if self._run is not None and step < self._wandb_step:
            # Typically a resumed online run: W&B holds these steps from the interrupted attempt
            # and would drop them with a warning each; say it once instead.
            if not self._noted_old_steps:
                self._noted_old_steps = True
                self._say(f"W&B is at step {self._wandb_step}; earlier steps go to {METRICS} only")
            return
        self._wandb("log", lambda run: run.log(row, step=step))
        self._wandb_step = max(step, self._wandb_step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """Append rows to samples.jsonl and log them to W&B as a table of its own for this step."""
        rows = redact([[_plain(cell) for cell in row] for row in rows])
        records = [
            {"table": key, "step": step, **dict(zip(columns, row, strict=False))} for row in rows
        ]
        _append_jsonl(self.run_dir / SAMPLES, records)
        self._wandb_table(f"{key}/step_{step:06d}", columns, rows, step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        """Mirror an image the run already wrote to its directory (a plot) to W&B."""

        def log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Image(str(path))}, step=max(step, self._wandb_step))

        self._wandb("image", log)

    def log_checkpoint(self, step: int, name: str, path: str, kind: str) -> None:
        """Record a saved checkpoint: checkpoints.jsonl, the W&B `checkpoints` table, summary."""
        record = redact({"step": step, "name": name, "path": str(path), "kind": kind})
        _append_jsonl(self.run_dir / CHECKPOINTS, [{**record, "_time": time.time()}])
        self._checkpoints.append([record[c] for c in CHECKPOINT_COLUMNS])
        # A fresh table with every row so far: its latest version is the whole list.
        self._wandb_table("checkpoints", CHECKPOINT_COLUMNS, list(self._checkpoints), step)
        self.set_summary({"checkpoint/last": record["path"]})

    def log_final_checkpoint(self, path: str) -> None:
        self.set_summary({"checkpoint/final": str(path)})

    def summary_value(self, key: str) -> Any:
        return self._summary.get(key)

    def summary(self, **values: Any) -> None:
        self.set_summary(values)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        """Merge into the run summary: summary.json (rewritten atomically) and W&B's."""
        values = redact(_plain(values))
        self._summary.update(values)
        _write_atomic(self.run_dir / SUMMARY, json.dumps(self._summary, indent=2) + "\n")
        self._wandb("summary", lambda run: run.summary.update(values))

    def truncate_after(self, step: int) -> None:
        """Drop records with step > `step` (metrics, checkpoints, samples): a resumed run redoes
        them. Call it right after resuming from the checkpoint saved at `step`."""
        self._keep_rows(lambda row: row.get("step", -1) <= step)
        # A killed process loses what W&B still buffered, so W&B may lack kept rows: replay
        # those it may not have. W&B keeps the first copy of a step (a resumed online run
        # starts at `starting_step`; an offline one is de-duplicated by `wandb sync`).
        for _, row in _read_jsonl(self.run_dir / METRICS):
            if self._run is not None and row["step"] >= self._wandb_step:
                values = {k: v for k, v in row.items() if k not in ("step", "_time")}
                self._wandb("log", lambda run, v=values, s=row["step"]: run.log(v, step=s))
                self._wandb_step = row["step"]
        last = (
            self._checkpoints[-1][CHECKPOINT_COLUMNS.index("path")] if self._checkpoints else None
        )
        self.set_summary({"checkpoint/last": last})

    def _keep_rows(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        for name in (METRICS, CHECKPOINTS, SAMPLES):
            if (path := self.run_dir / name).exists():
                _write_atomic(path, "".join(line for line, row in _read_jsonl(path) if keep(row)))
        self._checkpoints = [
            [r.get(c) for c in CHECKPOINT_COLUMNS] for r in read_checkpoints(self.run_dir)
        ]

    def set_status(self, status: str) -> None:
        """The status `finish` records instead of "finished" (e.g. "interrupted")."""
        self._status = status

    def finish(self, exit_code: int = 0) -> None:
        """Record the final status and close the W&B run; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        status = self._status or ("finished" if exit_code == 0 else "failed")
        # "error": None also clears one left in summary.json by an interrupted attempt.
        self.set_summary({"status": status, "error": self._error})
        self._wandb("finish", lambda run: run.finish(exit_code=exit_code))
        self._run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self.finish(0)
            return
        # An Exception is the run failing; KeyboardInterrupt / SystemExit(1) is it being stopped.
        stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
        self._status = "failed" if isinstance(exc, Exception) else stopped
        self._error = _error(exc)[:500]
        self.finish(1)

    def _wandb_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        def log(run: Any) -> None:
            import wandb

            # Mixed types in a column (None next to str, int next to str) must not fail a log.
            table = wandb.Table(columns=list(columns), data=rows, allow_mixed_types=True)
            # Not below W&B's current step, or W&B would drop it; the rows carry their step.
            run.log({key: table}, step=max(step, self._wandb_step))

        self._wandb("table", log)
        self._wandb_step = max(step, self._wandb_step)

    def _wandb(self, what: str, call: Callable[[Any], object]) -> None:
        """Run one W&B call. If an online run fails, continue the same run offline (synced
        later); if that fails too, say so once and go on with the files alone."""
        if self._run is None:
            return
        try:
            call(self._run)
            return
        except Exception as e:
            failure = _error(e)
        self._run = None
        if self.wandb_mode == "online":
            self._say(f"W&B {what} failed online ({failure}); continuing this run offline")
            _teardown_wandb()
            self.wandb_mode = "offline"
            self._run = self._init_wandb(*self._init_args)
            if self._run is not None:
                self._wandb(what, call)
            return
        self._say(f"W&B {what} failed ({failure}); W&B is off for the rest of this run")

    def _say(self, message: str) -> None:
        print(redact(f"tracking: {message}"), flush=True)


def _plain(obj: Any) -> Any:
    """Plain Python (dict/list/str/number/bool/None) for YAML, JSON and W&B."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if isinstance(obj, Enum):
        return _plain(obj.value)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _plain(obj.tolist())
    return str(obj)


def _teardown_wandb() -> None:
    """Release a failed run: W&B keeps its id reserved until torn down, so reopening the run
    (offline, same id) would fail with "run ID is in use"."""
    import wandb

    try:
        wandb.teardown()
    except Exception:  # best effort, already on the error path
        pass


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    # Open, write, close per call: every line is on disk even if the process dies next.
    with path.open("a") as f:
        f.write("".join(json.dumps(row, default=str) + "\n" for row in rows))


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, parsed) pairs. A last line with no newline is what a crash mid-write leaves: it
    is skipped with a warning. A bad line anywhere else is damage: RunFileError names it."""
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
