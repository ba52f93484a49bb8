"""The access log without secrets: API keys given as ``auth_id`` query parameters are redacted.

Browsers can't set WebSocket headers, so Kyutai's protocol accepts the API key as
``?auth_id=KEY``; aiohttp's access log writes the request line (and the ``Referer``) verbatim.
:class:`RedactingAccessLogger` is aiohttp's access logger with every ``auth_id`` value replaced
by ``<redacted>``, in the message and in the record's structured ``extra`` fields.
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

from aiohttp.web_log import AccessLogger

__all__ = ["REDACTED", "RedactingAccessLogger", "redact"]

REDACTED = "<redacted>"
_KEY_PARAM = re.compile(r"((?:^|[?&;\s])auth(?:_|%5f)id=)[^&;\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every ``auth_id=`` query parameter replaced."""
    return _KEY_PARAM.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_all(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_all(v) for k, v in value.items()}
    return value


class _Redacting(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        if "extra" in kwargs:
            kwargs["extra"] = _redact_all(kwargs["extra"])
        return (redact(msg) if isinstance(msg, str) else msg), kwargs


class RedactingAccessLogger(AccessLogger):
    """aiohttp's :class:`~aiohttp.web_log.AccessLogger` writing through a redacting adapter."""

    def __init__(self, logger: logging.Logger, log_format: str = AccessLogger.LOG_FORMAT) -> None:
        super().__init__(_Redacting(logger, {}), log_format)  # type: ignore[arg-type]
