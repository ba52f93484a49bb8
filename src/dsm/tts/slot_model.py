"""What a TTS stream and a live session need of the model: the protocol between layers.

:class:`~dsm.tts.stream.TtsStream` and :class:`~dsm.tts.session.TtsSession` sit below
:class:`~dsm.tts.model.TextToSpeech` (which opens sessions), so they name the model's few
methods they call through :class:`TtsSlotModel` instead of importing the model module; the
import graph stays a tree (tests/test_import_layers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from dsm.models.conditioners import Conditions
from dsm.tts.engine import TtsEngine
from dsm.tts.entries import EntryMaker

__all__ = ["TtsSlotModel", "Voice"]

# A name in the voice repo or a file: an embedding (.safetensors) or, for checkpoints conditioned
# on an audio prefix, a recording. Tensors: a [1, dim, T] embedding, or [n_q, P] prefix codes.
Voice = str | Path | torch.Tensor


class TtsSlotModel(Protocol):
    """The TTS model as a slot's stream and a live session use it."""

    def slot_conditions(self, voice: Voice | None, cfg: float) -> Conditions | None:
        """The condition rows of a slot speaking with ``voice``."""
        ...

    def slot_prefix(self, voices: Sequence[Voice | None]) -> torch.Tensor | None:
        """The audio prefix of a slot whose speakers are ``voices``."""
        ...

    def entry_maker(self) -> EntryMaker:
        """Turns words into the state machine's entries."""
        ...

    def batch_conditions(self, rows: list[Conditions]) -> Conditions | None:
        """The engine's template conditions for slots with these rows."""
        ...

    def make_engine(
        self,
        batch_size: int,
        conditions: Conditions | None,
        *,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
        record_tokens: bool = False,
    ) -> TtsEngine:
        """A slot engine for ``batch_size`` slots."""
        ...
