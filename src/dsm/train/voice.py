"""A new voice from recordings: the speaker embedding learnt by gradient descent, model frozen.

kyutai/tts-1.6b-en_fr is conditioned on a ``speaker_wavs`` tensor ``[1, 512, 125]`` (cross
attended, model-spec §2.7, §5.5) made by an encoder that was never released. The tensor is
small, so it can be learnt: with every model parameter frozen, :func:`learn_voice` runs Adam on
the embedding alone to minimise the teacher-forced TTS loss (:mod:`dsm.train.tts_target`) of a
speaker's recordings, given as Mimi codes and timed words. :func:`save_voice` writes it in the
voice repo's format (same tensor name, shape and dtype, the checkpoint's ``sig``/``epoch``), so
``--voice my.safetensors`` works everywhere a repo voice does, and in the reference
``TTSModel``.

:func:`recording_targets` prepares the recordings: decoded at 24 kHz, checked (length,
silence), cut into segments at word gaps, Mimi-encoded; their words come from a timed
transcript, a forced alignment of a plain one (:func:`align_words`), or the STT model.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm.audio import load_audio
from dsm.audio.checks import is_silent
from dsm.checkpoint.config import ModelId
from dsm.errors import DsmError
from dsm.frames import FRAME_RATE, SAMPLE_RATE
from dsm.models.conditioners import TensorConditioner
from dsm.stt.words import Word
from dsm.train.tts_target import (
    TtsTarget,
    build_target,
    collate,
    training_conditions,
    tts_loss,
)
from dsm.tts.model import SPEAKER_CONDITION, TextToSpeech
from dsm.tts.voices import EMBEDDING_KEY

__all__ = [
    "MIN_SPEECH_SECONDS",
    "VOICE_FRAMES",
    "VoiceCreationError",
    "VoiceFit",
    "align_words",
    "initial_voice",
    "learn_voice",
    "load_recordings",
    "recording_targets",
    "save_voice",
    "voice_loss",
]

VOICE_SECONDS = 10.0  # what upstream's voice script encodes (zero-padded)
VOICE_FRAMES = round(VOICE_SECONDS * FRAME_RATE)  # 125, the repo embeddings' length
MIN_SPEECH_SECONDS = 5.0  # less than this is refused: too little to learn a voice from
MAX_SEGMENT_SECONDS = 20.0  # one teacher-forced example at most (well within the context)
MARGIN_SECONDS = 0.4  # audio kept before a segment's first word


class VoiceCreationError(DsmError, ValueError):
    """Recordings or transcripts a voice cannot be made from."""


def align_words(stt: Any, audio: np.ndarray, text: str) -> list[Word]:
    """Timed words of ``text`` in ``audio`` (24 kHz) by forced alignment with the STT model
    (``SpeechToText.align``); raises :class:`VoiceCreationError` when the text does not fit."""
    align = getattr(stt, "align", None)
    if align is None:
        raise VoiceCreationError(
            "aligning a plain transcript needs SpeechToText.align, which this dsm lacks: give "
            "timed words (the JSON of `dsm transcribe`/`dsm align`) or no transcript"
        )
    try:
        transcript = align(audio, text, sample_rate=SAMPLE_RATE)
    except DsmError as exc:
        raise VoiceCreationError(f"the transcript does not match the audio: {exc}") from exc
    words = list(transcript.words)
    if not words:
        raise VoiceCreationError("the transcript does not match the audio: no word was aligned")
    return words


def _segments(words: list[Word]) -> list[list[Word]]:
    """Words grouped into segments of at most :data:`MAX_SEGMENT_SECONDS`, cut at word gaps."""
    groups: list[list[Word]] = []
    for word in words:
        if groups and word.end - groups[-1][0].start + MARGIN_SECONDS <= MAX_SEGMENT_SECONDS:
            groups[-1].append(word)
        else:
            groups.append([word])
    return groups


def load_recordings(recordings: Sequence[str | Path]) -> list[np.ndarray]:
    """The recordings as 24 kHz mono pcm, refused when silent or too short in all."""
    audios: list[np.ndarray] = []
    for path in recordings:
        audio = load_audio(path)
        if is_silent(audio):
            raise VoiceCreationError(f"{path} is silent: give recordings of the speaker's voice")
        audios.append(audio)
    total = sum(len(a) for a in audios) / SAMPLE_RATE
    if total < MIN_SPEECH_SECONDS:
        raise VoiceCreationError(
            f"{total:.1f} s of audio in all: a voice needs at least {MIN_SPEECH_SECONDS:g} s of "
            "the speaker (a minute or more gives a closer voice)"
        )
    return audios


def recording_targets(
    tts: TextToSpeech,
    audios: Sequence[np.ndarray],
    words: Sequence[list[Word] | None],
    *,
    transcripts: Sequence[str | None] | None = None,
    stt: Any = None,
    names: Sequence[str] | None = None,
) -> list[TtsTarget]:
    """Training examples of recordings (from :func:`load_recordings`).

    For each recording, ``words[i]`` are its timed words, or None: then its plain transcript
    ``transcripts[i]`` is aligned with ``stt``, or without one ``stt`` transcribes it.
    ``names`` name the recordings in errors.
    """
    targets: list[TtsTarget] = []
    for i, audio in enumerate(audios):
        path = names[i] if names is not None else f"recording {i + 1}"
        timed = words[i]
        if timed is None:
            if stt is None:
                raise VoiceCreationError(f"no timed words for {path} and no STT model")
            text = transcripts[i] if transcripts is not None else None
            if text is not None:
                try:
                    timed = align_words(stt, audio, text)
                except VoiceCreationError as exc:
                    raise VoiceCreationError(f"{path}: {exc}") from None
            else:
                timed = list(stt.transcribe(audio, sample_rate=SAMPLE_RATE).words)
        if not timed:
            raise VoiceCreationError(f"no words found in {path}: a voice is learnt from speech")
        for group in _segments(timed):
            start = max(0.0, group[0].start - MARGIN_SECONDS)
            end = min(len(audio) / SAMPLE_RATE, group[-1].end + MARGIN_SECONDS)
            piece = audio[int(start * SAMPLE_RATE) : math.ceil(end * SAMPLE_RATE)]
            codes = tts.codec.encode(torch.from_numpy(piece)[None, None].to(tts.codec.device))
            shifted = [Word(w.text, w.start - start, w.end - start) for w in group]
            targets.append(build_target(tts, codes[0, : tts.lm.n_q].cpu(), shifted))
    return targets


def initial_voice(
    tts: TextToSpeech, audio: np.ndarray | None = None, frames: int = VOICE_FRAMES
) -> torch.Tensor:
    """The starting embedding ``[1, dim, frames]``: the Mimi latent of the first 10 s of
    ``audio`` (what upstream's voice script feeds its encoder) when its width is the speaker
    conditioner's, else zeros."""
    dim = _speaker_dim(tts)
    if audio is not None:
        samples = int(frames / FRAME_RATE * SAMPLE_RATE)
        pcm = np.zeros(samples, dtype=np.float32)
        pcm[: min(samples, len(audio))] = audio[:samples]
        latent = tts.codec.encode_to_latent(torch.from_numpy(pcm)[None, None].to(tts.codec.device))
        if latent.shape[1] == dim and latent.shape[2] >= frames:
            return latent[:, :, :frames].float().cpu().contiguous()
    return torch.zeros(1, dim, frames)


def _speaker_dim(tts: TextToSpeech) -> int:
    if not tts.multi_speaker:
        raise VoiceCreationError(
            f"{tts.name or 'this checkpoint'} has no speaker conditioner: its voices are "
            "recordings given as an audio prefix, nothing to learn"
        )
    speaker = tts._conditioners[SPEAKER_CONDITION]
    assert isinstance(speaker, TensorConditioner)
    return int(speaker.dim)


def voice_loss(
    tts: TextToSpeech,
    targets: Sequence[TtsTarget],
    voice: torch.Tensor,
    *,
    cfg: float | None = None,
    batch_size: int = 4,
    codebooks: int | None = None,
) -> float:
    """Mean teacher-forced loss of ``targets`` spoken by ``voice`` (no gradient; ``codebooks``:
    see :func:`~dsm.train.tts_target.tts_loss`)."""
    total = 0.0
    with torch.no_grad():
        for batch in _batches(list(targets), batch_size):
            codes, text = collate(batch)
            conditions = training_conditions(tts, voice, len(batch), cfg)
            loss = tts_loss(tts, codes, text, conditions, codebooks=codebooks)
            total += float(loss.total) * len(batch)
    return total / len(targets)


def _batches(items: list[TtsTarget], size: int) -> list[list[TtsTarget]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class VoiceFit:
    """A learnt voice ``[1, dim, frames]`` and the training loss after each step."""

    voice: torch.Tensor
    losses: list[float]


def learn_voice(
    tts: TextToSpeech,
    targets: Sequence[TtsTarget],
    init: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 0.05,
    batch_size: int = 4,
    cfg: float | None = None,
    seed: int = 0,
    codebooks: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> VoiceFit:
    """Adam on the embedding alone, from ``init``; ``tts`` must be frozen
    (:func:`dsm.train.tts_target.freeze`). Each step takes ``batch_size`` examples in a
    shuffled order; ``codebooks`` limits the audio loss to the first codebooks (faster: see
    :func:`~dsm.train.tts_target.tts_loss`); ``on_step(step, loss)`` reports progress."""
    if not targets:
        raise VoiceCreationError("no training examples")
    if any(p.requires_grad for p in tts.lm.parameters()):
        raise DsmError("freeze the model first (dsm.train.tts_target.freeze)")
    voice = init.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([voice], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    items = list(targets)
    order: list[int] = []
    losses: list[float] = []
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(items), generator=gen).tolist()
        picked = [items[i] for i in order[:batch_size]]
        del order[:batch_size]
        codes, text = collate(picked)
        optimizer.zero_grad(set_to_none=True)
        conditions = training_conditions(tts, voice, len(picked), cfg)
        loss = tts_loss(tts, codes, text, conditions, codebooks=codebooks)
        loss.total.backward()
        optimizer.step()
        losses.append(float(loss.total.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return VoiceFit(voice.detach().clone(), losses)


def save_voice(path: str | Path, voice: torch.Tensor, model_id: ModelId | None) -> Path:
    """Write ``voice`` as a voice repo embedding: float32 ``speaker_wavs`` ``[1, dim, T]`` with
    the checkpoint's ``sig``/``epoch``; written to a temporary file then renamed (nothing
    half-written on failure)."""
    from safetensors.torch import save_file

    target = Path(path)
    metadata = {} if model_id is None else {"sig": str(model_id.sig), "epoch": str(model_id.epoch)}
    tensor = voice.detach().float().cpu().contiguous()
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise VoiceCreationError(f"a voice is [1, dim, frames], got {list(tensor.shape)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file({EMBEDDING_KEY: tensor}, tmp, metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
