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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import simple_parsing
import yaml
from simple_parsing.helpers import field

from common.costs import TINY_MODELS
from common.tracking import read_run_config

TINKER_DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
# tiny-math fine-tuned to follow the arithmetic task's instructions some of the time, as the
# seed's instruct model does: the one local model on which the seed's RL run learns, and
# small enough that SFT on "foo" takes seconds (data/make_tiny_instruct.py, its card).
LOCAL_DEFAULT_MODEL = "tiny-instruct"

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
    """Base model. Default: Qwen/Qwen3-4B-Instruct-2507 on Tinker, tiny-instruct locally."""
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
    wandb_project: str = "tinker-experiments"
    """W&B project."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when W&B credentials exist, else offline (sync later with `wandb sync`)."""
    wandb_group: str | None = None
    """W&B group (the experiment); evaluations of this run join it."""
    sample_every: int = 10
    """Log a table of samples every N steps (0: never)."""


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
    """Parse flags (and `--config_path file.yaml` defaults that flags override)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _check_config_file(config_class, argv)
    return simple_parsing.parse(config_class, args=argv, add_config_path_arg="config_path")


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

    `tiny_lr` is the default for the built-in tiny models: a 0.85M-parameter model can need
    other steps than the seed's Qwen (SFT: bigger ones).
    """
    backend = resolve_backend(cfg.backend, environ)
    recorded = warm_start_model(cfg)  # checked first: a clashing --model fails here
    model = (cfg.model or recorded
             or (TINKER_DEFAULT_MODEL if backend == "tinker" else LOCAL_DEFAULT_MODEL))
    default_lr = tiny_lr if model in TINY_MODELS else lr
    run_lr = default_lr if cfg.lr is None else cfg.lr
    return dataclasses.replace(cfg, backend=backend, model=model, lr=run_lr)


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
