"""What every training script does around its loop: claim the run directory, connect, track,
handle signals, start from the right step, and end cleanly.

    with start_run(cfg, "train_rl", job_type="rl") as run:
        for step in run.steps(total_steps, desc="rl"):  # a bar; Ctrl-C: saved, stops
            ...                                         # the algorithm, on run.training_client
            run.log(metrics, step)                      # + the step's tokens and cost
            run.save_if_due(step)                       # after the record: a crash redoes it
        run.finish(metrics, headline_keys)

A run directory belongs to one script and one run: `claim_run_dir` locks it for this process
(`fcntl.flock`, released by the OS on any exit, SIGKILL included) and, for a rerun, refuses
another script's directory, settings that change what the run is, a data file whose content
changed, and run files that lost steps; all before anything heavy is imported or written. The
flags in MAY_CHANGE (how long, how often to save or log, where to track) may change on a rerun.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tqdm import tqdm

from common.backend import connect
from common.checkpoints import (
    checkpoint_name,
    last_checkpoint,
    save_checkpoint,
    start_training_client,
)
from common.config import ConfigError, as_dict
from common.costs import CostMeter
from common.runfiles import (
    ATTEMPTS,
    CHECKPOINTS,
    CONFIG,
    GIT_DIFF,
    GROUP,
    METRICS,
    RUN_ID,
    RUN_NAME,
    SAMPLES,
    SUMMARY,
    TABLES,
    read_checkpoints,
    read_group,
    read_metrics,
    read_run_config,
    read_summary,
)
from common.secrets import redact, redact_name
from common.tracking import (
    PROGRESS_REDRAW_S,
    Tracker,
    default_group,
    default_project,
    requeued_run_dir,
    run_name,
)

RUNS_DIR = Path("runs")
LOCK = ".lock"
# Flags any script may change when it continues a run: its length, how often it saves,
# evaluates and logs, and where it is tracked. Scripts add their own.
MAY_CHANGE = ("max_steps", "epochs", "save_every", "sample_every", "eval_every", "resume",
              "log_dir", "run_name", "wandb_project", "wandb_mode", "wandb_group", "base_url",
              "dry_run", "threads", "wandb_tags", "wandb_notes", "wandb_entity")
# What a run directory may hold besides its own files: a directory holding anything else is
# not a run directory, and a script will not write into it.
RUN_FILES = (LOCK, "wandb", "rollouts", CONFIG, METRICS, CHECKPOINTS, SAMPLES, SUMMARY, RUN_ID,
             GROUP, TABLES, RUN_NAME, ATTEMPTS, GIT_DIFF, "eval.json", "eval.md", "accuracy.png",
             "stdout.log")  # the offline sweep runner's log of the run

_held: dict[Path, IO[str]] = {}


class TrainingDiverged(RuntimeError):
    """A logged number became NaN or infinite; the last good checkpoint is kept."""


class RunDirBusy(ConfigError):
    """Another live process holds the run directory."""


class AlreadyFinished(Exception):
    """A rerun of a finished run with the same settings: nothing to do (exit 0)."""


def lock(run_dir: Path) -> None:
    """Hold `run_dir` for this process; RunDirBusy (naming the holder's PID) if another has it.
    A lock this process already holds (tests call `main` several times) is reused."""
    key = Path(run_dir).resolve()
    if key in _held and not _held[key].closed:
        return
    key.mkdir(parents=True, exist_ok=True)
    handle = open(key / LOCK, "a+")  # noqa: SIM115 - held open on purpose until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder_pid(handle)
        handle.close()
        raise RunDirBusy(f"--log_dir {run_dir}: in use by another run (PID {holder}); wait for "
                         "it to end, or use another --log_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = handle


def _holder_pid(handle: IO[str]) -> str:
    """The PID the lock's holder wrote. The holder writes it just after taking the lock, so a
    run started at the same moment may find the file still empty: wait a little for it."""
    deadline = time.monotonic() + 5.0
    while True:
        handle.seek(0)
        holder = handle.read().strip()
        if holder or time.monotonic() > deadline:
            return holder or "unknown"
        time.sleep(0.02)


def run_dir_of(cfg: Any, name: str) -> Path:
    """--log_dir, else runs/<name>; refuses a path that cannot be a run directory."""
    if cfg.log_dir is not None and not str(cfg.log_dir).strip():
        raise ConfigError("--log_dir: empty; name a directory (default: runs/<run name>)")
    # `wandb agent` reruns a requeued run's argv with its WANDB_RUN_ID: the same directory.
    run_dir = Path(cfg.log_dir) if cfg.log_dir else (requeued_run_dir(RUNS_DIR)
                                                     or RUNS_DIR / redact_name(name))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--log_dir {run_dir}: is a file, not a directory")
    return run_dir


def claim_run_dir(run_dir: Path, script: str, config: Mapping[str, Any],
                  may_change: Iterable[str] = ()) -> tuple[dict[str, Any], bool]:
    """Lock `run_dir` for `script` and check a rerun is the same run. Returns (recorded config,
    whether the directory already holds a run). ConfigError, naming what is wrong, for another
    script's directory, a foreign directory, changed settings or lost records."""
    recorded = check_owner(run_dir, script)
    if not recorded:
        return {}, False
    check_same_run(run_dir, recorded, config, may_change)
    saved = [c["step"] for c in read_checkpoints(run_dir) if c.get("kind") == "state"]
    logged = {row["step"] for row in read_metrics(run_dir)}
    if saved and not set(range(1, max(saved) + 1)) <= logged:
        missing = sorted(set(range(1, max(saved) + 1)) - logged)
        raise ConfigError(f"--log_dir {run_dir}: {METRICS} lacks steps {missing[:5]} before the "
                          f"last checkpoint (step {max(saved)}); the run's records are damaged: "
                          "restore the file or start over with a new --log_dir")
    return recorded, True


def check_owner(run_dir: Path, script: str) -> dict[str, Any]:
    """Lock `run_dir` and check it is empty or `script`'s own; returns its recorded config."""
    lock(run_dir)
    recorded = read_run_config(run_dir)
    foreign = sorted(p.name for p in run_dir.iterdir()
                     if p.name not in RUN_FILES and not p.name.endswith(".tmp"))
    if foreign and not recorded:
        raise ConfigError(f"--log_dir {run_dir}: not a run directory (it holds {foreign[:3]}); "
                          "use a new or empty directory")
    owner = recorded.get("script") or next(  # runs recorded before the script was
        (name for key, name in (("group_size", "train_rl"), ("epochs", "train_sft"),
                                ("checkpoint", "evaluate")) if key in recorded), None)
    if recorded and owner != script:
        raise ConfigError(f"--log_dir {run_dir}: holds a {owner or 'another script'} run; "
                          f"{script} writes its own (use a new --log_dir)")
    return recorded


def check_same_run(run_dir: Path, recorded: Mapping[str, Any], current: Mapping[str, Any],
                   may_change: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Refuse a rerun whose config changes what the run is; return the allowed changes."""
    allowed = {*MAY_CHANGE, *may_change}
    changed = {k: (recorded[k], v) for k, v in current.items()
               if k in recorded and not _same(recorded[k], v)}
    refused = {k: v for k, v in changed.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"--{k} {_show(new)} (the run has {_show(old)})"
                           for k, (old, new) in refused.items())
        raise ConfigError(f"--log_dir {run_dir} holds a run with other settings: {listed}. "
                          "Continue it with its own settings, or use a new --log_dir")
    return {k: v for k, v in changed.items() if k in allowed}


def _same(a: Any, b: Any) -> bool:
    numbers = (float, int)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool | str):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Every number a step logs is finite, or the run stops before the step is logged or saved:
    a NaN anywhere (a loss, a grad norm, a held-out loss) must not become "last good"."""
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainingDiverged(f"{key} is {value} at step {step}; stopping before this step "
                                   "is logged or saved. The last good checkpoint is the last one "
                                   "in checkpoints.jsonl; try a lower --lr.")


def due(step: int, every: int, last_step: int) -> bool:
    """True every `every` steps (never when 0) and always at the last step."""
    return step == last_step or (every > 0 and step % every == 0)


class GracefulStop:
    """SIGINT (Ctrl-C), SIGTERM (`wandb agent`, Slurm, `docker stop`) and SIGHUP finish the
    steps under way (the current one and any sent ahead), save a checkpoint and end the run as
    stopped: exit code 128 + the signal (130, 143, 129), in W&B too, marked preempting. A
    second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> GracefulStop:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: finishing the steps under way, then saving a checkpoint "
              "(Ctrl-C again to stop at once)", flush=True)


class Interrupted(KeyboardInterrupt):
    """A signal that stops the process at once; the exit code is 128 + the signal."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted (for work with no step to finish first)."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, stop) for s in GracefulStop.SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Run:
    """A training run in progress: its client, tracker, cost meter and where it starts."""

    cfg: Any
    tracker: Tracker
    training_client: Any
    tokenizer: Any
    meter: CostMeter
    stop: GracefulStop
    done_steps: int  # steps a continued run already has (0 for a new run)
    last_metrics: dict[str, Any]  # the last logged row of a continued run ({} for a new run)
    before_save: list[Callable[[int], None]] = field(default_factory=list)
    """Called with the step before its training state is saved (state a resume also needs)."""
    total_steps: int = 0
    sent_through: int = 0
    """The last step whose calls went to the backend (train_sft sends steps ahead): a signal
    ends the loop after that step, so the checkpoint holds the weights of the step it names."""
    stopped_early: bool = False  # a signal ended the loop before the last step
    _bar: Any = None

    def steps(self, total_steps: int, desc: str) -> Iterator[int]:
        """Steps done_steps+1 .. total_steps under a progress bar. After a step in which a
        signal arrived (or after the last step already sent, `sent_through`), saves a
        checkpoint and ends the loop (the run then exits with the signal's code once its files
        are closed)."""
        self.total_steps = total_steps
        self._bar = tqdm(range(self.done_steps + 1, total_steps + 1), initial=self.done_steps,
                         total=total_steps, desc=desc, dynamic_ncols=True,
                         mininterval=PROGRESS_REDRAW_S)
        for step in self._bar:
            yield step
            if self.stop.requested and step < total_steps and self.sent_through <= step:
                if (last_checkpoint(self.tracker.run_dir, "state") or {}).get("step") != step:
                    self._save(step, checkpoint_name(step))
                self.tracker.stopped(self.stop.exit_code)
                self.tracker.summary(interrupted_at_step=step)
                print(f"stopped after step {step}; continue with: --resume --log_dir "
                      f"{self.tracker.run_dir}")
                self.stopped_early = True
                return

    def show(self, **values: str) -> None:
        """Headline numbers beside the progress bar."""
        self._bar.set_postfix(**values, refresh=False)  # drawn with the next redraw

    def log(self, metrics: dict[str, float], step: int) -> None:
        """The step's record, with its tokens and cost (and tokens per second when timed)."""
        check_finite(metrics, step)
        metrics.update(self.meter.step())
        if metrics.get("time/step"):
            metrics["throughput/tokens_per_s"] = (
                metrics["tokens/sampled"] + metrics["tokens/trained"]) / metrics["time/step"]
        self.tracker.log(metrics, step)

    def saves_at(self, step: int) -> bool:
        """A checkpoint is due after this step: every --save_every steps, and at the end."""
        return due(step, self.cfg.save_every, self.total_steps)

    def save_if_due(self, step: int) -> None:
        """The step's checkpoint when one is due (saves_at), `final` at the end."""
        if self.saves_at(step):
            path = self._save(step, "final" if step == self.total_steps
                              else checkpoint_name(step))
            if step == self.total_steps:
                self.tracker.log_final_checkpoint(path)

    def finish(self, metrics: dict[str, float], keys: list[str], warning: str | None = None
               ) -> None:
        """Totals into the run summary; the last console lines: tokens and cost, the headline
        numbers, where the weights are, and `warning` (e.g. "trained on nothing")."""
        if not metrics:  # nothing left to do: the run's last record
            metrics = {k: v for k, v in self.last_metrics.items() if k not in ("step", "_time")}
        tracker = self.tracker
        final = last_checkpoint(tracker.run_dir, "sampler")
        if final and final["name"] == "final" and not tracker.summary_value("checkpoint/final"):
            tracker.log_final_checkpoint(final["path"])  # killed before its summary was written
        tracker.set_summary({**metrics, **self.meter.totals()})
        print(self.meter.summary_line())
        values = ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
        which = ("final checkpoint" if final and final["name"] == "final"
                 else "last saved checkpoint")  # an interrupted run has no final one
        where = final["path"] if final else "none saved"
        artifact = tracker.summary_value("checkpoint/artifact")
        named = f" (W&B artifact {artifact})" if artifact and tracker.wandb_mode != "disabled" \
            else ""
        tail = f"; WARNING: {warning}" if warning else ""  # on the line a user reads
        print(f"done: {values}; {which} {where}{named}; run files in {tracker.run_dir}{tail}")

    def _save(self, step: int, name: str) -> str:
        for hook in self.before_save:
            hook(step)
        return save_checkpoint(self.training_client, self.tracker, step, name)


@dataclass(frozen=True)
class Claim:
    """A run directory checked for a script: what `claim_run` found, for `start_run`."""

    cfg: Any
    script: str
    name: str
    run_dir: Path
    config: dict[str, Any]
    may_change: tuple[str, ...]


def claim_run(cfg: Any, script: str, may_change: tuple[str, ...] = (),
              recorded: Mapping[str, Any] | None = None) -> Claim:
    """Check the run directory before anything heavy loads (data, the backend), so a refused or
    finished rerun says so in about a second. `recorded`: what else defines the run (the data
    files' fingerprints), kept in its config. An existing directory is locked now; a new one
    when the run starts."""
    name = redact(cfg.run_name or run_name(script, cfg.model, cfg.lr, cfg.batch_size, cfg.seed))
    run_dir = run_dir_of(cfg, name)
    config = {**as_dict(cfg), "script": script, **(recorded or {})}
    if cfg.resume and not (run_dir / CONFIG).exists():
        raise ConfigError(f"--resume: no run in {run_dir} to continue")
    claim = Claim(cfg, script, name, run_dir, config, may_change)
    if run_dir.exists():
        previous, continuing = claim_run_dir(run_dir, script, redact(config), may_change)
        changes = check_same_run(run_dir, previous, redact(config), may_change) if continuing \
            else {}
        summary = read_summary(run_dir) if continuing else {}
        if summary.get("status") == "finished" and not set(changes) - {"resume", "dry_run"}:
            final = last_checkpoint(run_dir, "sampler")
            raise AlreadyFinished(f"the run in {run_dir} already finished (step "
                                  f"{summary.get('progress/step', '?')}); final checkpoint "
                                  f"{final['path'] if final else 'none'}. Pass a larger "
                                  "--max_steps to continue it, or a new --log_dir to start over")
    return claim


@contextmanager
def start_run(claim: Claim, job_type: str) -> Iterator[Run]:
    """The cost meter, backend, tracker, signal handling and training client, in the order that
    matters: a bad price file fails before anything is spent; the run directory is locked (and
    checked again: another process may have started a run there) before anything is written;
    the client loads a continued run's state before the records after it are dropped. Raises
    SystemExit with the signal's exit code, after the files are closed, if a signal stopped the
    run; the backend session is finished last (success, errored or interrupted)."""
    cfg, run_dir = claim.cfg, claim.run_dir
    meter = CostMeter(cfg.model, cfg.backend)
    with connect(cfg.backend, cfg.base_url, cfg.threads) as service:
        _, continuing = claim_run_dir(run_dir, claim.script, redact(claim.config),
                                      claim.may_change)
        tracker = open_tracker(cfg, run_dir, claim.name, job_type, claim.config, continuing,
                               claim.may_change)
        with tracker, GracefulStop() as stop:
            training_client, done_steps = start_training_client(service, cfg, run_dir)
            tracker.truncate_after(done_steps)  # a continued run redoes what came after its state
            last_metrics = (read_metrics(run_dir) or [{}])[-1]
            meter.restore(last_metrics)
            run = Run(cfg, tracker, training_client, training_client.get_tokenizer(), meter, stop,
                      done_steps, last_metrics)
            yield run
        if run.stopped_early:  # stopped by a signal, cleanly: the checkpoint is saved
            raise SystemExit(stop.exit_code)


def open_tracker(cfg: Any, run_dir: Path, name: str, job_type: str, config: dict[str, Any],
                 continuing: bool, may_change: tuple[str, ...]) -> Tracker:
    """The run's Tracker; a directory that holds a run is continued (same W&B run). Names and
    the group are redacted: a secret in --run_name must not reach W&B, a path or the console."""
    if continuing:
        saved = last_checkpoint(run_dir, "state")
        print(redact(f"continuing the run in {run_dir} after step {saved['step'] if saved else 0}"
                     " (use a new --log_dir to start over)"))
        changed = check_same_run(run_dir, read_run_config(run_dir), redact(config), may_change)
        if changed:
            print(redact("continuing with changed settings: " + "; ".join(
                f"{k} {old} -> {new}" for k, (old, new) in changed.items())))
    # Without --wandb_group: the group it had (a continued run), a warm start's (warm start ->
    # RL is one experiment), else its own; evaluations join it.
    warm_start = Path(cfg.load_checkpoint) if getattr(cfg, "load_checkpoint", None) else None
    group = (cfg.wandb_group or (read_group(run_dir) if continuing else None)
             or (read_group(warm_start) if warm_start and warm_start.is_dir() else None)
             or default_group(name))
    return Tracker(run_dir, project=cfg.wandb_project or default_project(cfg.backend),
                   mode=cfg.wandb_mode, run_name=name, group=redact(group), job_type=job_type,
                   config=config, resume=continuing, entity=cfg.wandb_entity,
                   tags=cfg.wandb_tags, notes=cfg.wandb_notes,
                   incremental_tables=cfg.wandb_incremental_tables)

