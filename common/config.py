"""Config blocks every script shares, the CLI parser, and checks that name the bad flag.

Scripts declare `@dataclass class Config(ServiceConfig, TrackingConfig, CheckpointConfig)` plus
their own fields, so a flag is spelled the same in every script (`--model`, `--lr`, `--log_dir`)
and W&B sweep parameters are plain field names. Parsed configs are never mutated: `resolved`
returns a copy with the backend and model filled in, and that copy is what gets logged.
`--help` lists the flags of all the blocks by topic (FLAG_GROUPS), not by dataclass, each with
its default once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shutil
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import urlparse

import simple_parsing
import yaml
from simple_parsing import NestedMode
from simple_parsing.helpers import field
from simple_parsing.helpers.custom_actions import BooleanOptionalAction

from common.costs import TINY_MODELS
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


# Where each flag is listed in --help, group by group in this order (any script's field; a field
# listed nowhere goes under OTHER_FLAGS, which tests/test_help.py refuses).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "task and data": ("pair_counts", "large_share", "concise_bonus_after", "concise_needs_answer",
                      "task", "heldout", "dataset", "dataset_split", "dataset_size",
                      "skip_invalid", "max_length"),
    "model and backend": ("backend", "base_url", "model", "lora_rank", "seed", "checkpoint",
                          "base_model", "dry_run"),
    "optimisation": ("lr", "lr_schedule", "warmup_steps", "batch_size", "group_size", "epochs",
                     "max_steps", "loss_fn", "advantage", "max_steps_off_policy"),
    "sampling": ("max_tokens", "temperature", "sample_prompts"),
    "evaluation": ("eval_every", "eval_problems", "eval_fraction", "num_problems",
                   "concise_bonus", "compare", "compare_keys"),
    "tracking": ("log_dir", "run_name", "wandb_project", "wandb_entity", "wandb_mode",
                 "wandb_group", "wandb_tags", "wandb_notes", "sample_every",
                 "wandb_incremental_tables"),
    "checkpoints": ("save_every", "resume", "load_checkpoint"),
}
OTHER_FLAGS = "other"
# What a flag's value is, where its type alone would say only TEXT.
FLAG_METAVARS = {
    "config_path": "FILE.yaml", "base_url": "URL", "model": "NAME", "dataset": "NAME|FILE",
    "heldout": "FILE", "load_checkpoint": "RUN_DIR|tinker://PATH",
    "checkpoint": "RUN_DIR|tinker://PATH|ARTIFACT", "compare": "RUN_DIR", "compare_keys": "KEY",
    "log_dir": "RUN_DIR", "run_name": "NAME", "wandb_project": "NAME", "wandb_entity": "NAME",
    "wandb_group": "NAME", "wandb_tags": "TAG", "pair_counts": "N,N,...",
}
TYPE_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}
HELP_WIDTH = 100  # at most, whatever the terminal


def lr_field(default: float | None = None) -> Any:
    """`--lr`, also spelled `--learning_rate`; None means the script's default for the model."""
    return field(default=default, alias=["--learning_rate"])


def parse_config(config_class: type[C], argv: Sequence[str] | None = None) -> C:
    """Parse flags (and `--config_path file.yaml` defaults that flags override).

    Every problem is a ConfigError naming the flag or the file and key: argparse's own errors
    included (no usage dump, no exit from inside the parser). Flags must be spelled out in full
    (argparse would take `--learning_rat` for `--learning_rate`).
    An optional field also takes `None` (or `null`), as W&B's agent writes a sweep's null value
    (`--concise_bonus_after=None`): argparse alone would reject it as "invalid int".
    """
    argv = _negative_values_attached(list(sys.argv[1:] if argv is None else argv))
    argv, nulls = _null_flags(config_class, argv)
    values = _config_file_values(config_class, argv)
    parser = ConfigParser(nested_mode=NestedMode.WITHOUT_ROOT, allow_abbrev=False,
                          formatter_class=FlagHelpFormatter, description=_description(config_class),
                          usage="%(prog)s [-h] [--config_path FILE.yaml] [--FLAG VALUE ...]")
    parser.error = _parser_error  # type: ignore[method-assign]
    parser.add_argument("--config_path", default=None, metavar="FILE.yaml",
                        help="YAML file of flag values; flags given here override it.")
    default = config_class(**values) if values else None
    parser.add_arguments(config_class, dest="config", default=default)
    try:
        cfg = parser.parse_args(argv).config
    except (TypeError, ValueError) as exc:  # a value simple-parsing's own decoding refused
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad flag value ({exc})") from None
    return dataclasses.replace(cfg, **nulls) if nulls else cfg


