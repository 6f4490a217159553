"""Experiment tracking: one Tracker per run writes the run's files first and mirrors them to W&B.

Scripts log through the Tracker alone. What it writes to the run directory (metrics.jsonl,
checkpoints.jsonl, samples.jsonl, summary.json, config.yaml, ...) and how those files are read
back is `common.runfiles`; code that only reads a run directory imports that, not this. W&B's
own files go to `<run_dir>/wandb/`. Unlike DESIGN's `./wandb`, each run dir is self-contained:
browse with `wandb leet <run_dir>/wandb`, upload with `wandb sync`.

W&B mode "auto" is online when credentials exist, else offline; "disabled" never imports wandb.
Tracking never kills training: a failed online init falls back to offline, then to files only,
and a W&B error later turns W&B off for the rest of the run (one printed line each time).
Every string that reaches the console, a file or W&B goes through `common.secrets.redact`.
What W&B shows, following its documented conventions:
- samples: one table key per script, logged with log_mode="INCREMENTAL" (W&B's pattern for tables
  over time; W&B Server >= 0.70, i.e. W&B's cloud). A resumed run continues the table: its
  first increment holds the rows kept from before (samples.jsonl up to the step it resumed
  from), then one increment per sample step as before. W&B's own resume would instead chain
  the killed attempt's increments, including steps past the checkpoint and ones the kill lost.
  For W&B servers older than 0.70, `incremental_tables=False` logs the whole table so far under
  the same key instead (a new version each time; quadratic in rows, so not the default).
- checkpoints: one `model` reference artifact per saved sampler checkpoint (`model-<run id>`, the
  `tinker://` / `local://` URI, aliases `step-NNNNNN`, `latest` and `final`; the state path for
  resuming in its metadata); evaluate.py declares the ones it scores as inputs of its run.
- summaries: define_metric gives losses min + last, accuracies and rewards max + last.
- no bookkeeping charts: W&B does not get `progress/step` (its own `_step` is the same number)
  nor, on the free local backend, `cost/*` (a flat $0); metrics.jsonl keeps both. W&B's UI
  and `wandb leet` then open on losses, rewards and accuracies, not on step counters.
- run states: a run stopped by a signal ends with the signal's exit code (130 SIGINT, 143
  SIGTERM), marked preempting so W&B expects the resume; a failure ends with exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from common.runfiles import (
    CHECKPOINT_COLUMNS,
    CHECKPOINTS,
    CONFIG,
    GIT_DIFF,
    GROUP,
    METRICS,
    RECORD_FILES,
    RUN_ID,
    SAMPLES,
    SUMMARY,
    TABLES,
    RecordLog,
    keep_rows,
    plain,
    read_checkpoints,
    read_jsonl,
    read_summary,
    write_atomic,
    write_git_diff,
)
from common.secrets import redact, secret_values

Mode = Literal["auto", "online", "offline", "disabled"]
WANDB_QUEUE = 1000  # W&B calls the worker may be behind before the loop waits for it
WANDB_INIT_TIMEOUT_S = 15.0  # longest an online W&B init may take before falling back to offline
# Progress bars redraw at most this often. Every redraw is console output that is redacted, sent
# to W&B's console capture and kept in its output.log (and in a piped log): at tqdm's 0.1 s plus
# a redraw per postfix update, a 200-step tiny-chat SFT run wrote ~480 redraws; now ~80.
PROGRESS_REDRAW_S = 0.5
DEFAULT_PROJECT, LOCAL_PROJECT = "tinker-experiments", "tinker-experiments-local"
# What W&B's summary (and so the runs table and a sweep's ranking) shows for a key: the best
# value and the last, instead of only the last. Keys not listed keep W&B's default (last).
METRIC_SUMMARIES = {
    **dict.fromkeys(["train/loss", "eval/loss"], "min,last"),
    **dict.fromkeys(["eval/accuracy", "eval/reward", "rl/accuracy", "reward/mean",
                     "reward/format", "reward/correct", "reward/concise"], "max,last"),
}
NOT_TO_WANDB = ("progress/step",)  # W&B's own `_step` is the same number
# Flags that say how a run is tracked, not what it is: kept in config.yaml, not in W&B's config.
NOT_WANDB_CONFIG = ("wandb_mode", "wandb_project", "wandb_entity", "wandb_group", "wandb_tags",
                    "wandb_notes", "wandb_incremental_tables", "run_name", "resume", "dry_run")
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


def resolve_wandb_mode(mode: str) -> str:
    """Mode "auto" -> "online" with credentials, else "offline"; the others pass through."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"wandb mode must be auto/online/offline/disabled, got {mode!r}")
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


