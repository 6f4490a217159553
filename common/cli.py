"""The scripts' entry point: parse, run, and turn known errors into one `error:` line.

`run_main(main, Config, argv)` returns the exit code: 0 done (or already done); 2 a problem with
the input (a flag, a config file, a data file and row, a run directory, a task or reward, a
backend), printed as one `error: ...` line with no traceback; 1 a run that failed for a reason it
explains (divergence) or an environment failure (disk full, read-only, permission), one line
naming the path; 128 + N after signal N stopped it at once; 1 for anything else, whose traceback
is kept (redacted) so a bug can still be found. SystemExit (--help, a clean stop by signal)
passes through.
Once the flags are parsed, sys.argv is redacted (W&B records it), and while it runs the console
is redacted: everything written to stdout/stderr (tqdm, warnings,
tracebacks, W&B's captured output.log) goes through `common.secrets.redact`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import IO, Any

from common.backend import BackendError
from common.config import ConfigError, parse_config
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
