"""`connect(cfg)`: a Tinker ServiceClient or the embedded local one; the only module that knows.

Scripts then use only the tinker SDK's method names. Before handing out a Tinker client we check
that the endpoint answers at all, because the SDK retries an unreachable server for a long time
(its progress timeout is two hours) and a user with a typo in --base_url deserves an answer in
seconds.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

REACHABILITY_TIMEOUT_S = 10.0


class BackendError(RuntimeError):
    """The chosen backend cannot be used; the message says what to check."""


def connect(backend: str, base_url: str | None = None) -> Any:
    """A ServiceClient for `backend` ("tinker" or "local", as resolved from the config)."""
    if backend == "local":
        import local_tinker

        return local_tinker.ServiceClient()
    if backend != "tinker":
        raise BackendError(f"unknown backend {backend!r}")
    if not os.environ.get("TINKER_API_KEY"):
        raise BackendError("--backend tinker needs TINKER_API_KEY in the environment "
                           "(create a key in the Tinker console), or use --backend local")
    import tinker
    from tinker.lib.base_url import resolve_base_url

    url = resolve_base_url(base_url)
    check_reachable(url)
    return tinker.ServiceClient(base_url=base_url)


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
