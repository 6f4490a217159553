"""What every script does around its loop: name the run, open its tracker, end it cleanly.

A training script's setup is one call:

    with start_run(cfg, "train_rl", job_type="rl") as run:
        for step in run.steps(total_steps, desc="rl"):  # a bar; Ctrl-C: saved, stops
            ...                                   # the algorithm, on run.training_client
            run.log(metrics, step)                # + the step's tokens and cost (run.meter)
            run.save_if_due(step)                 # after the record: a crash redoes the step
        run.finish(metrics, headline_keys)
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from common import rundir
from common.backend import connect
from common.checkpoints import (
    checkpoint_name,
    last_checkpoint,
    last_state,
    save_checkpoint,
    start_training_client,
)
from common.config import ConfigError, as_dict
from common.costs import CostMeter, last_logged_metrics
from common.runfiles import CONFIG, read_group, read_run_config
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


class TrainingDiverged(RuntimeError):
    """The loss or grad norm became NaN or infinite; the last good checkpoint is kept."""


def open_tracker(cfg: Any, script: str, job_type: str, may_change: tuple[str, ...] = ()
                 ) -> Tracker:
    """The run's Tracker. A run directory that holds a saved state is continued (same W&B run):
    `--resume`, or rerunning the same command with the same `--log_dir`, picks up where it was.

    The directory is locked for this process first (a second run on it fails, naming the
    holder's PID), and a continued run must have the same settings as the recorded one, except
    `may_change` and rundir.MAY_CHANGE (see common.rundir). Nothing in the directory changes
    before both checks pass. Names and the group are redacted: a secret in --run_name must not
    reach W&B, a directory name or the console.
    """
    name = redact(cfg.run_name or run_name(script, cfg.model, cfg.lr, cfg.batch_size, cfg.seed))
    run_dir = Path(cfg.log_dir) if cfg.log_dir else (requeued_run_dir(RUNS_DIR)
                                                     or RUNS_DIR / redact_name(name))
    if cfg.resume and not (run_dir / CONFIG).exists():
        raise ConfigError(f"--resume: no run in {run_dir} to continue")
    rundir.lock(run_dir)
    saved = last_state(run_dir)
    config = as_dict(cfg)
    continuing = cfg.resume or saved is not None
    if continuing:
        changed = rundir.check_same_run(run_dir, read_run_config(run_dir), redact(config),
                                        may_change)
        print(redact(f"continuing the run in {run_dir} after step {saved['step'] if saved else 0}"
                     " (use a new --log_dir to start over)"))
        if changed:
            print(redact("continuing with changed settings: " + "; ".join(
                f"{k} {old} -> {new}" for k, (old, new) in changed.items())))
    # Without --wandb_group: the group it had (a continued run), a warm start's (warm start ->
    # RL is one experiment), else its own; evaluations join it.
    group = (cfg.wandb_group or (read_group(run_dir) if continuing else None)
             or warm_start_group(cfg) or default_group(name))
    return Tracker(run_dir, project=cfg.wandb_project or default_project(cfg.backend),
                   mode=cfg.wandb_mode, run_name=name, group=redact(group), job_type=job_type,
                   config=config, resume=continuing,
                   entity=cfg.wandb_entity, tags=cfg.wandb_tags, notes=cfg.wandb_notes,
                   incremental_tables=cfg.wandb_incremental_tables)


def warm_start_group(cfg: Any) -> str | None:
    """The W&B group of the run directory named by --load_checkpoint, if it recorded one."""
    source = getattr(cfg, "load_checkpoint", None)
    return read_group(Path(source)) if source and Path(source).is_dir() else None


def check_finite(value: float, name: str, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"{name} is {value} at step {step}; stopping before this step is "
                               "logged or saved. The last good checkpoint is the last one in "
                               "checkpoints.jsonl; try a lower --lr.")


def check_update(metrics: dict[str, float], step: int) -> None:
    """The step's update is usable: its loss and the optimizer's grad norm are finite.

    The loss is computed before the update, so a finite loss alone does not make the updated
    weights good: a non-finite grad norm means the step wrote NaN/inf into them. Called before
    the step is logged or checkpointed, so a diverged update never becomes "last good".
    """
    for key in ("train/loss", "train/grad_norm"):
        if key in metrics:
            check_finite(float(metrics[key]), key, step)


def due(step: int, every: int, last_step: int) -> bool:
    """True every `every` steps (never when 0) and always at the last step."""
    return step == last_step or (every > 0 and step % every == 0)


class GracefulStop:
    """SIGINT (Ctrl-C), SIGTERM (`wandb agent`, Slurm, `docker stop`) and SIGHUP finish the
    current step, save a checkpoint and end the run as stopped: exit code 128 + the signal
    (130, 143, 129), in W&B too, marked preempting. A second signal stops at once."""

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
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: finishing this step, then saving a checkpoint "
              "(Ctrl-C again to stop at once)", flush=True)


def stop_here(training_client: Any, tracker: Tracker, step: int,
              stop: GracefulStop | None = None) -> None:
    """After an interrupted step: save it (unless just saved) and mark the run stopped, so it
    ends with the signal's exit code (W&B: not "finished", resumable)."""
    saved = last_state(tracker.run_dir)
    if not saved or saved["step"] != step:
        save_checkpoint(training_client, tracker, step, checkpoint_name(step))
    tracker.stopped(stop.exit_code if stop else 130)
    tracker.summary(interrupted_at_step=step)
    print(f"stopped after step {step}; continue with: --resume --log_dir {tracker.run_dir}")


def save_if_due(training_client: Any, tracker: Tracker, step: int, every: int,
                last_step: int) -> None:
    """The step's checkpoint when one is due: `every` steps, and `final` at the last step."""
    if not due(step, every, last_step):
        return
    name = "final" if step == last_step else checkpoint_name(step)
    path = save_checkpoint(training_client, tracker, step, name)
    if step == last_step:
        tracker.log_final_checkpoint(path)


def end_of_run(tracker: Tracker, meter: Any, metrics: dict[str, float], keys: list[str],
               warning: str | None = None) -> None:
    """Totals into the run summary; the last console lines: tokens and cost, headline numbers
    and where the weights are, and `warning` (e.g. "trained on nothing") where there is one."""
    tracker.set_summary({**metrics, **meter.totals()})
    print(meter.summary_line())
    values = ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
    final = tracker.summary_value("checkpoint/final")
    kind = "final" if final else "last saved"  # an interrupted run has no final one
    final = final or tracker.summary_value("checkpoint/last")
    artifact = tracker.summary_value("checkpoint/artifact")
    named = f" (W&B artifact {artifact})" if artifact and tracker.wandb_mode != "disabled" else ""
    # The warning goes on the last line itself: it is the line a user reads.
    tail = f"; WARNING: {warning}" if warning else ""
    print(f"done: {values}; {kind} checkpoint {final}{named}; run files in {tracker.run_dir}{tail}")


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
    stopped_early: bool = False  # a signal ended the loop before the last step
    _bar: Any = None

    def steps(self, total_steps: int, desc: str) -> Iterator[int]:
        """Steps done_steps+1 .. total_steps under a progress bar. After a step in which a
        signal arrived, saves a checkpoint and ends the loop (the run then exits with the
        signal's code once its files are closed)."""
        self.total_steps = total_steps
        self._bar = tqdm(range(self.done_steps + 1, total_steps + 1), initial=self.done_steps,
                         total=total_steps, desc=desc, dynamic_ncols=True,
                         mininterval=PROGRESS_REDRAW_S)
        for step in self._bar:
            yield step
            if self.stop.requested and step < total_steps:
                self._save_hooks(step)
                stop_here(self.training_client, self.tracker, step, self.stop)
                self.stopped_early = True
                return

    def show(self, **values: str) -> None:
        """Headline numbers beside the progress bar."""
        self._bar.set_postfix(**values, refresh=False)  # drawn with the next redraw

    def log(self, metrics: dict[str, float], step: int) -> None:
        """The step's record, with its tokens and cost from the meter (and tokens per second
        when the step is timed)."""
        metrics.update(self.meter.step())
        if metrics.get("time/step"):
            metrics["throughput/tokens_per_s"] = (
                metrics["tokens/sampled"] + metrics["tokens/trained"]) / metrics["time/step"]
        self.tracker.log(metrics, step)

    def save_if_due(self, step: int) -> None:
        if due(step, self.cfg.save_every, self.total_steps):
            self._save_hooks(step)
        save_if_due(self.training_client, self.tracker, step, self.cfg.save_every,
                    self.total_steps)

    def finish(self, metrics: dict[str, float], keys: list[str], warning: str | None = None
               ) -> None:
        if not metrics:  # nothing left to do (a rerun of a finished run): its last record
            metrics = {k: v for k, v in self.last_metrics.items() if k not in ("step", "_time")}
        final = last_checkpoint(self.tracker.run_dir, "sampler")
        if final and final["name"] == "final" and not self.tracker.summary_value(
                "checkpoint/final"):  # killed between the final checkpoint and its summary
            self.tracker.log_final_checkpoint(final["path"])
        end_of_run(self.tracker, self.meter, metrics, keys, warning)

    def _save_hooks(self, step: int) -> None:
        for hook in self.before_save:
            hook(step)


@contextmanager
def start_run(cfg: Any, script: str, job_type: str, may_change: tuple[str, ...] = ()
              ) -> Iterator[Run]:
    """Meter, backend, tracker, signal handling and the training client, in the order that
    matters: a bad price file fails before anything is spent; the run directory is locked and
    checked before the client loads its saved state; a continued run drops the records after
    its checkpoint before the meter reads its totals back. Raises SystemExit with the signal's
    exit code after the files are closed if a signal stopped the run; the backend session is
    finished last (success, errored or interrupted)."""
    meter = CostMeter(cfg.model, cfg.backend)
    with connect(cfg.backend, cfg.base_url) as service:
        tracker = open_tracker(cfg, script, job_type=job_type, may_change=may_change)
        with tracker, GracefulStop() as stop:
            training_client, done_steps = start_training_client(service, cfg, tracker.run_dir)
            tracker.truncate_after(done_steps)  # a continued run redoes what came after its state
            last_metrics = last_logged_metrics(tracker.run_dir)
            meter.restore(last_metrics)
            run = Run(cfg, tracker, training_client, training_client.get_tokenizer(), meter, stop,
                      done_steps, last_metrics)
            yield run
        if run.stopped_early:  # stopped by a signal, cleanly: the checkpoint is saved
            raise SystemExit(stop.exit_code)
