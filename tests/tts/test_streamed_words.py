"""Streamed text cut into whole words (Wyoming, Pipecat and LiveKit share the rule)."""

from __future__ import annotations

from dsm.tts.streamed_words import StreamedWords


def test_words_are_held_until_complete() -> None:
    s = StreamedWords()
    assert s.push("Hel") == []
    assert s.push("lo wor") == ["Hello"]
    assert s.push("ld, the") == ["world,"]
    assert s.push(" ") == ["the"]
    assert s.push("  fox\n") == ["fox"]
    assert s.push("jumps.", complete=True) == ["jumps."]
    assert s.push("tail") == []
    assert s.flush() == ["tail"] and s.flush() == []
    assert s.push("") == [] and s.push("   ") == []
