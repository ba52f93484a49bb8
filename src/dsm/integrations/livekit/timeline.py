"""Times of the server's STT session mapped back to times of the input audio.

To flush a segment the plugin sends the server silence that was never in the input (a
``Marker`` only comes back once the model's delay of audio follows it). The server's word times
count that silence; :class:`Timeline` records where it went and removes it again.
"""

from __future__ import annotations

from dsm.mimi import SAMPLE_RATE

__all__ = ["Timeline"]


class Timeline:
    """The samples sent to one session: input audio, and silence the plugin inserted."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.sent = 0  # samples sent to the server
        self.input = 0  # of which input audio
        self._gaps: list[tuple[int, int]] = []  # (server position, inserted samples)

    def audio(self, samples: int) -> None:
        """``samples`` of input audio were sent."""
        self.sent += samples
        self.input += samples

    def silence(self, samples: int) -> None:
        """``samples`` of inserted silence were sent."""
        if samples > 0:
            self._gaps.append((self.sent, samples))
            self.sent += samples

    def to_input(self, seconds: float) -> float:
        """The input-audio time of the server's time ``seconds`` (a time inside inserted
        silence maps to where that silence was inserted)."""
        position = seconds * self.sample_rate
        removed = 0.0
        for at, samples in self._gaps:
            if position <= at:
                break
            removed += min(float(samples), position - at)
        return max(0.0, (position - removed) / self.sample_rate)