def _negative_values_attached(argv: list[str]) -> list[str]:
    """`--lr -1e-4` -> `--lr=-1e-4`: argparse takes `-1e-4`, `-inf` for options, so the value
    would be lost and the error would not name the flag; attached, it reaches the range check."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _is_negative_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _is_negative_number(text: str) -> bool:
    if not text.startswith("-") or text.startswith("--"):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parser_error(message: str) -> NoReturn:
    raise ConfigError(message)


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
        if arg == "--config_path":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config_path: expected a YAML file")
            return argv[i + 1]
    return None


def _config_file_values(config_class: type, argv: list[str]) -> dict[str, Any]:
    """The values of `--config_path`'s YAML file, each checked against its field's type, with
    errors that name the file and key (before simple-parsing sees anything)."""
    path = _config_path_arg(argv)
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config_path: no such file {file}")
    try:
        values = yaml.safe_load(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config_path {file}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config_path {file}: not valid YAML ({_one_line(exc)})") from None
    if values is None:
        raise ConfigError(f"--config_path {file}: the file is empty; write one `flag: value` "
                          "line per setting")
    if not isinstance(values, dict):
        raise ConfigError(f"--config_path {file}: expected a mapping of flag names to values, "
                          f"got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(str(k) for k in set(values) - set(fields))
    if unknown:
        raise ConfigError(f"--config_path {file}: unknown keys {unknown}; known: "
                          f"{sorted(fields)}")
    hints = typing.get_type_hints(config_class)
    return {key: _checked(value, hints[key], f"--config_path {file}: {key}")
            for key, value in values.items()}


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` as a value of type `hint` (int, float, str, bool, Path, Literal, Optional, list),
    or a ConfigError naming `where` and what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _checked(value, inner[0], where) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_checked(v, args[0] if args else str, where) for v in items]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint in (str, Path):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return hint(value)
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class ConfigParser(simple_parsing.ArgumentParser):
    """simple-parsing's parser, whose --help lists the flags by FLAG_GROUPS (simple-parsing makes
    one group per dataclass, in MRO order: tracking and checkpoint flags before the model's)."""

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        for title, actions in help_sections(self._actions):
            formatter.start_section(title)
            formatter.add_arguments(actions)
            formatter.end_section()
        return formatter.format_help()


def help_sections(actions: Sequence[argparse.Action]) -> list[tuple[str, list[argparse.Action]]]:
    """(title, flags) of every non-empty group: `options` (-h, --config_path), FLAG_GROUPS in
    their order, then OTHER_FLAGS; flags keep their order within a group."""
    group_of = {name: title for title, names in FLAG_GROUPS.items() for name in names}
    sections: dict[str, list[argparse.Action]] = {
        "options": [], **{title: [] for title in FLAG_GROUPS}, OTHER_FLAGS: []}
    for action in actions:
        name = flag_name(action)
        title = "options" if name in ("help", "config_path") else group_of.get(name, OTHER_FLAGS)
        sections[title].append(action)
    return [(title, group) for title, group in sections.items() if group]


def flag_name(action: argparse.Action) -> str:
    """The field behind a flag (simple-parsing's dest is `config.<field>`)."""
    return action.dest.rsplit(".", 1)[-1]


class FlagHelpFormatter(argparse.HelpFormatter):
    """Each flag once, with one default: `--lr, --learning_rate FLOAT`, `--resume / --noresume`
    (default: on/off), and the doc's own `Default: ...` where it has one instead of the value."""

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size().columns, HELP_WIDTH) - 2
        super().__init__(prog, max_help_position=32, width=width)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BooleanOptionalAction):
            return " / ".join(action.option_strings)
        if action.nargs == 0:  # -h, --help
            return ", ".join(action.option_strings)
        return f"{', '.join(action.option_strings)} {flag_metavar(action)}"

    def _get_help_string(self, action: argparse.Action) -> str:
        # argparse %-formats help strings (for %(default)s); a doc's own % must stay a %.
        return help_with_default(action).replace("%", "%%")


def flag_metavar(action: argparse.Action) -> str:
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    name = FLAG_METAVARS.get(flag_name(action)) or TYPE_METAVARS.get(action.type, "VALUE")
    if action.nargs == "*":
        return f"[{name} ...]"
    return f"{name} [{name} ...]" if action.nargs == "+" else name


def help_with_default(action: argparse.Action) -> str:
    """The flag's doc on one line, plus `(default: X)` unless the doc states its default."""
    # simple-parsing's boolean action has already added one (`%(default)s`: True / False).
    text = " ".join((action.help or "").removesuffix(" (default: %(default)s)").split())
    if action.default is argparse.SUPPRESS or re.search(r"\bdefault:", text, re.IGNORECASE):
        return text
    return f"{text} (default: {shown_default(action.default)})"


def shown_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    if isinstance(value, list):
        return " ".join(map(str, value))
    path = Path(value) if isinstance(value, str | Path) else None
    if path and path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))  # as it would be typed from here
    return str(value)


def _description(config_class: type) -> str | None:
    """The Config's docstring; None for the signature a dataclass without one gets as its doc."""
    doc = config_class.__doc__ or ""
    return None if doc.startswith(f"{config_class.__name__}(") else doc


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


def finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check_common(cfg: Any) -> None:
    """Checks of the flags both training scripts have; each adds its own (`require`,
    `require_at_least`)."""
    require(finite(cfg.lr) and cfg.lr > 0, "lr", f"must be a positive number, got {cfg.lr}")
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
    """Flags of ServiceConfig that cannot work together (any script, after `resolved`)."""
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
