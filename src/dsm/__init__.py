"""dsm: Delayed Streams Modeling, Kyutai's streaming speech-to-text and text-to-speech.

Entry points are imported lazily so that ``import dsm`` stays cheap::

    codec = dsm.load_mimi("kyutai/stt-1b-en_fr")
    lm = dsm.load_lm("kyutai/stt-1b-en_fr")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_mimi": "dsm.mimi",
    "MimiCodec": "dsm.mimi",
    "load_lm": "dsm.lm",
    "load_stt": "dsm.stt.model",
    "SpeechToText": "dsm.stt.model",
    "Transcript": "dsm.stt.transcript",
    "load_tts": "dsm.tts.model",
    "TextToSpeech": "dsm.tts.model",
    "Speech": "dsm.tts.model",
    "open_checkpoint": "dsm.checkpoint",
    "parse_config": "dsm.checkpoint",
    "DsmError": "dsm.errors",
    "ConfigError": "dsm.errors",
    "CheckpointError": "dsm.errors",
    "WeightsError": "dsm.errors",
}

_SUBPACKAGES = {"audio", "checkpoint", "eval", "generate", "models", "nn", "stt", "tts"}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in _SUBPACKAGES:
            value = importlib.import_module(f"dsm.{name}")
            globals()[name] = value
            return value
        raise AttributeError(f"module 'dsm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
