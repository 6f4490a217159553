"""Config blocks every script shares, the CLI parser, and checks that name the bad flag.

Scripts declare `@dataclass class Config(ServiceConfig, TrackingConfig, CheckpointConfig)` plus
their own fields, so a flag is spelled the same in every script (`--model`, `--lr`, `--log_dir`)
and W&B sweep parameters are plain field names. Parsed configs are never mutated: `resolved`
returns a copy with the backend and model filled in, and that copy is what gets logged.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import simple_parsing
import yaml
from simple_parsing.helpers import field

from common.tracking import read_run_config

TINKER_DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
LOCAL_DEFAULT_MODEL = "tiny-chat"

C = TypeVar("C")


class ConfigError(ValueError):
    """A flag or config file value that cannot work; the message names the flag."""


@dataclass
class ServiceConfig:
    # --- service and model
    backend: Literal["auto", "tinker", "local"] = "auto"
    """auto: Tinker when TINKER_API_KEY is set, else the embedded local backend."""
    base_url: str | None = None
    """A Tinker-compatible server to use instead of the default Tinker endpoint."""
    model: str | None = None
    """Base model. Default: Qwen/Qwen3-4B-Instruct-2507 on Tinker, tiny-chat locally."""
    lora_rank: int = 8
    """LoRA rank."""
    seed: int = 0
    """Seed for LoRA init, data order and sampling."""


@dataclass
class TrackingConfig:
    # --- tracking
    log_dir: Path | None = None
    """Run directory (metrics, config, checkpoints, W&B files). Default: runs/<run_name>."""
    run_name: str | None = None
    """W&B run name. Default: <script>-<model>-lr<lr>-bs<batch>-s<seed>-<time>."""
    wandb_project: str | None = None
    """W&B project. Default: tinker-experiments; tinker-experiments-local on the local backend."""
    wandb_entity: str | None = None
    """W&B entity (user or team). Default: your W&B default entity."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when W&B credentials exist, else offline (sync later with `wandb sync`)."""
    wandb_group: str | None = None
    """W&B group (the experiment); evaluations of this run join it."""
    wandb_tags: list[str] = field(default_factory=list)
    """W&B tags, added to the automatic backend:<backend> and model:<model> tags."""
    wandb_notes: str | None = None
    """W&B run notes (a line on what this run tries)."""
    sample_every: int = 10
    """Log a table of samples every N steps (0: never)."""
    wandb_incremental_tables: bool = True
    """Add each step's samples to W&B's table as an increment (W&B Server >= 0.70, W&B's cloud);
    --nowandb_incremental_tables relogs the whole table instead, for older self-hosted servers."""


@dataclass
class CheckpointConfig:
    # --- checkpoints
    save_every: int = 20
    """Save a resumable checkpoint every N steps (0: only the final one)."""
    resume: bool = False
    """Continue the run in --log_dir from its last checkpoint (same W&B run)."""
    load_checkpoint: str | None = None
    """Start from these weights (a weights/ path from a previous run, e.g. the SFT warm start)."""


def lr_field() -> Any:
    """`--lr`, also spelled `--learning_rate`; None means the script's default for the model."""
    return field(default=None, alias=["--learning_rate"])


