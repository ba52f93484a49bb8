"""LiveKit Agents plugin: STT and TTS from a ``dsm serve`` (``pip install 'dsm[livekit]'``).

::

    from livekit.agents import AgentSession
    from dsm.integrations import livekit as dsm_livekit

    session = AgentSession(
        stt=dsm_livekit.STT(base_url="ws://127.0.0.1:8080"),
        tts=dsm_livekit.TTS(base_url="ws://127.0.0.1:8080", voice="NAME"),
        llm=...,
    )

Both speak Kyutai's msgpack-over-WebSocket protocol, so they also work against Kyutai's
``moshi-server``. Without the extra, importing this package raises
:class:`~dsm.errors.MissingExtraError` naming it. See docs/integrations/livekit.md.
"""

from __future__ import annotations

from dsm.integrations.livekit._extra import require_livekit

require_livekit()

from dsm.integrations.livekit.stt import STT, SpeechStream, STTOptions  # noqa: E402
from dsm.integrations.livekit.tts import (  # noqa: E402
    TTS,
    ChunkedStream,
    SynthesizeStream,
    TTSOptions,
)
from dsm.stt.vad import VadOptions  # noqa: E402

__all__ = [
    "STT",
    "TTS",
    "ChunkedStream",
    "STTOptions",
    "SpeechStream",
    "SynthesizeStream",
    "TTSOptions",
    "VadOptions",
]