def default_project(backend: str | None) -> str:
    """Runs on the local backend (tiny models, smoke tests) get a project of their own, so a
    real project's runs table never fills with them."""
    return LOCAL_PROJECT if backend == "local" else DEFAULT_PROJECT


def auto_tags(config: Mapping[str, Any]) -> list[str]:
    """Tags that tell runs apart in W&B's runs table: backend and base model."""
    tags = []
    if config.get("backend"):
        tags.append(f"backend:{config['backend']}")
    if config.get("model"):
        tags.append(f"model:{str(config['model']).rstrip('/').rsplit('/', 1)[-1]}"[:64])
    return tags


def default_group(name: str) -> str:
    """A run's group without --wandb_group: the sweep it belongs to (`wandb agent` sets
    WANDB_SWEEP_ID), else the run itself, so the evaluations of a run join it."""
    sweep = os.environ.get("WANDB_SWEEP_ID")
    return f"sweep-{sweep}" if sweep else name


def model_artifact_name(run_id: str) -> str:
    """The W&B artifact collection of a run's checkpoints (Transformers' integration also names
    its checkpoints after the run: `model-<run id>`)."""
    return f"model-{run_id}"


def checkpoint_metadata(config: Mapping[str, Any], step: int, name: str, state_path: str | None,
                        sampler_path: str) -> dict[str, Any]:
    """What a checkpoint artifact says about itself; evaluate.py rebuilds the same artifact."""
    return {"step": step, "name": name, "base_model": config.get("model"),
            "lora_rank": config.get("lora_rank"), "backend": config.get("backend"),
            "sampler_path": sampler_path, "state_path": state_path}