def parse_config(config_class: type[C], argv: Sequence[str] | None = None) -> C:
    """Parse flags (and `--config_path file.yaml` defaults that flags override).

    An optional field also takes `None` (or `null`), as W&B's agent writes a sweep's null value
    (`--concise_bonus_after=None`): argparse alone would reject it as "invalid int".
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _check_config_file(config_class, argv)
    argv, nulls = _null_flags(config_class, argv)
    cfg = simple_parsing.parse(config_class, args=argv, add_config_path_arg="config_path")
    return dataclasses.replace(cfg, **nulls) if nulls else cfg


NULLS = ("None", "none", "null", "Null", "NULL", "~")


def _null_flags(config_class: type, argv: list[str]) -> tuple[list[str], dict[str, None]]:
    """(argv without `--field None` / `--field=None` of optional fields, {field: None})."""
    hints = typing.get_type_hints(config_class)
    optional = {f.name for f in dataclasses.fields(config_class)
                if type(None) in typing.get_args(hints.get(f.name))}
    kept, nulls, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in optional and eq and value in NULLS:
            nulls[name] = None
        elif name in optional and not eq and i + 1 < len(argv) and argv[i + 1] in NULLS:
            nulls[name] = None
            i += 1
        else:
            kept.append(arg)
        i += 1
    return kept, nulls


def _config_path_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config_path="):
            return arg.split("=", 1)[1]
        if arg == "--config_path" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _check_config_file(config_class: type, argv: list[str]) -> None:
    """Errors in a YAML config file name the file and key, before simple-parsing sees it."""
    path = _config_path_arg(argv)
    if path is None:
        return
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config_path: no such file {file}")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config_path {file}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config_path {file}: expected a mapping of flag names to values")
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config_path {file}: unknown keys {unknown}; known: {sorted(known)}")


def resolve_backend(backend: str, environ: Mapping[str, str]) -> str:
    if backend == "auto":
        return "tinker" if environ.get("TINKER_API_KEY") else "local"
    return backend


def resolved(cfg: C, environ: Mapping[str, str], lr: float, tiny_lr: float) -> C:
    """A copy of `cfg` with backend, model and lr made explicit (what the run really used).

    `tiny_lr` is the default for tiny-chat: a random-initialised 0.85M-parameter model needs
    bigger steps than the seed's pretrained Qwen.
    """
    backend = resolve_backend(cfg.backend, environ)
    recorded = warm_start_model(cfg)  # checked first: a clashing --model fails here
    model = (cfg.model or recorded
             or (TINKER_DEFAULT_MODEL if backend == "tinker" else LOCAL_DEFAULT_MODEL))
    default_lr = tiny_lr if model == LOCAL_DEFAULT_MODEL else lr
    run_lr = default_lr if cfg.lr is None else cfg.lr
    # The warm start's weights carry their LoRA rank (loading them ignores --lora_rank): record
    # the rank the run really trains, or its config (and its checkpoint artifacts) would lie.
    rank = warm_start_config(cfg).get("lora_rank") or cfg.lora_rank
    return dataclasses.replace(cfg, backend=backend, model=model, lr=run_lr, lora_rank=rank)


def warm_start_config(cfg: Any) -> dict[str, Any]:
    """The recorded config of the run directory named by --load_checkpoint ({} otherwise)."""
    source = getattr(cfg, "load_checkpoint", None)
    return read_run_config(Path(source)) if source and Path(source).is_dir() else {}


def warm_start_model(cfg: Any) -> str | None:
    """The base model of the run directory named by --load_checkpoint, if there is one.

    Without this a run warm-started from, say, a tiny-math SFT run would record (and price,
    and name itself after) the default model while training tiny-math.
    """
    source = getattr(cfg, "load_checkpoint", None)
    if not source or not Path(source).is_dir():
        return None
    recorded = read_run_config(Path(source)).get("model")
    require(cfg.model is None or recorded in (None, cfg.model), "model",
            f"{cfg.model} differs from {recorded}, the base model of --load_checkpoint {source}")
    return recorded


def require(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def check_common(cfg: Any) -> None:
    """Checks every script's shared flags need; scripts add their own with `require`."""
    require(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", f"must be a positive number, got {cfg.lr}")
    require(cfg.lora_rank >= 1, "lora_rank", f"must be >= 1, got {cfg.lora_rank}")
    require(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    require(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps",
            f"must be >= 1, got {cfg.max_steps}")
    require(cfg.save_every >= 0, "save_every", f"must be >= 0, got {cfg.save_every}")
    require(cfg.sample_every >= 0, "sample_every", f"must be >= 0, got {cfg.sample_every}")
    require(not (cfg.resume and cfg.log_dir is None), "resume",
            "needs --log_dir, the run directory to continue")


def as_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/W&B-friendly values."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
