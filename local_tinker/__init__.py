"""The embedded local backend: a server for the tinker SDK's HTTP protocol on torch + peft.

`python -m local_tinker serve` runs it; `local_tinker.embedded()` starts one in this process on
a free loopback port. Clients are always the real SDK: `tinker.ServiceClient(base_url=...,
api_key=local_tinker.LOCAL_API_KEY)`.
"""

from .models import TINY_CHAT, UnknownModelError, available_models
from .server import LOCAL_API_KEY, LocalTinkerServer, PortInUse, embedded, local_service

__all__ = [
    "LOCAL_API_KEY",
    "TINY_CHAT",
    "LocalTinkerServer",
    "PortInUse",
    "UnknownModelError",
    "available_models",
    "embedded",
    "local_service",
]