def checkpoint_aliases(step: int, name: str) -> list[str]:
    return [f"step-{step:06d}", "latest", *(["final"] if name == "final" else [])]


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
        entity: str | None = None,
        tags: Sequence[str] = (),
        notes: str | None = None,
        metric_summaries: Mapping[str, str] | None = None,
        incremental_tables: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a new run in an old directory starts its files over
            for name in (METRICS, CHECKPOINTS, SAMPLES, SUMMARY, TABLES):
                (self.run_dir / name).unlink(missing_ok=True)
        self._summary = read_summary(self.run_dir)
        self._checkpoints: list[list[Any]] = []
        # Kept open for the run's appends (one flush per record, no open/close per step).
        self._records = {name: RecordLog(self.run_dir / name) for name in RECORD_FILES}
        self._keep_rows(lambda row: True)  # drops a line a crash cut short, loads checkpoints
        self.config: dict[str, Any] = _redact(plain(config))
        write_atomic(self.run_dir / CONFIG, yaml.safe_dump(self.config, sort_keys=False))
        id_path = self.run_dir / RUN_ID
        if not (resume and id_path.exists()):
            write_atomic(id_path, uuid.uuid4().hex[:8])  # not `random`: scripts seed it
        self.run_id = id_path.read_text().strip()
        if group:
            write_atomic(self.run_dir / GROUP, group)
        write_git_diff(self.run_dir / GIT_DIFF)
        self._metric_summaries = dict(METRIC_SUMMARIES if metric_summaries is None
                                      else metric_summaries)
        self._tables: dict[str, Any] = {}  # key -> the wandb.Table its increments come from
        self._incremental = incremental_tables  # False: the whole table at each log (old servers)
        self._history_keys: set[str] = set()  # keys this process logged to W&B's history
        tables_path = self.run_dir / TABLES
        # key -> {"columns", "steps"}: the tables this run logged to W&B, and at which steps.
        self._table_log: dict[str, dict[str, Any]] = (
            json.loads(tables_path.read_text()) if tables_path.exists() else {})
        self._run: Any = None
        self._status: str | None = None
        self._stop_exit_code: int | None = None
        self._error: str | None = None
        self._finished = False
        self._wandb_step = 0  # W&B rejects steps below its current one (with a warning)
        self._noted_old_steps = False
        self.wandb_mode = resolve_wandb_mode(mode)
        if self.wandb_mode != "disabled":
            self._init_args = (project, run_name, group, job_type, entity,
                               [*dict.fromkeys([*tags, *auto_tags(self.config)])], notes)
            self._run = self._init_wandb(*self._init_args)
        self._calls: queue.Queue[tuple[str, Callable[[Any], object]] | None] = queue.Queue(
            maxsize=WANDB_QUEUE)
        self._worker: threading.Thread | None = None
        self._start_worker()

    def _init_wandb(self, project: str, name: str, group: str | None, job_type: str,
                    entity: str | None, tags: list[str], notes: str | None) -> Any:
        try:
            import wandb
        except ImportError as e:
            self._say(f"W&B unavailable ({_error(e)}); continuing with files only")
            self.wandb_mode = "disabled"
            return None
        _skip_pandas_import(wandb)
        # Offline is tried twice: W&B's local service can fail to start in time on a loaded
        # machine, and a second try is cheaper than a run without its W&B record.
        attempts = [*(["online"] if self.wandb_mode == "online" else []), "offline", "offline"]
        wandb_config = {k: v for k, v in self.config.items() if k not in NOT_WANDB_CONFIG}
        for i, attempt in enumerate(attempts):
            try:
                run = wandb.init(
                    project=project,
                    entity=entity,
                    name=name,
                    group=group,
                    job_type=job_type,
                    tags=tags,
                    notes=notes,
                    config=wandb_config,
                    dir=str(self.run_dir),
                    id=self.run_id,
                    resume="allow",
                    mode=attempt,
                    # W&B's own banner is off; the lines below say what matters once. Bounded:
                    # with a key but no network the online attempt would take ~90 s before the
                    # offline fallback below.
                    settings=wandb.Settings(silent=True, init_timeout=WANDB_INIT_TIMEOUT_S),
                )
                self._define_metrics(run)
                if (self.run_dir / GIT_DIFF).exists():
                    with _quiet_wandb():  # W&B warns that it symlinked the file: it did
                        run.save(str(self.run_dir / GIT_DIFF), base_path=str(self.run_dir),
                                 policy="now")
            except Exception as e:
                then = {"online": "falling back to offline", "offline": "trying once more",
                        None: "files only from now"}[attempts[i + 1] if i + 1 < len(attempts)
                                                     else None]
                self._say(f"W&B {attempt} init failed ({_error(e)}); {then}")
                _teardown_wandb()
                continue
            self.wandb_mode = attempt
            self._wandb_step = int(getattr(run, "starting_step", 0) or 0)
            if run.id != self.run_id:  # a sweep agent assigns the id: resume must use that one
                self.run_id = run.id
                write_atomic(self.run_dir / RUN_ID, run.id)
            if attempt == "offline":
                wandb_dir = self.run_dir / "wandb"
                self._say(
                    f"W&B is offline; this run lives in {wandb_dir}\n"
                    f"  browse: wandb leet {wandb_dir}\n"
                    f"  upload: wandb sync {wandb_dir}/offline-run-*-{self.run_id}*"
                )
            else:
                self._say(f"W&B run: {run.url}")
            return run
        self.wandb_mode = "disabled"
        return None

    def _define_metrics(self, run: Any) -> None:
        """Summaries that rank (best and last). Repeated on every attempt of a run: W&B keeps
        definitions per process."""
        for key, summary in self._metric_summaries.items():
            run.define_metric(key, summary=summary)

    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        """Append one row to metrics.jsonl and log the same values to W&B at `step`."""
        row = _redact({k: plain(v) for k, v in metrics.items()})
        self._records[METRICS].append([{"step": step, **row, "_time": time.time()}])
        if self._run is not None and step < self._wandb_step:
            # Typically a resumed online run: W&B holds these steps from the interrupted attempt
            # and would drop them with a warning each; say it once instead.
            if not self._noted_old_steps:
                self._noted_old_steps = True
                self._say(f"W&B is at step {self._wandb_step}; earlier steps go to {METRICS} only")
            return
        to_wandb = self._for_wandb(row)
        self._wandb_soon("log", lambda run: run.log(to_wandb, step=step))
        self._wandb_step = max(step, self._wandb_step)
        self._history_keys.update(to_wandb)

    def _for_wandb(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The values of a metrics row that W&B gets (see the module docstring)."""
        free = self.config.get("backend") == "local"
        return {k: v for k, v in row.items()
                if k not in NOT_TO_WANDB and not (free and k.startswith("cost/"))}

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """Append rows to samples.jsonl and add them to the W&B table `key` as one increment."""
        rows = _redact([[plain(cell) for cell in row] for row in rows])
        records = [
            {"table": key, "step": step, **dict(zip(columns, row, strict=False))} for row in rows
        ]
        self._records[SAMPLES].append(records)

        self._wandb_increment(key, columns, rows, step)

    def _wandb_increment(self, key: str, columns: list[str], rows: list[list[Any]],
                         step: int) -> None:
        at = max(step, self._wandb_step)  # not below W&B's step, or W&B drops it; rows carry theirs
        # Old servers get every row so far (samples.jsonl) as one new version of the table: read
        # now, as the worker may run this after later rows were appended.
        so_far = None if self._incremental else [
            [r.get(c) for c in columns] for _, r in read_jsonl(self.run_dir / SAMPLES)
            if r.get("table") == key]

        def log(run: Any) -> None:
            if so_far is None:
                table = self._tables.get(key) or self._new_table(key, columns)
                for row in rows:
                    table.add_data(*row)
            else:
                import wandb

                table = wandb.Table(columns=list(columns), allow_mixed_types=True, data=so_far)
            run.log({key: table}, step=at)
            logged = self._table_log.setdefault(key, {"columns": list(columns), "steps": []})
            logged["steps"].append(step)
            write_atomic(self.run_dir / TABLES, json.dumps(self._table_log) + "\n")

        self._wandb_soon("table", log)
        self._wandb_step = max(step, self._wandb_step)

    def _new_table(self, key: str, columns: list[str]) -> Any:
        """An INCREMENTAL table. A resumed run starts it over (W&B would otherwise continue
        from the killed attempt's last increment, which may be past the step the run resumed
        from, or lost with the process); truncate_after gives it the rows kept so far."""
        import wandb

        # Mixed types in a column (None next to str, int next to str) must not fail a log.
        table = wandb.Table(columns=list(columns), log_mode="INCREMENTAL", allow_mixed_types=True)
        if key in self._table_log:
            table._increment_num = len(self._table_log[key]["steps"])
            table._previous_increments_paths = []
        self._tables[key] = table
        return table

    def log_image(self, key: str, path: Path, step: int) -> None:
        """Mirror an image the run already wrote to its directory (a plot) to W&B."""
        at = max(step, self._wandb_step)

        def log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Image(str(path))}, step=at)

        self._wandb_soon("image", log)

    def log_checkpoint(self, step: int, name: str, path: str, kind: str,
                       state_path: str | None = None) -> None:
        """Record a saved checkpoint in checkpoints.jsonl and the summary (`checkpoint/last`).
        A sampler checkpoint also becomes a W&B `model` artifact, with the state checkpoint of
        the same step and name (`state_path`, or an earlier record) in its metadata."""
        record = _redact({"step": step, "name": name, "path": str(path), "kind": kind})
        self._records[CHECKPOINTS].append([{**record, "_time": time.time()}])
        self._checkpoints.append([record[c] for c in CHECKPOINT_COLUMNS])
        self.set_summary({"checkpoint/last": record["path"]})
        if kind == "sampler":
            state = _redact(state_path) if state_path else next(
                (c[2] for c in reversed(self._checkpoints)
                 if c[0] == step and c[1] == name and c[3] == "state"), None)
            metadata = checkpoint_metadata(self.config, step, name, state, record["path"])
            self._wandb_soon("artifact", lambda run: run.log_artifact(
                reference_artifact(model_artifact_name(self.run_id), record["path"], metadata),
                aliases=checkpoint_aliases(step, name)))

    def log_final_checkpoint(self, path: str) -> None:
        self.set_summary({"checkpoint/final": str(path),
                          "checkpoint/artifact": f"{model_artifact_name(self.run_id)}:final"})

    def use_checkpoint(self, artifact_name: str, uri: str, metadata: Mapping[str, Any],
                       alias: str) -> None:
        """Declare a checkpoint this run reads (evaluate.py): the same reference artifact the
        training run logged, so W&B's lineage graph links training run -> checkpoint -> here.

        Online this is `run.use_artifact` of the artifact as a draft, which W&B matches to the
        logged version by its digest (the reference URI). `use_artifact` refuses offline runs,
        so offline the draft is recorded as W&B's use_artifact would send it (an artifact record
        marked use_after_commit), which `wandb sync` turns into the same input edge.
        """
        def use(run: Any) -> None:
            artifact = reference_artifact(artifact_name, uri, metadata)
            if self.wandb_mode == "online":
                run.use_artifact(artifact, aliases=[alias])
            else:
                run._log_artifact(artifact, aliases=[alias], is_user_created=True,
                                  use_after_commit=True)

        self._wandb_soon("use_artifact", use)

    def use_artifact(self, name: str) -> None:
        """`run.use_artifact(name)` for an artifact named on the command line. Only an online
        run can (W&B resolves the name on its server); one that fell back to offline says so."""
        if self._run is not None and self.wandb_mode != "online":
            self._say(f"W&B is {self.wandb_mode}: this run cannot record that it used {name}")
            return
        self._wandb_soon("use_artifact", lambda run: run.use_artifact(name))

    def summary_value(self, key: str) -> Any:
        return self._summary.get(key)

    def summary(self, **values: Any) -> None:
        self.set_summary(values)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        """Merge into the run summary: summary.json (rewritten atomically) and W&B's. Logged
        keys whose W&B summary define_metric computes (best and last) are left to W&B there."""
        values = _redact(plain(values))
        self._summary.update(values)
        write_atomic(self.run_dir / SUMMARY, json.dumps(self._summary, indent=2) + "\n")
        to_wandb = {k: v for k, v in self._for_wandb(values).items()
                    if not (k in self._metric_summaries and k in self._history_keys)}
        if to_wandb:
            self._wandb_soon("summary", lambda run: run.summary.update(to_wandb))

    def truncate_after(self, step: int) -> None:
        """Drop records with step > `step` (metrics, checkpoints, samples): a resumed run redoes
        them. Call it right after resuming from the checkpoint saved at `step`."""
        self.wait_for_wandb()  # the W&B table log below is the worker's to update
        self._keep_rows(lambda row: row.get("step", -1) <= step)
        # A killed process loses what W&B still buffered, so W&B may lack kept rows: replay
        # those it may not have. W&B keeps the first copy of a step (a resumed online run
        # starts at `starting_step`; an offline one is de-duplicated by `wandb sync`).
        for _, row in read_jsonl(self.run_dir / METRICS):
            if self._run is not None and row["step"] >= self._wandb_step:
                values = self._for_wandb(
                    {k: v for k, v in row.items() if k not in ("step", "_time")})
                self._wandb_soon("log", lambda run, v=values, s=row["step"]: run.log(v, step=s))
                self._wandb_step = row["step"]
                self._history_keys.update(values)
        # The W&B tables continue with the rows kept (one increment at `step`); the redone
        # steps log theirs again.
        kept = [row for _, row in read_jsonl(self.run_dir / SAMPLES)]
        for key, logged in list(self._table_log.items()):
            rows = [[r.get(c) for c in logged["columns"]] for r in kept if r.get("table") == key]
            if rows and self._run is not None:
                self._wandb_increment(key, logged["columns"], rows, step)
        last = (
            self._checkpoints[-1][CHECKPOINT_COLUMNS.index("path")] if self._checkpoints else None
        )
        self.set_summary({"checkpoint/last": last})

    def _keep_rows(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        for record_log in self._records.values():
            record_log.close()  # the rewrite replaces the file: no handle may outlive it
        keep_rows(self.run_dir, keep)
        self._checkpoints = [
            [r.get(c) for c in CHECKPOINT_COLUMNS] for r in read_checkpoints(self.run_dir)
        ]

    def set_status(self, status: str) -> None:
        """The status `finish` records instead of "finished" (e.g. "interrupted")."""
        self._status = status

    def stopped(self, exit_code: int) -> None:
        """The run was stopped by a signal, cleanly (its checkpoint saved): `finish` ends the
        W&B run with this exit code, status "interrupted", marked preempting (resumable)."""
        self._status = "interrupted"
        self._stop_exit_code = exit_code

    def finish(self, exit_code: int = 0) -> None:
        """Record the final status and close the W&B run; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        if exit_code == 0 and self._stop_exit_code is not None:
            exit_code = self._stop_exit_code
        status = self._status or ("finished" if exit_code == 0 else "failed")
        # "error": None also clears one left in summary.json by an interrupted attempt.
        self.set_summary({"status": status, "error": self._error})
        self._stop_worker()  # every queued W&B call is made before the run is closed
        if status == "interrupted":  # W&B's state for a run that will be resumed
            self._wandb("mark_preempting", lambda run: run.mark_preempting())
        self._wandb("finish", lambda run: run.finish(exit_code=exit_code))
        self._run = None
        for record_log in self._records.values():
            record_log.close()

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
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else None
        self.finish(code or getattr(exc, "exit_code", None)
                    or (130 if isinstance(exc, KeyboardInterrupt) else 1))

    def _start_worker(self) -> None:
        """W&B calls run in order on one worker thread, so the loop does not wait for W&B (a
        step's log, a table, an artifact: ~2-30 ms each). The run's files are written before
        the call is queued: a crash loses nothing but what W&B had not yet been given, which a
        resumed run replays from metrics.jsonl as it does for what W&B's own buffers lose."""
        if self._run is not None:
            self._worker = threading.Thread(target=self._run_wandb_calls, name="wandb-calls",
                                            daemon=True)
            self._worker.start()

    def _wandb_soon(self, what: str, call: Callable[[Any], object]) -> None:
        """Queue one W&B call for the worker (made in order); without a worker, make it now."""
        if self._worker is None:
            self._wandb(what, call)
        else:
            self._calls.put((what, call))  # blocks only when W&B is WANDB_QUEUE calls behind

    def _run_wandb_calls(self) -> None:
        while (item := self._calls.get()) is not None:
            try:
                self._wandb(*item)
            except BaseException as e:  # noqa: BLE001 - a dead worker would hang finish()
                self._run = None
                self._say(f"W&B {item[0]} failed ({_error(e)}); W&B is off for the rest of "
                          "this run")
            finally:
                self._calls.task_done()
        self._calls.task_done()

    def wait_for_wandb(self) -> None:
        """Return once W&B has been given every call made so far (they run on a worker)."""
        if self._worker is not None:
            self._calls.join()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._calls.put(None)
            self._worker.join()
            self._worker = None

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
            self._tables.clear()  # an incremental table belongs to one run object
            self._run = self._init_wandb(*self._init_args)
            if self._run is not None:
                self._wandb(what, call)
            return
        self._say(f"W&B {what} failed ({failure}); W&B is off for the rest of this run")

    def _say(self, message: str) -> None:
        print(_redact(f"tracking: {message}"), flush=True)


