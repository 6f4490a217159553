"""The embedded local backend: a server for the tinker SDK's HTTP protocol on torch + peft.

`python -m local_tinker serve` runs it; `local_tinker.embedded()` starts one in this process on
a free loopback port. Clients are always the real SDK: `tinker.ServiceClient(base_url=...,
api_key=local_tinker.LOCAL_API_KEY)` on loopback, or with the operator's key beyond it
(`local_tinker.client_api_key()` picks the one to send).

The names below load on first use, so that `python -m local_tinker serve` checks its flags
before importing torch (a typo is answered in a fraction of a second).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# The SDK insists on a key that starts with "tml-". This one only ever goes to a loopback
# server; it is not a secret, and on a server with operator keys it grants nothing.
LOCAL_API_KEY = "tml-local-backend-placeholder"
API_KEY_ENV = "LOCAL_TINKER_API_KEY"

_LAZY = {
    "TINY_CHAT": "models", "UnknownModelError": "models", "available_models": "models",
    "LocalTinkerServer": "server", "PortInUse": "server", "SettingsError": "server",
    "embedded": "server", "local_service": "server",
}

__all__ = ["API_KEY_ENV", "LOCAL_API_KEY", "TINY_CHAT", "LocalTinkerServer", "PortInUse",
           "SettingsError", "UnknownModelError", "available_models", "client_api_key",
           "compile_requested", "embedded", "local_service"]


def client_api_key() -> str:
    """The key a client of a local server sends: the first of $LOCAL_TINKER_API_KEY (what an
    operator gives a server beyond loopback), else the loopback placeholder."""
    keys = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    return keys[0] if keys else LOCAL_API_KEY


def compile_requested() -> bool:
    """$LOCAL_TINKER_COMPILE asks for torch.compile'd training passes (any value but "" or "0")."""
    return os.environ.get("LOCAL_TINKER_COMPILE", "") not in ("", "0")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
