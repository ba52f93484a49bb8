"""Home Assistant's Wyoming protocol, served by ``dsm serve --wyoming-uri tcp://HOST:PORT``
beside the WebSocket/HTTP API and on the same STT and TTS slots.

``describe`` -> ``info`` (an asr and a tts program: models, languages, voices, streaming
support); ``transcribe`` + ``audio-start``/``audio-chunk``/``audio-stop`` -> ``transcript-start``,
``transcript-chunk``s as words are decoded, ``transcript``, ``transcript-stop``
(:mod:`~dsm.server.wyoming.asr`); ``synthesize``, or ``synthesize-start``/``-chunk``/``-stop``
-> ``audio-start``, ``audio-chunk``s as frames are produced, ``audio-stop`` (and
``synthesize-stopped``) (:mod:`~dsm.server.wyoming.tts`). Input checks and error handling:
:mod:`~dsm.server.wyoming.connection`. Needs ``pip install 'dsm[wyoming]'``; setup for Home
Assistant: ``docs/wyoming.md``.
"""

from __future__ import annotations

from dsm.server.wyoming.service import WyomingService, parse_uri, start_wyoming

__all__ = ["WyomingService", "parse_uri", "start_wyoming"]