def reference_artifact(name: str, uri: str, metadata: Mapping[str, Any]) -> Any:
    """A W&B `model` artifact that points at checkpoint weights by URI (nothing uploaded)."""
    import wandb

    artifact = wandb.Artifact(name, type="model", metadata=dict(metadata))
    # W&B warns on every reference whose scheme it cannot checksum; tinker:// and local:// are
    # such schemes by design (the URI is the identity), so that warning is noise here.
    with _quiet_wandb():
        artifact.add_reference(uri, name="weights", checksum=False)
    return artifact


@contextlib.contextmanager
def _quiet_wandb() -> Iterator[None]:
    """Silence W&B's console warnings for one call (W&B has no per-call switch)."""
    from wandb.errors import term

    shown, term._show_warnings = term._show_warnings, False
    try:
        yield
    finally:
        term._show_warnings = shown


def _teardown_wandb() -> None:
    """Release a failed run: W&B keeps its id reserved until torn down, so reopening the run
    (offline, same id) would fail with "run ID is in use"."""
    import wandb

    try:
        wandb.teardown()
    except Exception:  # best effort, already on the error path
        pass


def _redact(obj: Any) -> Any:
    """`redact` with the secrets of the environment as it is now. Finding them scans every
    environment variable (~0.7 ms) and every step's row is redacted, so they are found again
    only when the environment changed."""
    global _env_secrets
    env = dict(os.environ)
    if env != _env_secrets[0]:
        _env_secrets = (env, secret_values())
    return redact(obj, _env_secrets[1])


_env_secrets: tuple[dict[str, str], list[str]] = ({}, [])


def _skip_pandas_import(wandb: Any) -> None:
    """W&B checks every non-scalar value it logs (tables, images, a None in the summary)
    against pandas.DataFrame, importing pandas to do so once pandas is installed (it comes with
    `datasets`): ~0.5-1 s in the middle of a run that never uses it. Told pandas is absent, W&B
    recognises a DataFrame by its type name instead; once pandas is imported this changes
    nothing."""
    util = getattr(wandb, "util", None)
    if "pandas" not in sys.modules and getattr(util, "pd_available", None) is True:
        util.pd_available = False


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
