"""`with connect(backend, base_url) as service`: a `tinker.ServiceClient`, for Tinker or for the
local server, whose session is finished when the block ends.

The tinker SDK is the only client in the project. `--backend local` starts the embedded server
(`local_tinker`) on a free loopback port of this process, or with `--base_url` uses a local server
started elsewhere (`python -m local_tinker serve`), and points the SDK at it with a local-only
placeholder key (never the user's TINKER_API_KEY, which must not reach any other host).
Before handing out a Tinker client we check that the endpoint answers at all, because the SDK
retries an unreachable server for a long time (its progress timeout is two hours) and a user
with a typo in --base_url deserves an answer in seconds. The session is finished ("success",
"errored", or "interrupted" for Ctrl-C and signals) so that the service frees its models now
rather than when heartbeats stop, which for a script run in-process (tests, benchmarks) was never.

Knobs for tests and benchmarks, read when the local server starts: LOCAL_TINKER_ROOT (where
checkpoints live), LOCAL_TINKER_LATENCY_S and LOCAL_TINKER_FAULT_RATE (see local_tinker.server);
and for users, LOCAL_TINKER_SAMPLE_LOGPROBS=decode (faster sampling, see docs/local_backend.md).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

# local_tinker.models' names, not imported from there: that module imports torch.
TINY_MODELS = ("tiny-chat", "tiny-math", "tiny-instruct")
REACHABILITY_TIMEOUT_S = 10.0
SESSION_CLOSE_TIMEOUT_S = 10.0
_servers = contextlib.ExitStack()  # embedded servers, stopped before the interpreter exits
atexit.register(_servers.close)
_started: dict[tuple, str] = {}  # their options -> base_url


class BackendError(RuntimeError):
    """The chosen backend cannot be used; the message says what to check."""


def is_refusal(exc: BaseException) -> bool:
    """The service refused a request as sent (no such model or checkpoint, a bad argument):
    the user's input to fix, unlike a connection or server failure."""
    import tinker
    from tinker.types import RequestErrorCategory

    if isinstance(exc, tinker.RequestFailedError):
        return exc.category == RequestErrorCategory.User
    return isinstance(exc, tinker.BadRequestError | tinker.NotFoundError | ValueError)


@contextlib.contextmanager
def refusals_name(flags: str) -> Iterator[None]:
    """A request the service refused as sent, because of what the flags asked for (too many
    tokens for the model's context, say), is the user's to fix: one line naming the flags."""
    try:
        yield
    except Exception as exc:
        if not is_refusal(exc):
            raise
        raise BackendError(f"{flags}: the service refused the request: "
                           f"{refusal_reason(exc)}") from None


def refusal_reason(exc: BaseException) -> str:
    """The service's own words, without the SDK's request-id wrapping."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    text = str(exc).removeprefix("Request failed: ")
    return re.split(r" for self\.request_id=", text)[0].strip()


@contextlib.contextmanager
def connect(backend: str, base_url: str | None = None, threads: int | None = None
            ) -> Iterator[Any]:
    """A ServiceClient for `backend` ("tinker" or "local", as resolved from the config), its
    session finished on the way out."""
    service = _service_client(backend, base_url, threads)
    status = "interrupted"  # unless the block ends normally or with an error
    try:
        yield service
        status = "success"
    except Exception:
        status = "errored"
        raise
    finally:
        try:  # bounded: an unreachable service must not hold up (or hide) the run's own ending
            service.close(status).result(timeout=SESSION_CLOSE_TIMEOUT_S)
        except Exception as exc:
            print(f"note: could not finish the {backend} session ({type(exc).__name__}); the "
                  "service ends it when its heartbeats stop")


class _SDKNoise(logging.Filter):
    """Log lines of the SDK that repeat what the scripts say themselves, or nothing: "Retrying
    request ... because of try_again" whenever a result takes longer than one long poll (the
    local server answers try_again after 20 s; a slow run printed 72 such lines), and "Request
    failed with non-retryable error", which the error the scripts then print names."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "because of try_again" not in message and "non-retryable error" not in message


_SDK_NOISE = _SDKNoise()


