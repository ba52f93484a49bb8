"""One input being transcribed in an engine slot: what to feed, what came out.

A job owns its feed (silence, optional prompt audio, the input streamed from disk, silence),
turns the slot's text tokens into words, collects pause probabilities, and builds the
:class:`~dsm.stt.transcript.Transcript` when the model has consumed the last frame.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import numpy as np

from dsm.mimi import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from dsm.stt.framing import FeedPlan, feed_chunks, frames_of
from dsm.stt.stream import EndOfTurn, PauseUpdate, SttStream
from dsm.stt.transcript import Transcript
from dsm.stt.vad import VadOptions
from dsm.stt.words import fit_words, join_words
from dsm.tokenizer import TextTokenizer

__all__ = ["SILENCE_PEAK", "TranscriptionJob"]

SILENCE_PEAK = 1e-4  # an input whose samples all stay below this is reported as silent


class _CountingAudio:
    """Wraps the input's chunks to measure its length and loudness on the fly."""

    def __init__(self, chunks: Iterator[np.ndarray]) -> None:
        self.chunks = chunks
        self.samples = 0
        self.peak = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.chunks:
            chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
            if chunk.size:
                self.samples += int(chunk.shape[0])
                self.peak = max(self.peak, float(np.abs(chunk).max()))
            yield chunk


class TranscriptionJob:
    """Feeds one input to a slot and assembles its transcript."""

    def __init__(
        self,
        source: str,
        audio: Iterator[np.ndarray],
        plan: FeedPlan,
        tokenizer: TextTokenizer,
        *,
        padding_id: int,
        prompt_audio: np.ndarray | None = None,
        prompt_tokens: list[int] | None = None,
        cut_prompt: bool = True,
        vad: VadOptions | None = None,
        vad_heads: int = 0,
    ) -> None:
        self.source = source
        self.plan = plan
        self.tokenizer = tokenizer
        self.padding_id = padding_id
        self.prompt_tokens = prompt_tokens or []
        self.cut_prompt = cut_prompt
        self._audio = _CountingAudio(audio)
        self._frames = frames_of(feed_chunks(plan, self._audio, prompt_audio))
        self.frames_fed = 0  # frames handed out by next_frame
        self.fed_all = False
        self.done = False
        # Reference prompt script: drop the prompt's frames plus the delay and prefix.
        cut_tokens = 0
        if plan.prompt_frames and cut_prompt:
            cut_tokens = plan.prompt_frames + int(
                (plan.delay_seconds + plan.prefix_seconds) * FRAME_RATE
            )
        self.stream = SttStream(
            tokenizer, plan, padding_id=padding_id, vad=vad, vad_heads=vad_heads,
            cut_tokens=cut_tokens, keep_forced=not cut_prompt,
        )  # fmt: skip
        self.pause_rows = array("f")  # [steps * n_heads], row-major
        self.pause_times = array("f")
        self.pause_heads = 0
        self.end_of_turns: list[float] = []

    @property
    def step(self) -> int:
        """The slot's next step."""
        return self.stream.step

    def next_frame(self) -> np.ndarray | None:
        """The next 1920-sample frame to encode, or None once everything was fed."""
        if self.fed_all:
            return None
        frame = next(self._frames, None)
        if frame is None:
            self.fed_all = True
        else:
            self.frames_fed += 1
        return frame

    def check_done(self) -> bool:
        """Marks the job done once every frame was fed and the model consumed the last one
        (frame ``k`` is consumed at step ``k + 1``); returns :attr:`done`."""
        if self.fed_all and self.step > self.frames_fed:
            self.done = True
        return self.done

    def consume(self, token: int, pause: list[float] | None, forced: bool) -> None:
        """Take the slot's output of one step; marks the job done after the last frame."""
        for event in self.stream.push(token, pause, forced):
            if isinstance(event, PauseUpdate):
                self.pause_rows.extend(event.probabilities)
                self.pause_times.append(event.time)
                self.pause_heads = len(event.probabilities)
            elif isinstance(event, EndOfTurn):
                self.end_of_turns.append(event.time)
        self.check_done()

    def result(self) -> Transcript:
        """The finished transcript (call once :attr:`done`)."""
        self.stream.finish()
        duration = self._audio.samples / SAMPLE_RATE
        words = fit_words(self.stream.words.words, duration)
        transcript = Transcript(
            text=join_words(words),
            words=words,
            duration=duration,
            source=self.source,
        )
        if self.pause_rows:
            rows = np.frombuffer(self.pause_rows, dtype=np.float32)
            transcript.pause = rows.reshape(-1, self.pause_heads).copy()
            transcript.pause_times = np.frombuffer(self.pause_times, dtype=np.float32).copy()
            transcript.end_of_turns = list(self.end_of_turns)
        if self._audio.samples == 0:
            transcript.warnings.append("the input has no audio samples")
        elif self._audio.peak < SILENCE_PEAK:
            transcript.warnings.append("the input is silent (no sample above -80 dBFS)")
        return transcript

    @property
    def input_samples(self) -> int:
        return self._audio.samples


def frames_needed(samples: int, plan: FeedPlan) -> int:
    """Number of frames fed for an input of ``samples`` samples (for progress bars)."""
    return (plan.left_samples + samples + plan.right_samples) // FRAME_SIZE
