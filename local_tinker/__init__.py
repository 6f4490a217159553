"""An embedded backend with the tinker SDK's client interface, on torch + transformers + peft.

`local_tinker.ServiceClient()` stands in for `tinker.ServiceClient()`: same method names and
signatures, the SDK's own `tinker.types` in and out, futures with `.result()` and `await`.
"""

from .client import SamplingClient, ServiceClient, TrainingClient
from .losses import LossInputError
from .models import TINY_CHAT, UnknownModelError, available_models

__all__ = [
    "TINY_CHAT",
    "LossInputError",
    "SamplingClient",
    "ServiceClient",
    "TrainingClient",
    "UnknownModelError",
    "available_models",
]
