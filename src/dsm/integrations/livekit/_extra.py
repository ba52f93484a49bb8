"""The packages of the ``livekit`` extra, checked before the plugin modules import them."""

from __future__ import annotations

import importlib

from dsm.errors import MissingExtraError
from dsm.extras import import_optional, install_hint

__all__ = ["PURPOSE", "require_livekit"]

PURPOSE = "dsm.integrations.livekit"
_LIVEKIT = ("livekit.agents", "livekit.rtc")
_SERVER = ("aiohttp", "msgpack", "numpy")  # dsm[server]'s client packages, in dsm[livekit] too


def require_livekit() -> None:
    """Raise :class:`~dsm.errors.MissingExtraError` (``pip install 'dsm[livekit]'``) unless
    livekit-agents and the client packages the plugins use are installed."""
    for module in _LIVEKIT:
        import_optional(module, PURPOSE)
    for module in _SERVER:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(
                f"{PURPOSE} needs the {module} package, which is not installed: "
                f"{install_hint('livekit')}"
            ) from exc
