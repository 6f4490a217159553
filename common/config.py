"""Config blocks every script shares, and the checks that name the bad flag.

Scripts declare `@dataclass class Config(ServiceConfig, TrackingConfig, CheckpointConfig)` plus
their own fields, so a flag is spelled the same in every script (`--model`, `--lr`, `--log_dir`)
and W&B sweep parameters are plain field names. Parsed configs (common/cli.py parses them) are
never mutated: `resolved` returns a copy with the backend, model and lr filled in, and that copy
is what gets logged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

from simple_parsing.helpers import field

from common.backend import TINY_MODELS
from common.runfiles import read_run_config
from common.tracking import check_wandb_settings

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
    """A Tinker-compatible server: with --backend tinker, instead of the Tinker endpoint; with
    --backend local, a running `python -m local_tinker serve` instead of an embedded one.
    Default: the Tinker endpoint, or an embedded local server."""
    model: str | None = None
    """Base model. Default: that of the run a script starts from (--load_checkpoint) or scores
    (--checkpoint), else Qwen/Qwen3-4B-Instruct-2507 on Tinker and tiny-instruct locally."""
    seed: int = 0
    """Seed for LoRA init, data order and sampling."""
    threads: int | None = None
    """Torch threads of the embedded local backend. Default: chosen from the cores and the
    machine's load (OMP_NUM_THREADS also sets it)."""


@dataclass
class TrainingConfig:
    """What only training scripts have: the adapter they train and their samples table."""

    lora_rank: int = 8
    """LoRA rank."""
    sample_every: int = 10
    """Log a table of samples every N steps (0: never)."""
    dry_run: bool = False
    """Print the run's token and cost estimate (upper bounds for RL), then exit without calling
    the backend."""


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
    """W&B group (the experiment); evaluations of this run join it. Default: no group."""
    wandb_tags: list[str] = field(default_factory=list)
    """W&B tags, added to the automatic backend:<backend> and model:<model> tags."""
    wandb_notes: str | None = None
    """W&B run notes (a line on what this run tries). Default: none."""
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
    """Start from a previous run's weights, with a fresh optimizer (e.g. an SFT warm start): its
    run directory (its last saved state) or a tinker://.../weights/<name> path. Default: a fresh
    LoRA."""


def lr_field(default: float | None = None) -> Any:
    """`--lr`, also spelled `--learning_rate`; None means the script's default for the model."""
    return field(default=default, alias=["--learning_rate"])


def resolve_backend(backend: str, environ: Mapping[str, str]) -> str:
    if backend == "auto":
        return "tinker" if environ.get("TINKER_API_KEY") else "local"
    return backend


def resolved(cfg: C, environ: Mapping[str, str], lr: float | None = None,
             tiny_lr: float | None = None) -> C:
    """A copy of `cfg` with backend, model and lr made explicit (what the run really used).

    `lr` / `tiny_lr`: the default when --lr is not given (None in the config), on Tinker models
    and on the built-in tiny models (a 0.85M-parameter model can need bigger steps).
    """
    backend = resolve_backend(cfg.backend, environ)
    recorded = warm_start_model(cfg)  # checked first: a clashing --model fails here
    model = (cfg.model or recorded
             or (TINKER_DEFAULT_MODEL if backend == "tinker" else LOCAL_DEFAULT_MODEL))
    default_lr = tiny_lr if model in TINY_MODELS else lr
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


def require_at_least(cfg: Any, **minimums: int) -> None:
    """`--flag: must be >= N` for each flag=N given; a flag left at None (unset) passes."""
    for flag, low in minimums.items():
        value = getattr(cfg, flag)
        require(value is None or value >= low, flag, f"must be >= {low}, got {value}")


MAX_LORA_RANK = 1024  # far above any useful rank; a typo like 100000 would allocate for hours
MAX_LR = 1e30  # no step trains above it; 1e39 did not fit the optimizer's float32
MAX_SEED = 2**63 - 1  # samplers and torch take 64-bit seeds


def finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check_common(cfg: Any) -> None:
    """Checks of the flags both training scripts have; each adds its own (`require`,
    `require_at_least`)."""
    require(finite(cfg.lr) and 0 < cfg.lr <= MAX_LR, "lr",
            f"must be a positive number <= {MAX_LR:g}, got {cfg.lr}")
    require(1 <= cfg.lora_rank <= MAX_LORA_RANK, "lora_rank",
            f"must be in [1, {MAX_LORA_RANK}], got {cfg.lora_rank}")
    require_at_least(cfg, batch_size=1, max_steps=1, max_tokens=1, save_every=0, sample_every=0,
                     eval_every=0)
    require(not (cfg.resume and cfg.log_dir is None), "resume",
            "needs --log_dir, the run directory to continue")
    check_service(cfg)
    check_wandb_settings(cfg, ConfigError)
    require(not (cfg.load_checkpoint and "/sampler_weights/" in cfg.load_checkpoint),
            "load_checkpoint", f"{cfg.load_checkpoint} is sampler weights, which cannot be "
            "trained from; pass the run directory or its weights/ path (a 'state' record in "
            "its checkpoints.jsonl)")
    require(not (cfg.load_checkpoint and not Path(cfg.load_checkpoint).is_dir()
                 and "://" not in cfg.load_checkpoint), "load_checkpoint",
            f"{cfg.load_checkpoint} is neither a run directory nor a checkpoint path "
            "(tinker://...)")


def check_service(cfg: Any) -> None:
    """Flags of ServiceConfig that cannot work (any script, after `resolved`)."""
    require(0 <= cfg.seed <= MAX_SEED, "seed", f"must be in [0, 2**63), got {cfg.seed}")
    require(cfg.threads is None or cfg.threads >= 1, "threads",
            f"must be >= 1, got {cfg.threads}")
    # The local placeholder key goes to our own server only, never to another host.
    host = urlparse(cfg.base_url or "").hostname or ""
    require(not (cfg.backend == "local" and cfg.base_url
                 and host not in ("127.0.0.1", "localhost", "::1")), "base_url",
            f"{cfg.base_url} is not on this machine, but the backend is local (--backend local, "
            "or --backend auto without TINKER_API_KEY); with the local backend --base_url names a "
            "`python -m local_tinker serve` on 127.0.0.1. For a remote server set TINKER_API_KEY "
            "(or --backend tinker)")


def as_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/W&B-friendly values."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
