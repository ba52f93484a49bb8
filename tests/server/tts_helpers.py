"""A tiny TTS checkpoint built once per test session, and the real server serving it.

Building the reference checkpoint takes tens of seconds, so the test modules that need it
(``test_tts.py``, ``test_formats.py``) share one copy through :func:`shared_tts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from dsm.server import RunningServer, ServerConfig, SttModuleConfig, TtsModuleConfig, start_server
from tests.helpers.reference_tts import ReferenceTts, make_reference_tts_dir
from tests.server.conftest import KEY

TEXT = "Hello world, the fox jumps."

_SHARED: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class SharedTts:
    """The reference checkpoint, dsm's model of it, its voice, and ``TEXT`` synthesized."""

    ref: ReferenceTts
    tts: Any
    voice: str
    whole: Any  # tts.synthesize(TEXT) at temperature 0


def shared_tts(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    """The session's tiny TTS (built on first use)."""
    if "tts" not in _SHARED:
        from dsm.tts.model import load_tts

        ref = make_reference_tts_dir(tmp_path_factory.mktemp("server_tts"))
        tts = load_tts(ref.directory, voice_repo=ref.voice_dir, device="cpu")
        voice = str(ref.voice_path())
        whole = tts.synthesize(TEXT, voice=voice, temperature=0.0)
        _SHARED["tts"] = SharedTts(ref, tts, voice, whole)
    shared: SharedTts = _SHARED["tts"]
    return shared


@asynccontextmanager
async def serving_tts(
    tts: Any, voice: str, *, error_messages: bool = False, **options: Any
) -> AsyncIterator[RunningServer]:
    """The real server on 127.0.0.1, a free port, with the tiny TTS (greedy decoding)."""
    tts_cfg = dataclasses.replace(
        TtsModuleConfig(batch_size=2, temperature=0.0, voice=voice), **options
    )
    config = ServerConfig(
        host="127.0.0.1", port=0, authorized_ids=[KEY], stt=SttModuleConfig(), tts=tts_cfg,
        error_messages=error_messages,
    )  # fmt: skip
    running = await start_server(config, tts=tts)
    try:
        yield running
    finally:
        await running.stop(0.0)
