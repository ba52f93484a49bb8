"""What an STT slot is fed: silence prefix, optional prompt audio, the input, silence suffix.

Whole inputs follow the reference's ``run_inference`` (model-spec §4.2): pad
``audio_silence_prefix_seconds`` of zeros on the left and ``audio_delay_seconds + 1 s`` on the
right (sample counts truncated with ``int``), then keep only full 1920-sample frames. With an
audio prompt (model-spec §4.7) the order is: prefix, the prompt right-padded to whole frames,
10 frames (0.8 s) of silence, then the input and the suffix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dsm.mimi import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE

__all__ = ["PROMPT_GAP_FRAMES", "FeedPlan", "frames_of", "plan_feed"]

PROMPT_GAP_FRAMES = 10  # 0.8 s of silence between an audio prompt and the input (reference)
FLUSH_EXTRA_SECONDS = 1.0  # right padding beyond the model's delay (reference run_inference)


@dataclass(frozen=True)
class FeedPlan:
    """Sample counts around the input, and where input time 0 falls in the model's steps."""

    left_samples: int  # silence (and prompt) before the input
    right_samples: int  # silence after the input
    input_offset_seconds: float  # seconds of fed audio before the input starts
    delay_seconds: float  # text lags audio by this much
    prompt_frames: int = 0  # frames of prompt audio (padded)
    prefix_seconds: float = 0.0  # the checkpoint's silence prefix

    @property
    def word_offset_seconds(self) -> float:
        """Subtract from ``step / 12.5`` to get a word's time in the input."""
        return self.input_offset_seconds + self.delay_seconds


def plan_feed(
    prefix_seconds: float,
    delay_seconds: float,
    prompt_samples: int = 0,
    extra_right_seconds: float = FLUSH_EXTRA_SECONDS,
) -> FeedPlan:
    """The padding plan for one input (see the module docstring)."""
    left = int(prefix_seconds * SAMPLE_RATE)
    prompt_frames = 0
    offset = left / SAMPLE_RATE
    if prompt_samples > 0:
        prompt_frames = -(-prompt_samples // FRAME_SIZE)
        # The prefix is whole frames here so that the prompt starts on a frame boundary.
        left = -(-left // FRAME_SIZE) * FRAME_SIZE
        offset = (left + (prompt_frames + PROMPT_GAP_FRAMES) * FRAME_SIZE) / SAMPLE_RATE
    right = int((delay_seconds + extra_right_seconds) * SAMPLE_RATE)
    return FeedPlan(left, right, offset, delay_seconds, prompt_frames, prefix_seconds)


def _silence(samples: int, block: int = FRAME_SIZE * 25) -> Iterator[np.ndarray]:
    while samples > 0:
        n = min(samples, block)
        yield np.zeros(n, dtype=np.float32)
        samples -= n


def frames_of(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Re-cut a stream of mono chunks into full 1920-sample frames (a final partial is dropped)."""
    buffer = np.zeros(0, dtype=np.float32)
    for chunk in chunks:
        buffer = np.concatenate([buffer, np.asarray(chunk, dtype=np.float32).reshape(-1)])
        n_full = buffer.shape[0] // FRAME_SIZE
        for i in range(n_full):
            yield buffer[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]
        buffer = buffer[n_full * FRAME_SIZE :]


def feed_chunks(
    plan: FeedPlan, audio: Iterable[np.ndarray], prompt: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Chunks of the whole fed signal for ``plan`` (input streamed from ``audio``)."""
    yield from _silence(plan.left_samples)
    if prompt is not None and plan.prompt_frames > 0:
        padded = np.zeros(plan.prompt_frames * FRAME_SIZE, dtype=np.float32)
        padded[: prompt.shape[0]] = prompt
        yield padded
        yield from _silence(PROMPT_GAP_FRAMES * FRAME_SIZE)
    yield from audio
    yield from _silence(plan.right_samples)


def step_time(step: int) -> float:
    """Seconds of fed audio the model has consumed after ``step`` (frame ``step - 1`` ended)."""
    return step / FRAME_RATE
