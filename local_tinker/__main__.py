"""`python -m local_tinker serve`: the local backend as a server any tinker SDK code can use.

Errors are one line: a setting that cannot work is `error: ...` and exit 2; a machine that
fails the server (a read-only or full --root) is `error: ...` naming the path and exit 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from . import API_KEY_ENV, compile_requested


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        print(f"error: {message} (see python -m local_tinker serve --help)", file=sys.stderr)
        sys.exit(2)


def _number(text: str, accept: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {accept}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    return _number(text, "a finite number of seconds >= 0", lambda v: v >= 0)


def _share(text: str) -> float:
    return _number(text, "a number between 0 and 1", lambda v: 0 <= v <= 1)


def _port(text: str) -> int:
    value = _number(text, "a port between 0 and 65535", lambda v: 0 <= v <= 65535 and v == int(v))
    return int(value)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m local_tinker", allow_abbrev=False, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", allow_abbrev=False,
                                help="serve tinker's HTTP protocol on torch + transformers + peft")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: loopback only; any other needs "
                            "--api_key)")
    serve.add_argument("--port", type=_port, default=8123, help="port (0: any free port)")
    serve.add_argument("--root", type=Path, default=None,
                       help="checkpoint storage (default: $LOCAL_TINKER_ROOT or "
                            "~/.cache/local_tinker); requests reach nothing outside it")
    serve.add_argument("--model", action="append", default=[],
                       help="load this base model at start (repeatable); others load on first "
                            "use. A model given by path is served only if named here")
    serve.add_argument("--device", default=os.environ.get("LOCAL_TINKER_DEVICE"),
                       help="torch device (default: cuda if available, else cpu)")
    serve.add_argument("--latency_s", type=_seconds, default=0.0,
                       help="hold every result this long (simulates network round trips)")
    serve.add_argument("--fault_rate", type=_share, default=0.0,
                       help="fail this share of requests with HTTP 503 (the SDK retries them)")
    serve.add_argument("--api_key", action="append", default=[],
                       help=f"serve only clients presenting this key (repeatable, or comma-"
                            f"separated; default: ${API_KEY_ENV}). Required beyond loopback; "
                            "without it a loopback server takes any 'tml-' key, each its own "
                            "identity. The environment variable keeps the key out of `ps`")
    serve.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: one per core that other processes leave "
                            "free, re-checked as the load changes; also LOCAL_TINKER_THREADS)")
    serve.add_argument("--sample_logprobs", choices=("exact", "decode"),
                       default=os.environ.get("LOCAL_TINKER_SAMPLE_LOGPROBS", "exact"),
                       help="sampled tokens' logprobs: 'exact' recomputes each request's on its "
                            "own, so they never depend on its batch mates; 'decode' takes the "
                            "generation's own, equal up to float rounding, about a fifth less "
                            "sampling time (also LOCAL_TINKER_SAMPLE_LOGPROBS)")
    serve.add_argument("--compile", action="store_true",
                       default=compile_requested(),
                       help="run training passes through torch.compile: a one-off 20-60 s "
                            "compile on a model's first step, then faster steps (needs a C++ "
                            "compiler; without one, training runs eagerly; also "
                            "LOCAL_TINKER_COMPILE=1)")
    return parser.parse_args(argv)


def api_keys(flags: list[str]) -> list[str]:
    given = flags or [os.environ.get(API_KEY_ENV, "")]
    return [key.strip() for text in given for key in text.split(",") if key.strip()]


def serve(args: argparse.Namespace) -> int:
    from .server import LocalTinkerServer, check_exposure, serve_forever

    keys = api_keys(args.api_key)
    check_exposure(args.host, bool(keys))  # before loading anything: beyond loopback needs one
    server = LocalTinkerServer(args.root, device=args.device, latency_s=args.latency_s,
                               fault_rate=args.fault_rate, preload=args.model, api_keys=keys,
                               any_model_path=False, threads=args.threads,
                               sample_logprobs=args.sample_logprobs, compile=args.compile)
    serve_forever(server, args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The serve command's one error path: no traceback for a user's or the machine's error."""
    args = parse(argv)
    from .server import EnvironmentFailure, PortInUse, SettingsError
    from .threads import InvalidThreads

    try:
        return serve(args)
    except (SettingsError, PortInUse, InvalidThreads) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EnvironmentFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine failing the server some other way
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

