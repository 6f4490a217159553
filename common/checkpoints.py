"""Checkpoint names, saving both kinds at once, and where a run starts (fresh, warm, resumed).

A checkpoint after step S is named f"{S:06d}" (the last one "final") and saved twice: the full
training state (weights + optimizer, for resume) and sampler weights (for evaluate.py). Every
script derives its data position and RNG streams from the step number, so the step in
checkpoints.jsonl is the whole resume state beside the weights.

Order of records (what a crash at any point leaves): the loop logs a step's metrics before its
checkpoint, and the checkpoint's sampler record before its state record. Resume starts after the
last state record and drops every record after it, so a step whose checkpoint has no state
record yet is redone, and none is lost or written twice. A latest state that cannot be loaded
(deleted, cut short) falls back to the one before it, with a warning, and redoes the steps after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.backend import is_refusal, refusal_reason
from common.config import ConfigError
from common.runfiles import read_checkpoints
from common.secrets import redact
from common.tracking import Tracker


def checkpoint_name(step: int) -> str:
    return f"{step:06d}"


def save_checkpoint(training_client: Any, tracker: Tracker, step: int, name: str) -> str:
    """Save state and sampler weights (both submitted before waiting); returns the state path."""
    state = training_client.save_state(name)
    sampler = training_client.save_weights_for_sampler(name)
    state_path, sampler_path = state.result().path, sampler.result().path
    # The state record last: it is the one resume starts from, so it implies both exist.
    tracker.log_checkpoint(step, name, sampler_path, "sampler", state_path=state_path)
    tracker.log_checkpoint(step, name, state_path, "state")
    return sampler_path


def last_checkpoint(run_dir: Path, kind: str) -> dict[str, Any] | None:
    """The run's latest checkpoint record of `kind` ("state" or "sampler"), if any."""
    records = [c for c in read_checkpoints(run_dir) if c["kind"] == kind]
    return max(records, key=lambda c: c["step"]) if records else None


def start_training_client(service: Any, cfg: Any, run_dir: Path) -> tuple[Any, int]:
    """(training client, steps already done): continued from the run's last loadable saved
    state, warm-started from --load_checkpoint, or a fresh LoRA."""
    states = sorted((c for c in read_checkpoints(run_dir) if c["kind"] == "state"),
                    key=lambda c: c["step"])
    failures = []
    for record in reversed(states):
        try:
            client = service.create_training_client_from_state_with_optimizer(record["path"])
            client = client.result()
        except Exception as exc:  # deleted, cut short, unreadable: try the one before
            failures.append(f"{record['path']} ({type(exc).__name__}: {_first_line(exc)})")
            print(redact(f"warning: cannot load the checkpoint of step {record['step']}, "
                         f"{failures[-1]}; falling back to the one before it"), flush=True)
            continue
        if failures:
            print(f"warning: continuing from step {record['step']}; the steps after it are "
                  "redone", flush=True)
        check_base_model(client, cfg.model, record["path"])
        return client, int(record["step"])
    if failures:
        raise ConfigError(redact(f"--log_dir {run_dir}: no saved state of this run can be "
                                 f"loaded: {'; '.join(failures)}. Start over with a new "
                                 "--log_dir"))
    if cfg.load_checkpoint:
        path = cfg.load_checkpoint
        if Path(path).is_dir():  # a run directory: its last saved training state
            saved = last_checkpoint(Path(path), "state")
            if saved is None:
                raise ConfigError(f"--load_checkpoint {path}: the run has no saved state")
            path = saved["path"]
        try:
            client = service.create_training_client_from_state(path).result()
        except Exception as exc:
            if not is_refusal(exc):  # no such checkpoint, not a path; else a service failure
                raise
            raise ConfigError(f"--load_checkpoint {cfg.load_checkpoint}: "
                              f"{refusal_reason(exc)}") from None
        check_base_model(client, cfg.model, path)
        return client, 0
    try:
        client = service.create_lora_training_client(
            base_model=cfg.model, rank=cfg.lora_rank, seed=cfg.seed)
        return client.result(), 0
    except Exception as exc:
        if not is_refusal(exc):  # a model that is not available, a rank it cannot take
            raise
        raise ConfigError(f"--model {cfg.model} / --lora_rank {cfg.lora_rank}: "
                          f"{refusal_reason(exc)}") from None


def check_base_model(client: Any, model: str, path: str) -> None:
    """A checkpoint of another base model is not this run's (its config names `model`)."""
    trained = client.get_info().model_name
    if trained and trained != model:
        raise ConfigError(f"{redact(path)} is a LoRA of {trained}, but the run's --model is "
                          f"{model}; use a checkpoint of {model}, or --model {trained}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
