"""The STT training target: the text stream the model must emit, frame by frame.

One truth with inference. ``dsm transcribe`` (``dsm.stt``) feeds the checkpoint's silence
prefix, the audio and ``audio_delay_seconds + 1 s`` of silence (:func:`dsm.stt.framing.plan_feed`)
as frames ``F_0 .. F_{N-1}``; at step ``s`` the model hears frame ``F_{s-1}`` and emits one text
token; step 0 is dropped; a word-start marker (``EOP``, id 0) at step ``b`` makes the word whose
pieces follow start at ``(b + 1) / 12.5 - prefix - delay`` seconds (:mod:`dsm.stt.word_stream`).

The teacher-forced forward (:meth:`dsm.models.lm.LMModel.forward`, model-spec §2.4) predicts
column ``s`` of its codes having seen columns ``< s``. So the training codes are exactly the fed
frames ``F`` (audio streams) and text column ``s`` is the token of step ``s``. A word starting at
``t`` seconds of the input gets its first piece at frame ``floor((t + prefix + delay) * 12.5)``
and the marker right before it: decoding gives back ``t`` within one frame (80 ms), rounded
down. The placement rule is moshi-finetune's interleaver (its ``keep_and_shift`` variant: a
word whose start comes while the previous word's pieces are still being emitted is queued after
them, never dropped; no marker separates them, and dsm's decoder splits such a segment as the
reference does). The text delay is the checkpoint's ``audio_delay_seconds``; every other column
is padding (``PAD``, id 3), including the frames before the delay, which the model itself emits
at inference. Ids come from the config (``text_padding_token_id``, ``end_of_text_padding_id``).

The loss weighs each text position: 0 for step 0 (never decoded) and for batch padding,
``pad_weight`` for a ``PAD`` target (moshi-finetune's ``text_padding_weight``, 0.5), 1 otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dsm.frames import FRAME_RATE, FRAME_SIZE
from dsm.stt.framing import FeedPlan, plan_feed
from dsm.stt.words import Word

__all__ = ["DEFAULT_PAD_WEIGHT", "SttLayout", "text_target", "text_weights"]

DEFAULT_PAD_WEIGHT = 0.5  # moshi-finetune's text_padding_weight


@dataclass(frozen=True)
class SttLayout:
    """What an STT checkpoint fixes about its inputs and targets."""

    prefix_seconds: float  # stt_config.audio_silence_prefix_seconds
    delay_seconds: float  # stt_config.audio_delay_seconds: text lags audio by this much
    padding_id: int  # text padding (PAD)
    end_of_padding_id: int  # word-start marker (EOP)

    @property
    def plan(self) -> FeedPlan:
        """The padding around an input: the same plan as ``dsm transcribe``."""
        return plan_feed(self.prefix_seconds, self.delay_seconds)

    def num_frames(self, num_samples: int) -> int:
        """Frames fed for an input of ``num_samples`` samples (full frames only)."""
        plan = self.plan
        return (plan.left_samples + num_samples + plan.right_samples) // FRAME_SIZE

    def first_frame(self, start_seconds: float) -> int:
        """The frame of a word's first piece (see the module docstring)."""
        shifted = start_seconds + self.plan.word_offset_seconds
        # A tiny epsilon keeps a time given on a frame boundary on that frame despite rounding.
        # Step 0's token is never decoded (the model has heard nothing yet): frame 1 at least.
        return max(1, math.floor(shifted * FRAME_RATE + 1e-6))


def text_target(
    words: Sequence[Word],
    encode: Callable[[str], list[int]],
    num_frames: int,
    layout: SttLayout,
) -> torch.Tensor:
    """The text stream ``[T]`` (int64) for ``words`` of an input fed as ``num_frames`` frames.

    Pieces that would run past the last frame are cut (the right padding of ``delay + 1 s``
    leaves room for any normal utterance).
    """
    target = [layout.padding_id] * num_frames
    starts = [layout.first_frame(w.start) for w in words]
    pieces = [encode(w.text) for w in words]
    queue: deque[int] = deque()
    i = 0
    for t in range(num_frames):
        while i < len(words) and starts[i] <= t:
            queue.extend(pieces[i])
            i += 1
        if not queue:
            continue
        if t > 0 and target[t - 1] == layout.padding_id:
            target[t - 1] = layout.end_of_padding_id
        target[t] = queue.popleft()
    return torch.tensor(target, dtype=torch.long)


def text_weights(
    target: torch.Tensor, length: int, layout: SttLayout, pad_weight: float = DEFAULT_PAD_WEIGHT
) -> torch.Tensor:
    """Loss weight ``[T]`` (float32) of each position of ``target [T]`` whose first ``length``
    positions are real (the rest is batch padding)."""
    weights = torch.ones(target.shape[0], dtype=torch.float32)
    weights[target == layout.padding_id] = pad_weight
    weights[0] = 0.0
    weights[length:] = 0.0
    return weights
