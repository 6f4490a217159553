"""What every script does around its loop: name the run, open its tracker, end it cleanly."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from common import rundir
from common.checkpoints import checkpoint_name, last_state, save_checkpoint
from common.config import ConfigError, as_dict
from common.secrets import redact, redact_name
from common.tracking import CONFIG, Tracker, read_run_config, run_name

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
    run_dir = Path(cfg.log_dir) if cfg.log_dir else RUNS_DIR / redact_name(name)
    if cfg.resume and not (run_dir / CONFIG).exists():
        raise ConfigError(f"--resume: no run in {run_dir} to continue")
    rundir.lock(run_dir)
    saved = last_state(run_dir)
    config = as_dict(cfg)
    if saved or cfg.resume:
        changed = rundir.check_same_run(run_dir, read_run_config(run_dir), redact(config),
                                        may_change)
        print(redact(f"continuing the run in {run_dir} after step {saved['step'] if saved else 0}"
                     " (use a new --log_dir to start over)"))
        if changed:
            print(redact("continuing with changed settings: " + "; ".join(
                f"{k} {old} -> {new}" for k, (old, new) in changed.items())))
    group = redact(cfg.wandb_group) if cfg.wandb_group else name
    return Tracker(run_dir, project=cfg.wandb_project, mode=cfg.wandb_mode, run_name=name,
                   # Without --wandb_group the run is its own group, so evaluations join it.
                   group=group, job_type=job_type, config=config,
                   resume=cfg.resume or saved is not None)


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
    """Ctrl-C finishes the current step, saves a checkpoint and ends the run cleanly (W&B run
    finished, status "interrupted"); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> GracefulStop:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint "
              "(Ctrl-C again to stop at once)", flush=True)


def stop_here(training_client: Any, tracker: Tracker, step: int) -> None:
    """After an interrupted step: save it (unless just saved) and mark the run interrupted."""
    saved = last_state(tracker.run_dir)
    if not saved or saved["step"] != step:
        save_checkpoint(training_client, tracker, step, checkpoint_name(step))
    tracker.set_status("interrupted")
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
    # The warning goes on the last line itself: it is the line a user reads.
    tail = f"; WARNING: {warning}" if warning else ""
    print(f"done: {values}; final checkpoint {final}; run files in {tracker.run_dir}{tail}")
