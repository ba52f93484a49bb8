"""Forced alignment: the STT model times the words of a transcript it is told.

:meth:`SpeechToText.align <dsm.stt.model.SpeechToText.align>` runs the ordinary STT step (the
batched :class:`~dsm.stt.engine.SttEngine`, its greedy text sampling and the per-stream word
rules of :class:`~dsm.stt.stream.SttStream`) with one extra text-logits hook,
:class:`AlignConstraint`. At each step of a slot the model may emit only:

* padding, or the word-start marker (``EOP``), between two words of the transcript;
* the next token of the transcript (a word is its SentencePiece pieces, in order);
* inside a word, only its next piece: a padding or marker there would cut the word in two.

Everything else is masked to ``-inf`` before the greedy choice. So the words come out as the
model's own decoding would time them (same word-start and end rules as ``transcribe``), and when
the transcript is what the model would have said anyway, the alignment is exactly its greedy
run.

Every word must be placed: once a slot's remaining transcript tokens need every step left before
its deadline (the last step ``transcribe`` runs: the input, the model's delay and the flush), the
next token is forced at each step. This is a monotone path that always places every word; words
forced after the input's end get times clamped to it, as ``transcribe``'s would
(:func:`~dsm.stt.words.fit_words`).

Why greedy constrained decoding and not a Viterbi pass: the model reads its own text tokens back
(the text stream is an input of the next step), so the log-probabilities of a step depend on the
path taken before it. A dynamic-programming pass over one teacher-forced run would score every
path with the inputs of another one; an exact search would need one model state per hypothesis
(a beam). Greedy decoding under the constraint keeps the model's own context at every step, costs
one ordinary STT run, batches like ``transcribe_many``, and reproduces the model's timing when
the transcript is its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsm.errors import DsmError
from dsm.mimi import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from dsm.stt.framing import FeedPlan
from dsm.tokenizer import TextTokenizer

__all__ = ["AlignConstraint", "AlignTarget", "align_target", "transcript_words"]


@dataclass(frozen=True)
class AlignTarget:
    """One input's transcript as the model must write it, and its deadline step.

    ``tokens`` are the pieces of every word in order; ``first[i]`` says that ``tokens[i]``
    starts a word. ``deadline`` is the slot step by which every token must have been emitted.
    """

    words: tuple[str, ...]
    tokens: tuple[int, ...]
    first: tuple[bool, ...]
    deadline: int


def transcript_words(text: str) -> list[str]:
    """The words of a transcript, split on whitespace as ``transcribe`` joins them."""
    words = text.split()
    if not words:
        raise DsmError("the transcript is empty: give the text spoken in the audio")
    return words


def _word_pieces(tokenizer: TextTokenizer, word: str, padding_id: int) -> list[int]:
    pieces = tokenizer.encode(word)
    written = tokenizer.decode(pieces)
    if not pieces or written != word or any(p <= padding_id for p in pieces):
        detail = f"it is written back as {written!r}" if written != word else "unknown pieces"
        raise DsmError(
            f"the word {word!r} of the transcript cannot be written by this model's tokenizer "
            f"({detail}); spell it with characters the model writes (its transcripts show them)"
        )
    return pieces


def align_target(
    tokenizer: TextTokenizer,
    text: str,
    plan: FeedPlan,
    input_samples: int,
    *,
    padding_id: int,
) -> AlignTarget:
    """Tokenise ``text`` word by word and set the deadline for an input of ``input_samples``.

    Raises :class:`~dsm.errors.DsmError` for an empty transcript, a word the tokenizer cannot
    write, or a transcript with more tokens than the audio has steps to hold.
    """
    words = transcript_words(text)
    tokens: list[int] = []
    first: list[bool] = []
    for word in words:
        pieces = _word_pieces(tokenizer, word, padding_id)
        tokens += pieces
        first += [True] + [False] * (len(pieces) - 1)
    fed_samples = plan.left_samples + input_samples + plan.right_samples
    # Frame k is heard at step k + 1: the last step is the one ``transcribe`` ends on (the
    # model's delay and the flush after the input included).
    deadline = fed_samples // FRAME_SIZE
    duration = input_samples / SAMPLE_RATE
    if len(tokens) > deadline:  # steps 1..deadline can hold one token each
        raise DsmError(
            f"the transcript has {len(words)} words ({len(tokens)} tokens) but the audio "
            f"({duration:.2f} s) leaves room for {max(0, deadline)} tokens at "
            f"{FRAME_RATE:g} per second: give the transcript of this audio only"
        )
    return AlignTarget(tuple(words), tuple(tokens), tuple(first), deadline)


class AlignConstraint:
    """Per-slot alignment state for the STT engine's text hooks (device tensors, no host sync).

    A slot without a target (:meth:`set` with ``None``) is left free. A slot's step 0 is free
    too: its token is dropped from every transcript (the model has heard nothing yet).
    """

    def __init__(
        self,
        batch_size: int,
        max_tokens: int,
        *,
        padding_id: int,
        marker_id: int,
        device: torch.device,
    ) -> None:
        B, L = batch_size, max_tokens + 1  # one spare column: the pointer of a finished slot
        self.max_tokens = max_tokens
        self.padding_id = padding_id
        self.marker_id = marker_id
        self.tokens = torch.full((B, L), padding_id, dtype=torch.long, device=device)
        self.first = torch.zeros(B, L, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(B, dtype=torch.long, device=device)
        self.pointer = torch.zeros(B, dtype=torch.long, device=device)
        self.deadline = torch.zeros(B, dtype=torch.long, device=device)
        self.enabled = torch.zeros(B, dtype=torch.bool, device=device)
        self._next = torch.zeros(B, dtype=torch.long, device=device)
        self._live = torch.zeros(B, dtype=torch.bool, device=device)

    def set(self, slot: int, target: AlignTarget | None) -> None:
        """Give ``slot`` a transcript to align (``None``: the slot decodes freely)."""
        self.tokens[slot].fill_(self.padding_id)
        self.first[slot].zero_()
        self.pointer[slot] = 0
        if target is None:
            self.lengths[slot] = 0
            self.enabled[slot] = False
            return
        n = len(target.tokens)
        if n > self.max_tokens:
            raise ValueError(f"the transcript has {n} tokens; this engine holds {self.max_tokens}")
        self.tokens[slot, :n] = torch.tensor(target.tokens, dtype=torch.long)
        self.first[slot, :n] = torch.tensor(target.first, dtype=torch.bool)
        self.lengths[slot] = n
        self.deadline[slot] = target.deadline
        self.enabled[slot] = True

    def on_logits(self, logits: torch.Tensor, offsets: torch.Tensor) -> None:
        """Text-logits hook: mask ``[B, N]`` logits in place; ``offsets`` ``[B]`` are the slots'
        steps (before this one)."""
        index = self.pointer[:, None]
        self._next.copy_(self.tokens.gather(1, index)[:, 0])
        at_word_start = self.first.gather(1, index)[:, 0]
        remaining = self.lengths - self.pointer
        self._live.copy_(self.enabled & (offsets > 0))
        steps_left = self.deadline - offsets + 1  # this step included
        must = (remaining > 0) & ((remaining >= steps_left) | ~at_word_start)
        done = remaining <= 0
        ids = torch.arange(logits.shape[1], device=logits.device)[None, :]
        allowed = (ids == self._next[:, None]) & ~done[:, None]
        allowed |= (ids == self.padding_id) & ~must[:, None]
        allowed |= (ids == self.marker_id) & ~(must | done)[:, None]
        logits.masked_fill_(self._live[:, None] & ~allowed, float("-inf"))

    def on_token(self, token: torch.Tensor, exec_mask: torch.Tensor) -> None:
        """Text hook: advance the slots that emitted their next transcript token."""
        advance = self._live & exec_mask & (token == self._next) & (self.pointer < self.lengths)
        self.pointer.add_(advance.long())

    @property
    def complete(self) -> torch.Tensor:
        """``[B]`` bool: every transcript token of the slot was emitted."""
        return self.pointer >= self.lengths
