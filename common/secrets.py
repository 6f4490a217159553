"""Keep API keys out of everything a run writes: config files, metrics, tables, console, W&B.

Three rules, all applied by `redact`:
- any occurrence of a secret's value (read from the environment now) inside a string -> "***".
  An env var is a secret when its NAME looks like one, broadly: it contains KEY, TOKEN,
  SECRET, PASSWORD, PASSWD, CREDENTIAL, AUTH or PRIVATE (`MY_SERVICE_KEY`, `OPENAI_KEY`,
  `PRIVATE_KEY`, `HF_TOKEN`); the password inside any env var that holds a URL
  (`DATABASE_URL=postgres://user:PASS@host/db`) is a secret too;
- credentials written inside a URL in any string (`https://user:PASS@host`,
  `?api_key=PASS`) are masked whatever they are;
- a mapping key that names a secret (`api_key`, `hf_token`, `WANDB_API_KEY`, `db_password`,
  ...) gets its value replaced by "***", whatever the value is (None stays None: "not set").
Mapping keys (config fields, metric names) are matched on their ending, so `max_tokens`,
`pad_token_id` and `tokens/trained` are left alone; tokenizer special tokens (`eos_token`, ...)
are not secrets either. `redact_name` is `redact` for strings that become names and paths.
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
# Env var names: broad on purpose (a value of under MIN_SECRET_LEN characters is never masked,
# so TOKENIZERS_PARALLELISM=false and the like cost nothing).
_SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE")
# scheme://user:PASSWORD@host  and  ?api_key=VALUE / &token=VALUE / &sig=VALUE
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)@")
_URL_QUERY_SECRET = re.compile(
    r"([?&;][^=&\s#]*(?:key|token|secret|password|passwd|sig|signature|auth)[^=&\s#]*=)"
    r"([^&\s#;]+)", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True when a mapping key (config field, env var name) names a secret."""
    normalized = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return bool(_SECRET_KEY.search(normalized)) and not _SPECIAL_TOKEN.match(normalized)


def is_secret_env_name(name: str) -> bool:
    """True when an environment variable's name says it holds a secret (broad, see above)."""
    return name in SECRET_ENV_VARS or bool(_SECRET_ENV_NAME.search(name.upper()))


def secret_values() -> list[str]:
    """Values of the secret env vars set now (see the module docstring), and passwords inside
    URL-valued env vars. Longest first, so a secret containing another one is masked whole."""
    values = {v for n, v in os.environ.items() if is_secret_env_name(n) or is_secret_key(n)}
    for value in os.environ.values():
        if "://" in value:
            values.update(m.group(2) for m in _URL_USERINFO.finditer(value))
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of `obj` (str / dict / list / tuple, nested) with secrets masked; never mutates.

    `secrets` defaults to `secret_values()`; other leaf types are returned as they are.
    """
    values = secret_values() if secrets is None else [s for s in secrets if s]
    return _redact(obj, values)


def redact_name(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` redacted and made safe as a run name, W&B group and path part."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", redact(text, secrets).replace(MASK, "REDACTED"))


def _redact(obj: Any, values: list[str]) -> Any:
    if isinstance(obj, str):
        for value in values:
            obj = obj.replace(value, MASK)
        if "://" in obj or "=" in obj:
            obj = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", obj)
            obj = _URL_QUERY_SECRET.sub(lambda m: m.group(1) + MASK, obj)
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
