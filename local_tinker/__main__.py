"""`python -m local_tinker serve`: the local backend as a server any tinker SDK code can use."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_tinker", allow_abbrev=False,
                                     description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", allow_abbrev=False,
                                help="serve tinker's HTTP protocol on torch + transformers + peft")
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8123, help="port (0: any free port)")
    serve.add_argument("--root", type=Path, default=None,
                       help="checkpoint storage (default: $LOCAL_TINKER_ROOT or "
                            "~/.cache/local_tinker)")
    serve.add_argument("--model", action="append", default=[],
                       help="load this base model at start (repeatable); others load on first use")
    serve.add_argument("--device", default=os.environ.get("LOCAL_TINKER_DEVICE"),
                       help="torch device (default: cuda if available, else cpu)")
    serve.add_argument("--latency_s", type=float, default=0.0,
                       help="hold every result this long (simulates network round trips)")
    serve.add_argument("--fault_rate", type=float, default=0.0,
                       help="fail this share of requests with HTTP 503 (the SDK retries them)")
    serve.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: one per core that other processes leave "
                            "free, re-checked as the load changes; also LOCAL_TINKER_THREADS)")
    args = parser.parse_args(argv)

    from .models import UnknownModelError
    from .server import LocalTinkerServer, PortInUse, serve_forever
    from .threads import InvalidThreads

    try:
        server = LocalTinkerServer(args.root, device=args.device, latency_s=args.latency_s,
                                   fault_rate=args.fault_rate, preload=args.model,
                                   threads=args.threads)
        serve_forever(server, args.host, args.port)
    except (PortInUse, UnknownModelError, InvalidThreads) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
