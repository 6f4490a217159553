"""One process per run directory, and a rerun that is really the same run.

`lock(run_dir)` takes an exclusive `fcntl.flock` on `<run_dir>/.lock` and keeps the file open
for the rest of the process's life, so the OS releases it on any exit (SIGKILL included); the
file holds the holder's PID for the error a second process gets. A lock taken again by the
same process (tests call `main` several times) is reused.

`check_same_run(recorded, current, may_change)` compares a rerun's resolved config with the
config.yaml the run recorded: a flag that changes what the run is (model, rank, data, batch
size, loss, seed...) is refused with the list of differences; the flags in `may_change`
(how long, how often to save or log, where to track) may change and are reported.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from common.config import ConfigError

LOCK = ".lock"
# Flags any script may change when it continues a run: its length, how often it saves, evaluates
# and logs, and where it is tracked. Scripts add their own (e.g. SFT's samples-table knobs).
MAY_CHANGE = ("max_steps", "epochs", "save_every", "sample_every", "eval_every", "resume",
              "log_dir", "run_name", "wandb_project", "wandb_mode", "wandb_group", "base_url",
              "dry_run")

_held: dict[Path, IO[str]] = {}


class RunDirBusy(ConfigError):
    """Another live process holds the run directory."""


def lock(run_dir: Path) -> None:
    """Hold `run_dir` for this process (see the module docstring); RunDirBusy if another has it."""
    key = Path(run_dir).resolve()
    if key in _held and not _held[key].closed:
        return
    key.mkdir(parents=True, exist_ok=True)
    handle = open(key / LOCK, "a+")  # noqa: SIM115 - held open on purpose until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirBusy(f"--log_dir {run_dir}: in use by another run (PID {holder}); wait for "
                         "it to end, or use another --log_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = handle


def unlock(run_dir: Path) -> None:
    """Release a lock this process holds (the OS does it at exit anyway)."""
    handle = _held.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        handle.close()


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """{key: (recorded, current)} for keys both configs hold whose values differ."""
    skip = set(ignore)
    return {k: (recorded[k], current[k]) for k in current
            if k in recorded and k not in skip and not _same(recorded[k], current[k])}


def check_same_run(run_dir: Path, recorded: Mapping[str, Any], current: Mapping[str, Any],
                   may_change: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Refuse a rerun whose config changes what the run is; return the allowed changes."""
    allowed = {*MAY_CHANGE, *may_change}
    refused = config_differences(recorded, current, ignore=allowed)
    if refused:
        listed = "; ".join(f"--{k} {_show(new)} (the run has {_show(old)})"
                           for k, (old, new) in refused.items())
        raise ConfigError(f"--log_dir {run_dir} holds a run with other settings: {listed}. "
                          "Continue it with its own settings, or use a new --log_dir")
    return {k: v for k, v in config_differences(recorded, current).items() if k in allowed}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)
