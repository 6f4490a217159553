"""Keep API keys out of everything a run writes: config files, metrics, tables, console, W&B.

Two rules, both applied by `redact`:
- any occurrence of a secret's value (read from the environment now) inside a string -> "***";
- a mapping key that names a secret (`api_key`, `hf_token`, `WANDB_API_KEY`, `db_password`,
  ...) gets its value replaced by "***", whatever the value is (None stays None: "not set").
Key names are matched on their ending, so `max_tokens`, `pad_token_id` and `tokens/trained`
are left alone; tokenizer special tokens (`eos_token`, ...) are not secrets either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

SECRET_ENV_VARS = (
    "TINKER_API_KEY",
    "WANDB_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GITHUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
)
MASK = "***"
# Shorter values are too likely to occur in ordinary text ("true", a port number, ...).
MIN_SECRET_LEN = 8

_SECRET_KEY = re.compile(r"(api_?key|token|secret|secret_?(access_)?key|password|passwd)$")
_SPECIAL_TOKEN = re.compile(r"^(eos|bos|pad|unk|sep|cls|mask)_?token$")


def is_secret_key(name: str) -> bool:
    """True when a mapping key (config field, env var name) names a secret."""
    normalized = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return bool(_SECRET_KEY.search(normalized)) and not _SPECIAL_TOKEN.match(normalized)


def secret_values() -> list[str]:
    """Values of the secret env vars set now (SECRET_ENV_VARS plus any `*_API_KEY`/`*_TOKEN`...).

    Longest first, so a secret containing another one is masked whole.
    """
    names = set(SECRET_ENV_VARS) | {n for n in os.environ if is_secret_key(n)}
    values = {os.environ.get(n, "") for n in names}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of `obj` (str / dict / list / tuple, nested) with secrets masked; never mutates.

    `secrets` defaults to `secret_values()`; other leaf types are returned as they are.
    """
    values = secret_values() if secrets is None else [s for s in secrets if s]
    return _redact(obj, values)


def _redact(obj: Any, values: list[str]) -> Any:
    if isinstance(obj, str):
        for value in values:
            obj = obj.replace(value, MASK)
        return obj
    if isinstance(obj, dict):
        return {
            _redact(k, values): (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v is not None
                else _redact(v, values)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redact(v, values) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_redact(v, values) for v in obj)
    return obj
