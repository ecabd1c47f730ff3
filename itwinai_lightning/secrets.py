"""Redact secrets (API keys, tokens, passwords) from configs and hyperparameters before anything logs them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***REDACTED***"

#: Key names treated as secret: the last dotted component *ends* with one of these words, case-insensitively
#: (``api_key``, ``WANDB_API_KEY``, ``hf_token``, ``db_password``; not ``token_count``).
SECRET_KEY_PATTERN = re.compile(
    r"(^|[_-])(api[_-]?key|apikey|access[_-]?key|secret([_-]?key)?|token|passw(or)?d|passwd|credentials?"
    r"|private[_-]?key|auth)$",
    re.IGNORECASE,
)
#: Values that look like credentials whatever their key (URLs with user:password@, bearer tokens).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)

#: Extra key names to redact, comma separated (e.g. ``ITWINAI_SECRET_KEYS=my_field,other``).
ENV_EXTRA_KEYS = "ITWINAI_SECRET_KEYS"


def _extra_keys(extra: Iterable[str] | None) -> set[str]:
    keys = {k.strip().lower() for k in (extra or ()) if k.strip()}
    keys |= {k.strip().lower() for k in os.environ.get(ENV_EXTRA_KEYS, "").split(",") if k.strip()}
    return keys


def is_secret_key(key: str, extra: Iterable[str] | None = None) -> bool:
    last = str(key).rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    return bool(SECRET_KEY_PATTERN.search(last)) or last.lower() in _extra_keys(extra)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    return value


def redact(obj: Any, extra_keys: Iterable[str] | None = None) -> Any:
    """Return a copy of ``obj`` (nested dicts/lists) with secret-looking keys' values replaced."""
    extra = _extra_keys(extra_keys)
    return _redact(obj, extra)


def _redact(obj: Any, extra: set[str]) -> Any:
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if value is not None and is_secret_key(str(key), extra) and not isinstance(value, Mapping | bool):
                out[key] = REDACTED
            else:
                out[key] = _redact(value, extra)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_redact(v, extra) for v in obj)
    return redact_value(obj)
