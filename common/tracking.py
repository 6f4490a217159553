"""Experiment tracking: one Tracker per run writes the run's files first and mirrors them to W&B.

Scripts log through the Tracker alone. What it writes to the run directory (metrics.jsonl,
checkpoints.jsonl, samples.jsonl, summary.json, config.yaml, ...) and how those files are read
back is `common.runfiles`; code that only reads a run directory imports that, not this. W&B's
own files go to `<run_dir>/wandb/`. Unlike DESIGN's `./wandb`, each run dir is self-contained:
browse with `wandb leet <run_dir>/wandb`, upload with `wandb sync` (docs/wandb.md).

W&B mode "auto" is online when credentials exist, else offline; "disabled" never imports wandb.
Tracking never kills training: a failed online init falls back to offline, then to files only,
and a W&B error later turns W&B off for the rest of the run (one printed line each time).
W&B settings that W&B would refuse (a bad project name, an over-long tag) are refused before a
run starts instead (`check_wandb_settings`). Every string that reaches the console, a file or
W&B goes through `common.secrets.redact`: config, names, group, tags, notes, table cells.
Only W&B's public API is used (tests/test_wandb_public_api.py checks the source).

What W&B shows, following its documented conventions:
- one step axis per group: every history row carries `train/global_step` (HF Trainer's name),
  declared as the step metric of every key (`define_metric(..., step_metric=...)`). A training
  run's is its step; an evaluation logs each scored checkpoint at that checkpoint's training
  step (`log_evaluation`, base model at 0) under `evaluate/*`, which never collides with the
  training run's own `eval/*` (a different measurement). Per-model breakdowns go to the
  `evaluate/results` table, per-problem rows to `evaluate/samples`: no key names a directory.
- one display name per run for its life (kept in the run directory, like the id); a requeued
  sweep run (`wandb agent` sets the same WANDB_RUN_ID) uses that id and its directory.
- samples: one table key, logged with log_mode="INCREMENTAL" (W&B's pattern for tables over
  time; W&B Server >= 0.70, i.e. W&B's cloud). Each process starts the table afresh: its first
  increment holds the rows kept so far (samples.jsonl up to the step it resumed from), so the
  table W&B shows (the last increment and the ones it lists) holds every sampled step once.
  For W&B servers older than 0.70, `incremental_tables=False` logs the whole table so far under
  the same key instead (a new version each time; quadratic in rows, so not the default).
- checkpoints: one `model` reference artifact per saved sampler checkpoint (`model-<run id>`, the
  `tinker://` / `local://` URI, aliases `step-NNNNNN`, `latest` and `final`; the state path for
  resuming in its metadata); evaluate.py declares the ones it scores as inputs of its run
  (online; offline W&B's public API cannot, so the summary lists them as `evaluate/inputs`).
- summaries: define_metric gives losses min + last, accuracies and rewards max + last.
- no bookkeeping charts: W&B does not get `progress/step` (`train/global_step` is the same
  number) nor, on the free local backend, `cost/*` (a flat $0); metrics.jsonl keeps both.
- run states: a run stopped by a signal ends with the signal's exit code (130 SIGINT, 143
  SIGTERM), marked preempting so W&B expects the resume; a failure ends with exit code 1.
- a killed process: W&B's service writes the `.wandb` file in blocks, so a SIGKILL can leave it
  torn (even header-only), and `wandb sync` stops at a torn file. Every offline process is
  recorded in wandb_attempts.json; the next process of the run moves those that did not finish,
  and finished ones that hold steps past the checkpoint it resumes from, to `wandb/incomplete/`
  (outside what the printed `wandb sync` command names) and re-logs what they held from the run
  files (steps, checkpoint artifacts, summary). What the printed command uploads is then every
  step once, one table and every checkpoint artifact (tests/test_wandb_sync.py).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
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
    ROOT,
    RUN_ID,
    RUN_NAME,
    SAMPLES,
    SUMMARY,
    TABLES,
    RecordLog,
    find_run_dir,
    json_safe,
    keep_rows,
    plain,
    read_attempts,
    read_checkpoints,
    read_jsonl,
    read_summary,
    read_text_file,
    write_atomic,
    write_attempts,
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
STEP_METRIC = "train/global_step"  # the x axis of every chart of a group (HF Trainer's name)
EVAL_PREFIX = "evaluate/"  # an evaluation's keys; a training run's own are eval/*
SAMPLES_KEY, EVAL_SAMPLES_KEY, EVAL_RESULTS_KEY = "samples", "evaluate/samples", "evaluate/results"
INCOMPLETE_DIR = "incomplete"  # under <run_dir>/wandb: attempts `wandb sync` must not take
# What W&B's summary (and so the runs table and a sweep's ranking) shows for a key: the best
# value and the last, instead of only the last. Keys not listed keep W&B's default (last).
METRIC_SUMMARIES = {
    **dict.fromkeys(["train/loss", "eval/loss", "evaluate/nll"], "min,last"),
    **dict.fromkeys(["eval/accuracy", "eval/reward", "rl/accuracy", "reward/mean",
                     "reward/format", "reward/correct", "reward/concise", "evaluate/accuracy",
                     "evaluate/reward", "evaluate/exact_match"], "max,last"),
}
NOT_TO_WANDB = ("progress/step",)  # train/global_step is the same number
# Flags that say how a run is tracked, not what it is: kept in config.yaml, not in W&B's config.
NOT_WANDB_CONFIG = ("wandb_mode", "wandb_project", "wandb_entity", "wandb_group", "wandb_tags",
                    "wandb_notes", "wandb_incremental_tables", "run_name", "resume", "dry_run")
# api.wandb.ai, plus wandb 0.31's default host, plus a self-hosted server's if one is set.
_WANDB_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")
# W&B's limits, as wandb 0.31's Settings validators enforce them (project: <= 128 characters,
# none of / \ # ? % :; tags: 1-64 characters) and its server refuses them (names and groups
# over 128 characters). Checked before a run starts: W&B itself would refuse them only at init,
# and a refused init leaves the run without W&B.
WANDB_NAME_MAX, WANDB_TAG_MAX, WANDB_FORBIDDEN = 128, 64, "/\\#?%:"


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


def check_wandb_settings(cfg: Any, error: type[Exception] = ValueError) -> None:
    """Refuse, before anything runs, the W&B settings W&B would refuse at init (which would
    leave the run without W&B): one line naming the flag. Nothing to check with W&B disabled."""
    if getattr(cfg, "wandb_mode", "auto") == "disabled":
        return

    def refuse(flag: str, value: str, why: str) -> None:
        raise error(redact(f"--{flag} {value!r}: {why}"))

    for flag in ("wandb_project", "wandb_entity", "wandb_group", "run_name"):
        value = getattr(cfg, flag, None)
        if value is None:
            continue
        if not str(value).strip():
            refuse(flag, value, "empty; leave the flag out for the default")
        if len(str(value)) > WANDB_NAME_MAX:
            refuse(flag, f"{str(value)[:20]}...", f"{len(value)} characters; W&B takes at most "
                   f"{WANDB_NAME_MAX}")
        bad = sorted(set(str(value)) & set(WANDB_FORBIDDEN))
        if bad and flag in ("wandb_project", "wandb_entity"):
            refuse(flag, value, f"W&B names cannot contain {' '.join(WANDB_FORBIDDEN)} "
                   f"(found {' '.join(bad)})")
    for tag in getattr(cfg, "wandb_tags", None) or []:
        if not 1 <= len(str(tag)) <= WANDB_TAG_MAX:
            refuse("wandb_tags", tag, f"{len(str(tag))} characters; a W&B tag has 1 to "
                   f"{WANDB_TAG_MAX}")


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


def requeued_run_dir(runs_dir: Path) -> Path | None:
    """The run directory of a run `wandb agent` requeued: the agent reruns the same argv with
    the same WANDB_RUN_ID, which this finds in a run directory's wandb_run_id (None if new)."""
    run_id = os.environ.get("WANDB_RUN_ID")
    return find_run_dir(run_id, runs_dir) if run_id and Path(runs_dir).is_dir() else None


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


