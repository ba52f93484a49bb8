"""Fine-tuning text-to-speech: the :class:`~dsm.train.loop.TrainTask` of ``dsm finetune tts``.

Items are prepared once before training: each utterance's audio is encoded by Mimi (cached on
disk, :mod:`dsm.train.codes_cache`) and, with its timed words, becomes a teacher-forcing example
built as the model generates (:func:`dsm.train.tts_target.build_target`: text stream leading,
audio delayed by ``delay_steps`` and the checkpoint's delays). Every example is spoken with one
voice (``--voice``: a voice of the repo or a file, e.g. made by ``dsm voices create``) under the
CFG condition the checkpoint expects. The loss is :func:`dsm.train.tts_target.tts_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsm.train.codes_cache import CodesCache
from dsm.train.loop import LossSum
from dsm.train.manifest import Utterance
from dsm.train.tts_target import TtsTarget, build_target, collate, training_conditions, tts_loss
from dsm.tts.model import TextToSpeech

__all__ = ["TtsBatch", "TtsItem", "TtsTask", "prepare_tts_items"]


@dataclass(frozen=True)
class TtsItem:
    """One prepared utterance and its length in seconds."""

    target: TtsTarget
    seconds: float


@dataclass(frozen=True)
class TtsBatch:
    """Codes ``[B, 1 + n_q, T]``, text targets ``[B, T]`` and seconds of audio."""

    codes: torch.Tensor
    text: torch.Tensor
    seconds: float


def prepare_tts_items(
    tts: TextToSpeech, utterances: Sequence[Utterance], cache: CodesCache
) -> list[TtsItem]:
    """Examples of aligned ``utterances`` (see the module docstring)."""
    items = []
    for u in utterances:
        assert u.words is not None, "align the utterances first (align_missing)"
        codes = cache.codes(u.audio, 0, 0)[: tts.lm.n_q]
        items.append(TtsItem(build_target(tts, codes, list(u.words)), u.duration))
    return items


class TtsTask:
    """Fine-tune ``tts.lm`` on ``items`` spoken by ``voice``; validation loss on ``val``."""

    def __init__(
        self,
        tts: TextToSpeech,
        items: Sequence[TtsItem],
        *,
        voice: torch.Tensor | None,
        save: Callable[[Path], list[Path]],
        cfg: float | None = None,
        val: Sequence[TtsItem] = (),
    ) -> None:
        self.tts = tts
        self.model: nn.Module = tts.lm
        self.items = list(items)
        self.val = list(val)
        self.voice = voice
        self.cfg = cfg
        self._save = save

    def __len__(self) -> int:
        return len(self.items)

    def collate(self, indices: Sequence[int]) -> TtsBatch:
        chosen = [self.items[i] for i in indices]
        codes, text = collate([item.target for item in chosen])
        device = next(self.model.parameters()).device
        return TtsBatch(codes.to(device), text.to(device), sum(i.seconds for i in chosen))

    def loss(self, model: nn.Module, batch: TtsBatch) -> LossSum:
        """The TTS loss, one unit per utterance (the loop divides by the utterances)."""
        B = batch.codes.shape[0]
        conditions = training_conditions(self.tts, self.voice, B, self.cfg)
        loss = tts_loss(self.tts, batch.codes, batch.text, conditions, model=model)
        metrics = {
            "text_loss": float(loss.text.detach()) * B,
            "audio_loss": float(loss.audio.detach()) * B,
        }
        return LossSum(loss.total * B, float(B), batch.seconds, metrics)

    def validate(self) -> dict[str, float]:
        """Mean loss of the validation items."""
        if not self.val:
            return {}
        total = 0.0
        for start in range(0, len(self.val), 4):
            chosen = self.val[start : start + 4]
            codes, text = collate([item.target for item in chosen])
            conditions = training_conditions(self.tts, self.voice, len(chosen), self.cfg)
            total += float(tts_loss(self.tts, codes, text, conditions).total) * len(chosen)
        return {"loss": total / len(self.val)}

    def save(self, directory: Path) -> list[Path]:
        return self._save(directory)
