"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay to zero."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "linear", "cosine"]


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: Schedule,
          warmup_steps: int = 0) -> float:
    """The learning rate of 1-based `step` out of `total_steps`."""
    if warmup_steps and step <= warmup_steps:
        return peak_lr * step / warmup_steps
    if schedule == "constant":
        return peak_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps - 1) / decay_steps)
    if schedule == "linear":
        return peak_lr * (1.0 - progress)
    if schedule == "cosine":
        return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}")
