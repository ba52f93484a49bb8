"""The TTS text-stream state machine (model-spec §5.3), one :class:`MachineState` per slot.

The model samples, on its text stream, either PAD (3) or NEW_WORD (0). The machine overrides
that choice (pad while a word's tokens are still being fed or padding is forced; a new word once
``max_padding`` pads were used), pops the next :class:`~dsm.tts.entries.Entry` on NEW_WORD and
returns the token actually fed to the model. With a look-ahead stream, the fed token multiplexes
two tokens, ``(second + 1) * card + main`` (``card = text_card + 1``), demultiplexed by the
model's text embedding; ``second`` carries the tokens of the word two entries ahead.

This runs on the host, per slot, between the text sampling and the depformer of a step (it is
the generator's text hook); it is plain Python on small deques.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dsm.tts.entries import NEW_WORD_TOKEN, PAD_TOKEN, Entry

__all__ = ["MachineState", "StateMachine"]

NO_TOKEN = -1  # "no input" on the second stream: embedded as exactly zero


@dataclass
class MachineState:
    """Per-slot state: the entries still to say and what is being fed.

    ``consumption_times[i]`` is the step at which the i-th popped entry (word or pause) was
    consumed; ``transcript`` holds ``(word, step)`` for the words only; ``end_step`` is the step
    at which the model asked for a word past the last one.
    """

    entries: deque[Entry]
    remaining_padding: int
    forced_padding: int
    queued: deque[int] = field(default_factory=deque)
    lookahead_queued: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumed: list[tuple[Entry, int]] = field(default_factory=list)

    @property
    def transcript(self) -> list[tuple[str, int]]:
        return [(entry.text, step) for entry, step in self.consumed if entry.tokens]

    @property
    def consumption_times(self) -> list[int]:
        return [step for _, step in self.consumed]

    def tokens_ahead(self, lookahead: int) -> list[int]:
        """Tokens of the ``lookahead``-th upcoming entry that has tokens (pauses skipped)."""
        for entry in self.entries:
            if entry.tokens:
                lookahead -= 1
                if lookahead == 0:
                    return entry.tokens
        return []


@dataclass(frozen=True)
class StateMachine:
    """The rules of §5.3 (``TTSModel.from_checkpoint_info`` uses max 8 / initial 2 padding).

    Args:
        card: multiplexing base, ``text_card + 1``.
        second_stream_ahead: look-ahead of the second text stream in words (0: none).
        max_padding: pads allowed between the starts of two words.
        initial_padding: pads forced before the first word.
    """

    card: int
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2

    def new_state(self, entries: list[Entry] | None = None) -> MachineState:
        return MachineState(
            entries=deque(entries or ()),
            remaining_padding=self.initial_padding,
            forced_padding=self.initial_padding,
        )

    def may_need_entry(self, state: MachineState) -> bool:
        """Whether the next step may pop an entry (so its entries must be known)."""
        return not state.queued and state.forced_padding <= 0

    def has_enough_entries(self, state: MachineState) -> bool:
        """Whether popping now gives the same result as with the full text known: the next
        entry exists and, for a word, so do the ``second_stream_ahead`` words after it."""
        if not state.entries:
            return False
        if self.second_stream_ahead == 0 or not state.entries[0].tokens:
            return True
        words = sum(1 for entry in state.entries if entry.tokens)
        return words >= self.second_stream_ahead + 1

    def process(self, step: int, state: MachineState, token: int) -> int:
        """The token to feed at ``step`` given the sampled ``token`` (mutates ``state``)."""
        if token not in (NEW_WORD_TOKEN, PAD_TOKEN):
            token = PAD_TOKEN
        if state.queued or state.forced_padding > 0:
            token = PAD_TOKEN
        elif state.remaining_padding <= 0:
            token = NEW_WORD_TOKEN

        if token == NEW_WORD_TOKEN:
            if state.entries:
                entry = state.entries.popleft()
                state.consumed.append((entry, step))
                if entry.tokens:
                    state.queued.extend(entry.tokens)
                    if self.second_stream_ahead:
                        state.lookahead_queued.extend(state.tokens_ahead(self.second_stream_ahead))
                    state.remaining_padding = self.max_padding
                else:
                    token = PAD_TOKEN  # a pause: counts as a pad step
                state.forced_padding = entry.padding
            else:
                # Past the last entry: the end. With a look-ahead stream the reference feeds one
                # more NEW_WORD marker (on the second stream) the first time.
                token = PAD_TOKEN
                if self.second_stream_ahead and state.end_step is None:
                    token = NEW_WORD_TOKEN
                if state.end_step is None:
                    state.end_step = step

        if token == PAD_TOKEN:
            if state.remaining_padding > 0:
                state.remaining_padding -= 1
            if state.forced_padding > 0:
                state.forced_padding -= 1
            main = state.queued.popleft() if state.queued else PAD_TOKEN
        else:
            main = NEW_WORD_TOKEN

        if not self.second_stream_ahead:
            return main
        second = NO_TOKEN
        if main == NEW_WORD_TOKEN:
            # The marker goes on the second stream; the word's first token is fed at once.
            second = NEW_WORD_TOKEN
            main = state.queued.popleft() if state.queued else PAD_TOKEN
        elif state.lookahead_queued:
            second = state.lookahead_queued.popleft()
        return (second + 1) * self.card + main
