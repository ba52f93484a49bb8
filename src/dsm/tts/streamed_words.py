"""Text that arrives in pieces (LLM tokens, Wyoming's ``synthesize-chunk``), cut into the whole
words a TTS session takes.

Kyutai's TTS protocol (and :meth:`dsm.engine.tts.TtsChannel.push_text`) takes whole words per
message, so a piece that stops inside a word ("Hel" of "Hello") is held until the rest of the
word, a whitespace or the end of the text comes. One rule for every client of a streaming TTS:
the Wyoming endpoint and the Pipecat and LiveKit services.
"""

from __future__ import annotations

__all__ = ["StreamedWords"]


class StreamedWords:
    """Push text as it comes; get back the words it completed."""

    def __init__(self) -> None:
        self._tail = ""

    def push(self, text: str, *, complete: bool = False) -> list[str]:
        """The words that ``text`` completes (the text after the last whitespace is held);
        with ``complete``, ``text`` ends at a word boundary and nothing is held."""
        joined = self._tail + text
        if complete or not joined or joined[-1].isspace():
            self._tail = ""
            return joined.split()
        words = joined.split()
        self._tail = words.pop() if words else ""
        return words

    def flush(self) -> list[str]:
        """The end of the text: the held word, if any."""
        tail, self._tail = self._tail, ""
        return [tail] if tail else []
