"""The command line: flags and `--config_path` YAML into a Config, `--help` by topic, and the
scripts' entry point, which turns known errors into one `error:` line and an exit code.

Parsing: every problem is a ConfigError naming the flag, or the file and key (each YAML value is
checked against its field's type); a flag that takes a value must be given one; flags are spelled
out in full. `--help` lists the flags of all the Config blocks by topic (FLAG_GROUPS), not by
dataclass, each with its default once.

`run_main(main, Config, argv)` returns the exit code: 0 done (or already done); 2 a problem with
the input (a flag, a config file, a data file and row, a run directory, a task or reward, a
backend), printed as one `error: ...` line with no traceback; 1 a run that failed for a reason it
explains (divergence) or an environment failure (disk full, read-only, permission), one line
naming the path; 128 + N after signal N stopped it at once; 1 for anything else, whose traceback
is kept (redacted) so a bug can still be found. SystemExit (--help, a clean stop by signal)
passes through. Once the flags are parsed, sys.argv is redacted (W&B records it), and while
it runs the console is redacted: everything written to stdout/stderr (tqdm, warnings, tracebacks,
W&B's captured output.log) goes through `common.secrets.redact`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, TypeVar

import simple_parsing
import yaml
from simple_parsing import NestedMode
from simple_parsing.helpers.custom_actions import BooleanOptionalAction

from common.backend import BackendError
from common.config import ConfigError
from common.data import DatasetError
from common.datums import DatumError
from common.runfiles import RunFileError
from common.runs import AlreadyFinished, Interrupted, TrainingDiverged
from common.secrets import redact, secret_values
from common.tasks import TaskError

# Problems with what the user gave (flags, files, run directory, task, service): exit 2.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, DatumError, RunFileError, BackendError, TaskError,
    FileNotFoundError)
# The run failed for a reason it explains (exit 1, one line).
RUN_ERRORS: tuple[type[BaseException], ...] = (TrainingDiverged,)


C = TypeVar("C")

# Where each flag is listed in --help, group by group in this order (any script's field; a field
# listed nowhere goes under OTHER_FLAGS, which tests/test_help.py refuses).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "task and data": ("task", "prompt_field", "answer_field", "heldout", "heldout_fraction",
                      "task_config", "system_prompt", "reward", "answer_format", "pair_counts",
                      "large_share", "concise_bonus_after", "concise_needs_answer", "dataset",
                      "dataset_split", "dataset_size", "skip_invalid", "max_length"),
    "model and backend": ("backend", "base_url", "model", "lora_rank", "seed", "threads",
                          "checkpoint", "base_model", "dry_run"),
    "optimisation": ("lr", "lr_schedule", "warmup_steps", "batch_size", "group_size", "epochs",
                     "max_steps", "loss_fn", "advantage", "max_steps_off_policy",
                     "submit_ahead"),
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
    "heldout": "FILE|ORG/NAME", "task": "arithmetic|dataset:SPEC|reasoning_gym:NAME",
    "reward": "answer|exact|FILE.py:FUNCTION", "system_prompt": "TEXT|@FILE",
    "task_config": "JSON", "load_checkpoint": "RUN_DIR|tinker://PATH",
    "checkpoint": "RUN_DIR|tinker://PATH|ARTIFACT", "compare": "RUN_DIR", "compare_keys": "KEY",
    "log_dir": "RUN_DIR", "run_name": "NAME", "wandb_project": "NAME", "wandb_entity": "NAME",
    "wandb_group": "NAME", "wandb_tags": "TAG", "pair_counts": "N,N,...",
}
TYPE_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}
HELP_WIDTH = 100  # at most, whatever the terminal


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
    _require_values(config_class, argv)
    try:
        cfg = parser.parse_args(argv).config
    except (TypeError, ValueError) as exc:  # a value simple-parsing's own decoding refused
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad flag value ({exc})") from None
    return dataclasses.replace(cfg, **nulls) if nulls else cfg


def _require_values(config_class: type, argv: list[str]) -> None:
    """A flag that takes a value must be given one: argparse lets an optional field's flag
    stand alone and means None (`--lr` alone trained at the default lr; `--load_checkpoint`
    alone trained from scratch), and `--log_dir=` gives an empty name."""
    hints = typing.get_type_hints(config_class)
    takes_value = {"--config_path"}
    for f in dataclasses.fields(config_class):
        hint = hints[f.name]
        if bool not in (hint, *typing.get_args(hint)):
            takes_value.update([f"--{f.name}", *f.metadata.get("alias", [])])
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if option not in takes_value:
            continue
        missing = (not value.strip()) if eq else (i + 1 == len(argv) or argv[i + 1].startswith("--")
                                                  or not argv[i + 1].strip())
        if missing:
            raise ConfigError(f"{option}: expected a value")


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




def run_main(main: Callable[[Any], Any], config_class: type,
             argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]) into `config_class`, call `main`; the exit code."""
    with RedactedConsole():
        try:
            cfg = parse_config(config_class, argv)
            # Parsed: what is left of the command line is for others to record (W&B's run
            # metadata keeps sys.argv), so a secret passed in a flag goes no further.
            sys.argv = redact(list(sys.argv))
            main(cfg)
        except AlreadyFinished as exc:
            print(redact(str(exc)))
            return 0
        except INPUT_ERRORS as exc:
            print_error(exc)
            return 2
        except RUN_ERRORS as exc:
            print_error(exc)
            return 1
        except OSError as exc:  # disk full, read-only, permissions: the environment, not a bug
            print_error(exc)
            return 1
        except KeyboardInterrupt as exc:
            code = exc.exit_code if isinstance(exc, Interrupted) else 130
            print(f"stopped by {exc or 'SIGINT'}", file=sys.stderr, flush=True)
            return code
        except Exception:
            sys.stderr.write(redact(traceback.format_exc()))
            return 1
    return 0


def print_error(exc: BaseException) -> None:
    """One line: `error: <message>` (redacted; a multi-line message is joined)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.strerror or text}: {exc.filename}"
    print(redact(f"error: {text}"), file=sys.stderr, flush=True)


class RedactingStream:
    """A text stream that masks secrets before writing to the stream it wraps.

    W&B captures the console by replacing `sys.stdout.write` with a function that calls the old
    one and then records its argument; assigning `write` here wraps that function too, so what W&B
    records is the redacted text as well.
    """

    def __init__(self, stream: IO[str], secrets: list[str]) -> None:
        object.__setattr__(self, "_stream", stream)
        object.__setattr__(self, "_secrets", secrets)

    def write(self, text: str) -> int:
        self._stream.write(redact(text, self._secrets) if isinstance(text, str) else text)
        return len(text)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "write" and callable(value):
            inner, secrets = value, self._secrets
            value = lambda text, /: inner(  # noqa: E731
                redact(text, secrets) if isinstance(text, str) else text)
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class RedactedConsole:
    """Within the block, sys.stdout and sys.stderr mask the secrets of the environment."""

    def __enter__(self) -> RedactedConsole:
        secrets = secret_values()
        self._saved = sys.stdout, sys.stderr
        sys.stdout = RedactingStream(sys.stdout, secrets)  # type: ignore[assignment]
        sys.stderr = RedactingStream(sys.stderr, secrets)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = self._saved