def _service_client(backend: str, base_url: str | None, threads: int | None) -> Any:
    import tinker

    logging.getLogger("tinker.lib.retry_handler").addFilter(_SDK_NOISE)
    if backend == "local":
        logging.getLogger("tinker.lib.api_future_impl").addFilter(_SDK_NOISE)
        if base_url:  # a server someone started: `python -m local_tinker serve`
            import local_tinker

            check_reachable(base_url)
            # $LOCAL_TINKER_API_KEY for a server its operator keyed, else the placeholder.
            return tinker.ServiceClient(base_url=base_url, api_key=local_tinker.client_api_key())
        url, key = start_local_server(threads)
        return tinker.ServiceClient(base_url=url, api_key=key)
    if backend != "tinker":
        raise BackendError(f"unknown backend {backend!r}")
    if not os.environ.get("TINKER_API_KEY"):
        raise BackendError("--backend tinker needs TINKER_API_KEY in the environment "
                           "(create a key in the Tinker console), or use --backend local")
    from tinker.lib.base_url import resolve_base_url

    check_reachable(resolve_base_url(base_url))
    return tinker.ServiceClient(base_url=base_url)


def get_tokenizer(sampling_client: Any, base_model: str) -> Any:
    """The tokenizer of `base_model`. The SDK loads it by hub name, which the built-in local
    models do not have (and offline a hub lookup fails), so theirs comes from the offline copy."""
    return tokenizer_for(base_model) or sampling_client.get_tokenizer()


def tokenizer_for(model: str) -> Any | None:
    """The model's tokenizer if it is available offline, else None (callers then approximate).
    The tiny models' is built in; any other is looked up in the local Hugging Face cache or at a
    local path, never over the network (a dry run must not download)."""
    if model in TINY_MODELS:
        from local_tinker.models import build_tiny_chat_tokenizer

        return build_tiny_chat_tokenizer()
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception:  # not cached, not a path, or no tokenizer files: approximate instead
        return None


class LazyModule(ModuleType):
    """Stands for the module `name`; imports it when the first attribute is looked up.
    `import tinker` takes about a second (tinker.types tries `import torch`), which `--help`
    and a mistyped flag should not wait for."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


types = LazyModule("tinker.types")
"""Use exactly like `from tinker import types`: `from common.backend import types`."""


def start_local_server(threads: int | None = None) -> tuple[str, str]:
    """(base_url, api_key) of this process's embedded local server, started on first use (and
    again only when --threads or the environment asks for a different one). Torch's thread
    count: `threads`, else LOCAL_TINKER_THREADS or OMP_NUM_THREADS, else chosen from the cores
    and the machine's load (local_tinker/threads.py), and said in one line."""
    import local_tinker

    env = os.environ
    try:
        options = {"root": env.get("LOCAL_TINKER_ROOT") or None,
                   "latency_s": float(env.get("LOCAL_TINKER_LATENCY_S", 0)),
                   "fault_rate": float(env.get("LOCAL_TINKER_FAULT_RATE", 0)),
                   "device": env.get("LOCAL_TINKER_DEVICE"), "threads": threads,
                   "sample_logprobs": env.get("LOCAL_TINKER_SAMPLE_LOGPROBS", "exact"),
                   "compile": local_tinker.compile_requested()}
        key = tuple(sorted(options.items()))
        if key not in _started:
            _started[key], _ = _servers.enter_context(local_tinker.embedded(**options))
    except ValueError as exc:  # a setting the server refuses (LOCAL_TINKER_*, --threads)
        raise BackendError(f"the local backend's settings: {exc}") from None
    return _started[key], local_tinker.LOCAL_API_KEY


def check_reachable(url: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Any HTTP answer counts as reachable; only connection failures and timeouts do not."""
    import httpx

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BackendError(f"--base_url {url!r} is not an http(s) URL")
    try:
        httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BackendError(
            f"cannot reach the Tinker service at {url} within {timeout_s:.0f} s "
            f"({type(exc).__name__}). Check --base_url / TINKER_BASE_URL, your network or proxy, "
            "and the service status; or run offline with --backend local."
        ) from None
