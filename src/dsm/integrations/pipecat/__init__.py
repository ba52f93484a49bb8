"""Pipecat services backed by a running ``dsm serve``: ``DsmSTTService`` and ``DsmTTSService``.

They speak Kyutai's msgpack-over-WebSocket protocol (``/api/asr-streaming``,
``/api/tts_streaming``), so they also work with Kyutai's ``moshi-server``. Needs
``pip install 'dsm[pipecat]'`` (Pipecat 1.14); see docs/integrations/pipecat.md.
"""

from __future__ import annotations

import importlib

from dsm.errors import MissingExtraError
from dsm.extras import install_hint


def _require() -> None:
    """Import the packages of the ``pipecat`` extra, or say which extra to install."""
    for module in ("pipecat", "aiohttp", "msgpack"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(
                f"dsm.integrations.pipecat needs the {module} package, which is not installed: "
                f"{install_hint('pipecat')}"
            ) from exc


_require()

from dsm.integrations.pipecat.stt import DsmSTTService  # noqa: E402
from dsm.integrations.pipecat.tts import DsmTTSService  # noqa: E402

__all__ = ["DsmSTTService", "DsmTTSService"]