def portable_paths(config: Mapping[str, Any], bases: Sequence[Path] | None = None
                   ) -> dict[str, Any]:
    """`config` with absolute paths under the working directory or the repository made relative
    to it (runs on two machines compare equal in W&B); other values as they are."""
    bases = [Path.cwd(), ROOT] if bases is None else list(bases)

    def portable(value: Any) -> Any:
        if isinstance(value, list):
            return [portable(v) for v in value]
        if not (isinstance(value, str) and value.startswith("/")):
            return value
        for base in bases:
            try:
                return str(Path(value).relative_to(base)) or "."
            except ValueError:
                continue
        return value

    return {k: portable(v) for k, v in config.items()}


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
        recorded_id = read_text_file(self.run_dir / RUN_ID)
        self.run_id = self._keep_id(resume)
        same_run = resume or self.run_id == recorded_id  # also: an agent's run started over
        # One display name for the run's life: a later attempt keeps the first one's.
        self.run_name: str = (same_run and read_text_file(self.run_dir / RUN_NAME)) or _redact(
            run_name)
        write_atomic(self.run_dir / RUN_NAME, self.run_name)
        group = _redact(group) if group else None
        if group:
            write_atomic(self.run_dir / GROUP, group)
        write_git_diff(self.run_dir / GIT_DIFF)
        self._metric_summaries = dict(METRIC_SUMMARIES if metric_summaries is None
                                      else metric_summaries)
        self._tables: dict[str, Any] = {}  # key -> the wandb.Table its increments come from
        self._incremental = incremental_tables  # False: the whole table at each log (old servers)
        self._history_keys: set[str] = set()  # keys this process logged to W&B's history
        tables_path = self.run_dir / TABLES
        # key -> {"columns"}: the tables this run logged, so a resumed run continues them.
        self._table_log: dict[str, dict[str, Any]] = (
            json.loads(tables_path.read_text()) if tables_path.exists() else {})
        # Kept rows a resumed attempt adds to its tables with the first step it logs.
        self._pending_rows: dict[str, list[list[Any]]] = {}
        self._evaluations = 0  # models an evaluation has logged (its W&B steps)
        self._inputs: list[str] = []  # checkpoints an offline evaluation read
        self._run: Any = None
        self._attempt: str | None = None  # this process's offline-run-* directory
        self._ledger = threading.Lock()  # wandb_attempts.json: the worker adds this attempt
        self._status: str | None = None
        self._stop_exit_code: int | None = None
        self._error: str | None = None
        self._finished = False
        self._wandb_step = 0  # W&B rejects steps below its current one (with a warning)
        self._noted_old_steps = False
        self.wandb_mode = resolve_wandb_mode(mode)
        self._earlier: set[str] | None = None  # offline attempts before this one (None: all)
        if self.wandb_mode != "disabled":
            # Attempts killed before they finished hold torn files `wandb sync` stops at; a run
            # that starts over under the same id (`wandb agent`) redoes every step they hold.
            self._set_aside_attempts(lambda attempt: attempt.get("finished", False) and (
                resume or not _attempt_of(attempt["dir"], self.run_id)))
            self._init_args = (project, group, job_type, entity,
                               [_redact(t) for t in dict.fromkeys([*tags,
                                                                   *auto_tags(self.config)])],
                               _redact(notes) if notes else None)
        # The attempts before this process's (which W&B's start, on the worker, adds).
        self._earlier = {p.name for p in (self.run_dir / "wandb").glob("offline-run-*")}
        self._announced = False
        if self.wandb_mode == "offline":
            self._announce_offline()
        self._calls: queue.Queue[tuple[str, Callable[[Any], object] | None] | None] = \
            queue.Queue(maxsize=WANDB_QUEUE)
        self._worker: threading.Thread | None = None
        self._start_worker()

    def _keep_id(self, resume: bool) -> str:
        """The W&B run id: `wandb agent`'s (WANDB_RUN_ID: the run it created, or requeued),
        else the one a resumed run recorded, else a new one; kept in the run directory."""
        id_path = self.run_dir / RUN_ID
        run_id = (os.environ.get("WANDB_RUN_ID") or (resume and read_text_file(id_path))
                  or uuid.uuid4().hex[:8])  # not `random`: scripts seed it
        if read_text_file(id_path) != run_id:
            write_atomic(id_path, run_id)
        return run_id

    # --- W&B's run ---------------------------------------------------------------------------

    def _init_wandb(self, project: str, group: str | None, job_type: str, entity: str | None,
                    tags: list[str], notes: str | None) -> Any:
        try:
            import wandb
        except ImportError as e:
            self._say(f"W&B unavailable ({_error(e)}); continuing with files only")
            self.wandb_mode = "disabled"
            return None
        # Offline is tried twice: W&B's local service can fail to start in time on a loaded
        # machine, and a second try is cheaper than a run without its W&B record.
        attempts = [*(["online"] if self.wandb_mode == "online" else []), "offline", "offline"]
        wandb_config = portable_paths({k: v for k, v in self.config.items()
                                       if k not in NOT_WANDB_CONFIG})
        for i, attempt in enumerate(attempts):
            try:
                # W&B's banner and warnings (e.g. one per checkpoint: a tinker:// reference
                # cannot be checksummed, which is by design) are off; the lines below say what
                # matters once. `silent` passed to init alone does not reach W&B's warnings.
                wandb.setup(settings=wandb.Settings(silent=True))
                run = wandb.init(
                    project=project, entity=entity, name=self.run_name, group=group,
                    job_type=job_type, tags=tags, notes=notes, config=wandb_config,
                    dir=str(self.run_dir), id=self.run_id, resume="allow", mode=attempt,
                    # Bounded: with a key but no network the online attempt would take ~90 s
                    # before the offline fallback below.
                    settings=wandb.Settings(silent=True, init_timeout=WANDB_INIT_TIMEOUT_S),
                )
                self._define_metrics(run)
                self._save_git_diff(run)
            except Exception as e:
                then = {"online": "falling back to offline", "offline": "trying once more",
                        None: "files only from now"}[attempts[i + 1] if i + 1 < len(attempts)
                                                     else None]
                self._say(f"W&B {attempt} init failed ({_error(e)}); {then}")
                _teardown_wandb()
                continue
            self.wandb_mode = attempt
            self._wandb_step = max(self._wandb_step, int(run.starting_step or 0))
            if attempt == "offline":
                self._record_attempt(Path(run.dir).parent.name)
                if not self._announced:  # an online run that fell back
                    self._announce_offline()
            else:
                self._say(f"W&B run: {run.url}")
            return run
        self.wandb_mode = "disabled"
        return None

    def _announce_offline(self) -> None:
        """Where an offline run lives and the command that uploads it: said once, from the
        main thread where the run starts offline (so it precedes the run's own lines)."""
        self._announced = True
        wandb_dir = self.run_dir / "wandb"
        self._say(f"W&B is offline; this run lives in {wandb_dir}\n"
                  f"  browse: wandb leet {wandb_dir}\n"
                  f"  upload: wandb sync {wandb_dir}/offline-run-*-{self.run_id}*")

    def _define_metrics(self, run: Any) -> None:
        """One step axis for every key (a definition applies to the keys it names, so the
        ranked ones name it too), and summaries that rank (best and last). Repeated on every
        attempt of a run: W&B keeps definitions per process."""
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        for key, summary in self._metric_summaries.items():
            run.define_metric(key, summary=summary, step_metric=STEP_METRIC)

    def _save_git_diff(self, run: Any) -> None:
        """The code that ran, among the run's files: copied into W&B's files directory (a file
        saved from elsewhere is symlinked, with a warning)."""
        if (self.run_dir / GIT_DIFF).exists():
            copy = Path(run.dir) / GIT_DIFF
            shutil.copyfile(self.run_dir / GIT_DIFF, copy)
            run.save(str(copy), base_path=run.dir, policy="now")

    # --- what a run logs ----------------------------------------------------------------------

    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        """Append one row to metrics.jsonl and log the same values to W&B at `step`."""
        row = _redact({k: plain(v) for k, v in metrics.items()})
        self._records[METRICS].append([{"step": step, **row, "_time": time.time()}])
        if self._worker is not None and step < self._wandb_step:
            # Typically a resumed online run: W&B holds these steps from the interrupted attempt
            # and would drop them with a warning each; say it once instead.
            if not self._noted_old_steps:
                self._noted_old_steps = True
                self._say(f"W&B is at step {self._wandb_step}; earlier steps go to {METRICS} only")
            return
        self._log_to_wandb(row, step)

    def _log_to_wandb(self, row: Mapping[str, Any], step: int) -> None:
        to_wandb = {STEP_METRIC: step, **self._for_wandb(row)}
        self._wandb_soon("log", lambda run: run.log(to_wandb, step=step))
        self._wandb_step = max(step, self._wandb_step)
        self._history_keys.update(to_wandb)
        for key in list(self._pending_rows):  # kept rows join the first step logged
            self._wandb_increment(key, self._table_log[key]["columns"], [], step)

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
        if key not in self._table_log:
            self._table_log[key] = {"columns": list(columns)}
            write_atomic(self.run_dir / TABLES, json.dumps(self._table_log) + "\n")
        self._wandb_increment(key, columns, rows, step)

    def _wandb_increment(self, key: str, columns: list[str], rows: list[list[Any]],
                         step: int) -> None:
        if self._worker is None:
            return
        rows = [*self._pending_rows.pop(key, []), *rows]
        at = max(step, self._wandb_step)  # not below W&B's step, or W&B drops it; rows carry theirs
        # Old servers get every row so far (samples.jsonl) as one new version of the table: read
        # now, as the worker may run this after later rows were appended.
        so_far = None if self._incremental else [
            [r.get(c) for c in columns] for _, r in read_jsonl(self.run_dir / SAMPLES)
            if r.get("table") == key]

        def log(run: Any) -> None:
            import wandb

            if so_far is None:
                table = self._tables.get(key) or self._new_table(run, key, columns)
                for row in rows:
                    table.add_data(*row)
            else:
                table = wandb.Table(columns=list(columns), allow_mixed_types=True, data=so_far)
            run.log({key: table}, step=at)

        self._wandb_soon("table", log)
        self._wandb_step = max(at, self._wandb_step)

    def _new_table(self, run: Any, key: str, columns: list[str]) -> Any:
        """An INCREMENTAL table, new in each process: its first increment holds the rows kept
        so far. A resumed online run would otherwise continue the killed attempt's increments
        (W&B reads them from the run's summary), which may hold steps past the checkpoint."""
        import wandb

        if run.resumed and key in run.summary.keys():
            del run.summary[key]
        # Mixed types in a column (None next to str, int next to str) must not fail a log.
        table = wandb.Table(columns=list(columns), log_mode="INCREMENTAL", allow_mixed_types=True)
        self._tables[key] = table
        return table

    def log_evaluation(self, label: str, step: int | None, metrics: Mapping[str, Any],
                       parts: Sequence[Mapping[str, Any]] = (),
                       samples: Sequence[Mapping[str, Any]] = (), *, plot: bool = True) -> None:
        """One scored model of an evaluation, on the training step axis of its group.

        `step` is the training step of the checkpoint (None: the base model, which is every
        run's step 0). The numbers in `metrics` go to `evaluate/<name>` at that step (W&B's own
        step counts the models scored); a row per model plus one per part of `parts` (e.g.
        {"part": "pairs=2", "accuracy": ..., "n": ...}) to the `evaluate/results` table; the
        per-item `samples` rows, if any, to `evaluate/samples` (its own key: the training
        run's `samples` table has other columns). No key carries the label. `plot=False`: a
        checkpoint whose training step is unknown (a bare `.../final` path) goes to the tables
        only, not onto the step axis.
        """
        index = self._evaluations
        self._evaluations += 1
        numbers = {f"{EVAL_PREFIX}{k}": v for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        if plot:
            self.log({STEP_METRIC: 0 if step is None else int(step), **numbers}, index)
        results = [{"part": "all", **metrics}, *parts]
        names = dict.fromkeys(k for r in results for k in r if k != "part")
        columns = self._table_log.get(EVAL_RESULTS_KEY, {}).get("columns") or [
            "model", "global_step", "part", *names]
        self.log_table(EVAL_RESULTS_KEY, columns, [
            [label, step, *(_cell(r.get(c)) for c in columns[2:])] for r in results], index)
        if samples:
            columns = self._table_log.get(EVAL_SAMPLES_KEY, {}).get("columns") or [
                "model", "global_step", *samples[0]]
            self.log_table(EVAL_SAMPLES_KEY, columns, [
                [label, step, *(_cell(s.get(c)) for c in columns[2:])] for s in samples], index)

    def log_image(self, key: str, path: Path, step: int) -> None:
        """Mirror an image the run already wrote to its directory (a plot) to W&B."""
        at = max(step, self._wandb_step)

        def log(run: Any) -> None:
            import wandb

            run.log({key: wandb.Image(str(path))}, step=at)

        self._wandb_soon("image", log)

    # --- checkpoints --------------------------------------------------------------------------

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
            self._log_model_artifact(step, name, record["path"],
                                     _redact(state_path) if state_path else None)

    def _log_model_artifact(self, step: int, name: str, path: str, state: str | None) -> None:
        state = state or next((c[2] for c in reversed(self._checkpoints)
                               if c[0] == step and c[1] == name and c[3] == "state"), None)
        metadata = checkpoint_metadata(self.config, step, name, state, path)
        self._wandb_soon("artifact", lambda run: run.log_artifact(
            reference_artifact(model_artifact_name(self.run_id), path, metadata),
            aliases=checkpoint_aliases(step, name)))

    def log_final_checkpoint(self, path: str) -> None:
        self.set_summary({"checkpoint/final": str(path),
                          "checkpoint/artifact": f"{model_artifact_name(self.run_id)}:final"})

    def use_checkpoint(self, artifact_name: str, uri: str, metadata: Mapping[str, Any],
                       alias: str) -> None:
        """Declare a checkpoint this run reads (evaluate.py), so W&B's lineage graph links
        training run -> checkpoint -> here: online `run.use_artifact("<name>:<alias>")`, the
        version the training run logged. W&B's public API cannot declare an input offline, so
        an offline run lists it in its summary (`evaluate/inputs`); docs/wandb.md says how to
        add the link after `wandb sync`. `uri` and `metadata` describe the checkpoint."""
        self.use_artifact(f"{artifact_name}:{alias}")

    def use_artifact(self, name: str) -> None:
        """`run.use_artifact(name)` for an artifact W&B knows by name. Only an online run can
        (W&B resolves the name on its server); otherwise the name goes to the summary."""
        self.wait_for_wandb()  # W&B's start, on the worker, decides online or offline
        if self._run is None:
            return
        if self.wandb_mode != "online":
            self._inputs.append(name)
            self.set_summary({"evaluate/inputs": list(self._inputs)})
            if len(self._inputs) == 1:
                self._say(f"W&B is {self.wandb_mode}: the checkpoints this run read are listed "
                          "in its summary (evaluate/inputs), not linked as inputs "
                          "(docs/wandb.md: lineage)")
            return

        def use(run: Any) -> None:
            try:
                run.use_artifact(name)
            except Exception as e:  # e.g. the training run is not synced yet: not worth W&B
                self._say(f"W&B could not link {name} as an input ({_error(e)})")

        self._wandb_soon("use_artifact", use)

    # --- summary ------------------------------------------------------------------------------

    def summary_value(self, key: str) -> Any:
        return self._summary.get(key)

    def summary(self, **values: Any) -> None:
        self.set_summary(values)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        """Merge into the run summary: summary.json (rewritten atomically) and W&B's. Logged
        keys whose W&B summary define_metric computes (best and last) are left to W&B there."""
        values = _redact(plain(values))
        self._summary.update(values)
        write_atomic(self.run_dir / SUMMARY, json.dumps(json_safe(self._summary), indent=2)
                     + "\n")
        self._summary_to_wandb(values)

    def _summary_to_wandb(self, values: Mapping[str, Any]) -> None:
        to_wandb = {k: v for k, v in self._for_wandb(values).items()
                    if not (k in self._metric_summaries and k in self._history_keys)}
        if to_wandb:
            self._wandb_soon("summary", lambda run: run.summary.update(to_wandb))

    # --- resuming -----------------------------------------------------------------------------

    def truncate_after(self, step: int) -> None:
        """Drop records with step > `step` (metrics, checkpoints, samples): a resumed run redoes
        them. Call it right after resuming from the checkpoint saved at `step`.

        W&B then gets, from the run files, what the attempts `wandb sync` will take lack: an
        online run's server holds steps below W&B's starting step; offline, the finished
        attempts up to `step` stand and the others are set aside (the module docstring). Only
        an online run waits here for W&B's start (its starting step comes from the server).
        """
        self._keep_rows(lambda row: row.get("step", -1) <= step)
        last = self._checkpoints[-1][CHECKPOINT_COLUMNS.index("path")] if self._checkpoints \
            else None
        if self._worker is None:
            self.set_summary({"checkpoint/last": last})
            return
        if self.wandb_mode == "online":
            self.wait_for_wandb()  # and then it may have fallen back to offline
        # The server has every step below an online run's starting step.
        held = self._wandb_step - 1 if self.wandb_mode == "online" else self._held_offline(step)
        self._replay(held, step)
        self.set_summary({"checkpoint/last": last})

    def _held_offline(self, step: int) -> int:
        """The last step that the offline attempts `wandb sync` will take hold (-1: none), once
        the attempts of this run that did not finish, or hold steps past `step`, are set aside
        (another run's attempts in the same directory are left alone)."""
        def keep(attempt: dict[str, Any]) -> bool:
            if not _attempt_of(attempt["dir"], self.run_id):
                return True
            return attempt.get("finished", False) and attempt.get("last_step", step + 1) <= step

        kept = self._set_aside_attempts(keep)
        return max((a.get("last_step", 0) for a in kept if _attempt_of(a["dir"], self.run_id)),
                   default=-1)

    def _replay(self, held: int, step: int) -> None:
        """Give W&B the steps in (held, step], their checkpoint artifacts and the summary; the
        tables' kept rows join the first step this process logs (a table starts afresh in
        each process, so its first increment holds every row kept)."""
        kept_rows = [r for _, r in read_jsonl(self.run_dir / SAMPLES)]
        for key, logged in self._table_log.items():
            rows = [[r.get(c) for c in logged["columns"]] for r in kept_rows
                    if r.get("table") == key]
            if rows:
                self._pending_rows[key] = rows
        replayed = [r for r in _metric_rows(self.run_dir) if held < r["step"] <= step]
        for row in replayed:
            self._log_to_wandb({k: v for k, v in row.items() if k not in ("step", "_time")},
                               row["step"])
        for record in read_checkpoints(self.run_dir):
            if record["kind"] == "sampler" and held < record["step"] <= step:
                self._log_model_artifact(record["step"], record["name"], record["path"], None)
        if replayed:
            self._summary_to_wandb(self._summary)

    def _record_attempt(self, directory: str) -> None:
        self._attempt = directory
        with self._ledger:
            attempts = [a for a in read_attempts(self.run_dir) if a["dir"] != directory]
            write_attempts(self.run_dir, [*attempts, {"dir": directory, "finished": False}])

    def _finish_attempt(self) -> None:
        """This process's W&B files are complete: `wandb sync` may take them."""
        if self._attempt is None:
            return
        with self._ledger:
            attempts = read_attempts(self.run_dir)
            for attempt in attempts:
                if attempt["dir"] == self._attempt:
                    attempt.update(finished=True, last_step=self._wandb_step)
            write_attempts(self.run_dir, attempts)

    def _set_aside_attempts(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Move the offline attempts before this process's that `keep` refuses (or that
        wandb_attempts.json does not know) to wandb/incomplete/, where `wandb sync` does not
        look; returns the earlier attempts kept."""
        wandb_dir = self.run_dir / "wandb"
        earlier = self._earlier
        with self._ledger:
            known = {a["dir"]: a for a in read_attempts(self.run_dir)}
            kept, moved = [], []
            for path in sorted(wandb_dir.glob("offline-run-*")):
                attempt = known.get(path.name, {"dir": path.name})
                if earlier is not None and path.name not in earlier:
                    continue  # this process's own
                if path.name in known and keep(attempt):
                    kept.append(attempt)
                    continue
                (wandb_dir / INCOMPLETE_DIR).mkdir(exist_ok=True)
                target = wandb_dir / INCOMPLETE_DIR / path.name
                if target.exists():  # the same attempt set aside before (a copy the move left)
                    shutil.rmtree(target)
                path.rename(target)
                moved.append(path.name)
            if moved:
                write_attempts(self.run_dir, [a for a in known.values() if a["dir"] not in moved])
        if moved:
            self._say(f"set aside {len(moved)} W&B attempt(s) that did not finish or hold steps "
                      f"this run redoes ({wandb_dir / INCOMPLETE_DIR}); what they held is "
                      "logged again from the run files")
        return kept

    def _whole_run_summaries(self, run: Any) -> None:
        """The best-and-last summaries over every step of the run (metrics.jsonl), not only the
        steps this process logged: W&B computes them per process, so a resumed run's would
        forget the best value of the attempts before it. Sent after the last step is committed
        (W&B would otherwise recompute the key over this process's steps at the end)."""
        summaries = whole_run_summaries(_metric_rows(self.run_dir), self._metric_summaries)
        try:
            if summaries and self._history_keys:  # commit the last step this process logged
                run.log({}, step=self._wandb_step, commit=True)
            if summaries:
                run.summary.update(summaries)
        except Exception as e:  # W&B's own summaries stand; the run must still finish
            self._say(f"W&B whole-run summaries failed ({_error(e)})")

    def _keep_rows(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        for record_log in self._records.values():
            record_log.close()  # the rewrite replaces the file: no handle may outlive it
        keep_rows(self.run_dir, keep)
        self._checkpoints = [
            [r.get(c) for c in CHECKPOINT_COLUMNS] for r in read_checkpoints(self.run_dir)
        ]

    # --- the end ------------------------------------------------------------------------------

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
        self._wandb("summary", self._whole_run_summaries)
        if status == "interrupted":  # W&B's state for a run that will be resumed
            self._wandb("mark_preempting", lambda run: run.mark_preempting())
        self._wandb("finish", lambda run: run.finish(exit_code=exit_code))
        if self._run is not None:
            self._finish_attempt()
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

    # --- the W&B worker -----------------------------------------------------------------------

    def _start_worker(self) -> None:
        """W&B calls run in order on one worker thread, so the loop does not wait for W&B (a
        step's log, a table, an artifact: ~2-30 ms each). The run's files are written before
        the call is queued: a crash loses nothing but what W&B had not yet been given, which a
        resumed run replays from the run files. W&B's own start (importing wandb, starting its
        service, init: ~1 s of wall time) is the worker's first call, so it overlaps what the
        script does meanwhile (connecting, loading the model); calls queue up behind it."""
        if self.wandb_mode != "disabled":
            self._calls.put(("init", None))
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
            what, call = item
            try:
                if call is None:  # the first call: W&B's start
                    self._run = self._init_wandb(*self._init_args)
                else:
                    self._wandb(what, call)
            except BaseException as e:  # noqa: BLE001 - a dead worker would hang finish()
                self._run = None
                self._say(f"W&B {what} failed ({_error(e)}); W&B is off for the rest of "
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
    # tinker:// and local:// are schemes W&B cannot checksum: the URI is the identity.
    artifact.add_reference(uri, name="weights", checksum=False)
    return artifact


def whole_run_summaries(rows: Sequence[Mapping[str, Any]], summaries: Mapping[str, str]
                        ) -> dict[str, dict[str, float]]:
    """{key: {"max"|"min": ..., "last": ...}} over the finite values of `rows`, in the shape
    W&B's define_metric summaries have, for each key of `summaries` ("max,last", ...)."""
    result = {}
    for key, spec in summaries.items():
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)
                  and not isinstance(row[key], bool) and math.isfinite(row[key])]
        if values:
            result[key] = {part: {"min": min(values), "max": max(values), "last": values[-1]}[part]
                           for part in spec.split(",")}
    return result


def _attempt_of(directory: str, run_id: str) -> bool:
    """Whether an `offline-run-<time>-<id>[-N]` directory is an attempt of run `run_id`."""
    return re.search(rf"-{re.escape(run_id)}(-\d+)?$", directory) is not None


def _metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(run_dir / METRICS)]


def _cell(value: Any) -> Any:
    """A table cell: plain values as they are, anything else (a dict, a list) as JSON text."""
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(
        plain(value), default=str)


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


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
