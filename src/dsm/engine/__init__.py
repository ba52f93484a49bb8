"""The serving engine: fixed tables of model slots, each table driven by one model thread.

No web framework here: :class:`~dsm.engine.stt.SttModule` and :class:`~dsm.engine.tts.TtsModule`
run from plain Python (a connection claims a :class:`~dsm.engine.slots.Channel`, pushes input
and reads the stream's events); :mod:`dsm.server` puts HTTP and WebSocket routes on top.
"""

from __future__ import annotations

from dsm.engine.metrics import ServerMetrics
from dsm.engine.slots import Channel, ModelModule, ModuleUnavailable
from dsm.engine.stt import SttChannel, SttModule
from dsm.engine.tts import TtsChannel, TtsModule

__all__ = [
    "Channel",
    "ModelModule",
    "ModuleUnavailable",
    "ServerMetrics",
    "SttChannel",
    "SttModule",
    "TtsChannel",
    "TtsModule",
]
