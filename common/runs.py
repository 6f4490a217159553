"""What every script does around its loop: name the run, open its tracker, end it cleanly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common.config import as_dict
from common.tracking import Tracker, run_name

RUNS_DIR = Path("runs")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def open_tracker(cfg: Any, script: str, job_type: str) -> Tracker:
    """The run's Tracker; `--resume` reopens the run in `--log_dir` (same W&B run)."""
    name = cfg.run_name or run_name(script, cfg.model, cfg.lr, cfg.batch_size, cfg.seed)
    run_dir = Path(cfg.log_dir) if cfg.log_dir else RUNS_DIR / name
    return Tracker(run_dir, project=cfg.wandb_project, mode=cfg.wandb_mode, run_name=name,
                   group=cfg.wandb_group, job_type=job_type, config=as_dict(cfg),
                   resume=cfg.resume)


def check_finite(value: float, name: str, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"{name} is {value} at step {step}; stopping. The last good "
                               "checkpoint is in checkpoints.jsonl; try a lower --lr.")


def due(step: int, every: int, last_step: int) -> bool:
    """True every `every` steps (never when 0) and always at the last step."""
    return step == last_step or (every > 0 and step % every == 0)
