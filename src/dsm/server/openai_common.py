"""What the OpenAI-compatible routes share: the model ids and the "ignored parameter" warning.

Model ids are what ``GET /v1/models`` lists and what a client may pass back as ``model``: the
checkpoint's hub id (``kyutai/stt-1b-en_fr``), or a local checkpoint's folder name, never a
filesystem path. A request naming another model (``whisper-1``, ``tts-1``...) is served by the
server's model, as every request is, and says so in its warning.

Parameters OpenAI defines that the model cannot honour are accepted and named in a
``Warning: 299 dsm "..."`` response header (RFC 9111's warn-code 299, "miscellaneous
persistent warning"), so a client can see what was not applied.
"""

from __future__ import annotations

import os
from pathlib import PurePath

from aiohttp import web

from dsm.server.state import DsmServer

__all__ = [
    "WARNING_HEADER",
    "model_id",
    "model_note",
    "stt_model_id",
    "tts_model_id",
    "warn_ignored",
]

WARNING_HEADER = "Warning"


def model_id(name: str, fallback: str) -> str:
    """The public id of a checkpoint loaded from ``name`` (hub id or local path)."""
    if not name:
        return fallback
    looks_local = (
        name.startswith((".", "~", "/", "\\")) or os.path.isabs(name) or os.path.exists(name)
    )
    if looks_local:
        return PurePath(name.replace("\\", "/")).name or fallback
    return name


def stt_model_id(server: DsmServer) -> str:
    """The id of the server's STT model (``dsm-stt`` when it has no name)."""
    return model_id(getattr(server.stt.stt, "name", "") if server.stt else "", "dsm-stt")


def tts_model_id(server: DsmServer) -> str:
    """The id of the server's TTS model (``dsm-tts`` when it has no name)."""
    return model_id(getattr(server.tts.tts, "name", "") if server.tts else "", "dsm-tts")


def warn_ignored(response: web.StreamResponse, notes: list[str]) -> None:
    """Add the warning header naming what the request asked for and did not get."""
    if notes:
        text = "; ".join(notes).replace('"', "'")
        response.headers[WARNING_HEADER] = f'299 dsm "{text}"'


def model_note(requested: object, served: str) -> list[str]:
    """The warning note for a ``model`` field that names another model than ``served``."""
    if requested is None or requested == served:
        return []
    return [f"model {str(requested)[:80]!r} is not served here; {served} answered"]
