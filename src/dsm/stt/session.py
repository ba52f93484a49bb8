"""A live STT session: push pcm as it arrives, get words and pause events at once.

Events, in the order the model produces them:

* :class:`~dsm.stt.word_stream.WordStart` ``(index, text, start)``: a word, as soon as its
  pieces are complete;
* :class:`~dsm.stt.word_stream.WordContinued` ``(index, text, suffix, start, ended)``: a
  later piece without a word-start marker extended word ``index`` (``suffix`` is the text
  added); the finished transcript's words are the reference's decode split on whitespace;
* :class:`~dsm.stt.word_stream.WordEnd` ``(index, end)``: that word's end time (again, with
  the new end, after a ``WordContinued`` of a word that had already ended);
* :class:`PauseUpdate` ``(time, probabilities)``: with VAD, every 80 ms;
* :class:`EndOfTurn` ``(time)``: with VAD, once per turn.

Times are seconds of the session's audio. ``flush()`` drains the model's delay by feeding
silence as fast as the model runs, so the last words arrive without waiting in real time.
"""

from __future__ import annotations

import numpy as np
import torch

from dsm.mimi import FRAME_SIZE, SAMPLE_RATE, MimiCodec
from dsm.models.lm import LMModel
from dsm.stt.engine import SttEngine
from dsm.stt.framing import FeedPlan
from dsm.stt.stream import EndOfTurn, PauseUpdate, SttEvent, SttStream
from dsm.stt.vad import VadOptions
from dsm.tokenizer import TextTokenizer

__all__ = ["EndOfTurn", "PauseUpdate", "SttEvent", "SttSession"]


class SttSession:
    """One live stream on its own engine slot (see the module docstring).

    Opened by :meth:`dsm.stt.model.SpeechToText.stream`, which hands it the model's parts:
    the codec, the language model, the tokenizer, the feed plan of the checkpoint (silence
    prefix, delay), the text padding id and the number of VAD heads.
    """

    def __init__(
        self,
        codec: MimiCodec,
        lm: LMModel,
        tokenizer: TextTokenizer,
        plan: FeedPlan,
        *,
        padding_id: int,
        vad_heads: int = 0,
        sample_rate: int = SAMPLE_RATE,
        vad: VadOptions | None = None,
        prompt_tokens: list[int] | None = None,
    ) -> None:
        from dsm.audio import StreamResampler

        self.codec = codec
        self.sample_rate = sample_rate
        self.resampler = StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self.plan = plan
        prompt_tokens = prompt_tokens or []
        self.engine = SttEngine(codec, lm, 1, max_prompt_tokens=len(prompt_tokens))
        self.engine.start()
        self.engine.start_slot([0], [prompt_tokens] if prompt_tokens else None)
        self.vad = vad
        self.stream = SttStream(
            tokenizer, self.plan, padding_id=padding_id, vad=vad,
            vad_heads=vad_heads if vad is not None else 0,
        )  # fmt: skip
        self._buffer = np.zeros(0, dtype=np.float32)
        self._pcm = torch.zeros(1, FRAME_SIZE, dtype=torch.float32)
        self._closed = False
        self._pending_prefix = self.plan.left_samples

    def __enter__(self) -> SttSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(
        self, pcm: np.ndarray | torch.Tensor, sample_rate: int | None = None
    ) -> list[SttEvent]:
        """Add audio (mono ``[S]`` or ``[C, S]``, at the session's rate); returns new events."""
        if self._closed:
            raise RuntimeError("this STT session is closed")
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(
                f"this session takes {self.sample_rate} Hz audio; open a session with "
                f"sample_rate={sample_rate} for this stream"
            )
        audio = _as_mono(pcm)
        if self.resampler is not None:
            audio = self.resampler.push(audio)
        return self._feed(audio)

    def _feed(self, audio: np.ndarray) -> list[SttEvent]:
        events: list[SttEvent] = []
        if self._pending_prefix:
            silence = np.zeros(self._pending_prefix, dtype=np.float32)
            self._pending_prefix = 0
            audio = np.concatenate([silence, audio])
        self._buffer = np.concatenate([self._buffer, audio.astype(np.float32, copy=False)])
        n_full = self._buffer.shape[0] // FRAME_SIZE
        for i in range(n_full):
            events += self._step(self._buffer[i * FRAME_SIZE : (i + 1) * FRAME_SIZE])
        self._buffer = self._buffer[n_full * FRAME_SIZE :]
        return events

    def flush(self) -> list[SttEvent]:
        """Drain the model's delay now (silence fed faster than real time); closes open words."""
        if self._closed:
            raise RuntimeError("this STT session is closed")
        events: list[SttEvent] = []
        if self.resampler is not None:
            events += self._feed(self.resampler.flush())
        pad = (-self._buffer.shape[0]) % FRAME_SIZE
        events += self._feed(np.zeros(pad + self.plan.right_samples, dtype=np.float32))
        events += self._step(None)
        events += self.stream.finish()
        return events

    @property
    def tokens(self) -> list[int]:
        """Text tokens of steps 1.. (-1 for forced prompt tokens)."""
        return list(self.stream.tokens)

    def _step(self, frame: np.ndarray | None) -> list[SttEvent]:
        feed = torch.tensor([frame is not None])
        if frame is not None:
            self._pcm[0] = torch.from_numpy(np.ascontiguousarray(frame))
        out = self.engine.step(self._pcm.to(self.codec.device), torch.tensor([True]), feed)
        forced = bool(out.forced[0]) if out.forced is not None else False
        # Pause updates are reported with VAD on.
        pause = out.pause[0].tolist() if out.pause is not None and self.vad is not None else None
        return self.stream.push(int(out.tokens[0]), pause, forced)

    def close(self) -> None:
        """Release the session's state."""
        if not self._closed:
            self.engine.close()
            self._closed = True


def _as_mono(pcm: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(pcm, torch.Tensor):
        pcm = pcm.detach().cpu().float().numpy()
    audio = np.asarray(pcm, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.ndim != 1:
        raise ValueError(f"pcm must be [samples] or [channels, samples], got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("pcm contains NaN or infinite samples")
    return audio
