"""Timed words from the STT token stream (model-spec §4.4 semantics, streaming emission)."""

from __future__ import annotations

from dsm.stt.word_stream import (
    WordContinued,
    WordEnd,
    WordEvent,
    WordStart,
    WordStream,
    words_from_tokens,
)

# A toy vocabulary: ids > 3 are pieces; "▁" marks a word start, as in SentencePiece.
PIECES = {4: "▁hello", 5: "▁wor", 6: "ld", 7: "▁a", 8: "▁b", 9: "▁c", 10: "D"}
P, E = 3, 0  # padding, end of padding


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids).replace("▁", " ").strip()


def encode(text: str) -> list[int]:
    reverse = {v.replace("▁", ""): k for k, v in PIECES.items() if v.startswith("▁")}
    if text in reverse:
        return [reverse[text]]
    return [5, 6] if text == "world" else [4]


def _events(tokens: list[int]) -> list[tuple[int, WordEvent]]:
    stream = WordStream(decode, encode, frame_rate=12.5)
    events = [(step, e) for step, token in enumerate(tokens) for e in stream.push(step, token)]
    return events + [(len(tokens), e) for e in stream.finish(len(tokens) - 1)]


def test_piece_after_padding_continues_the_word() -> None:
    # The reference decodes a segment's pieces together: "▁wor", padding, "ld" is "world".
    tokens = [P, E, 5, P, P, 6, P, P]
    words = words_from_tokens(tokens, decode, encode, frame_rate=12.5)
    assert [w.text for w in words] == ["world"]
    assert words[0].start == 2 / 12.5 and words[0].end == 8 / 12.5  # stream end, < 1 s
    events = _events(tokens)
    # Live: the word as soon as its first pieces are complete, then its continuation.
    assert events[0] == (3, WordStart(0, "wor", 2 / 12.5))
    assert events[1] == (6, WordContinued(0, "world", "ld", 2 / 12.5, False))
    assert isinstance(events[2][1], WordEnd) and len(events) == 3


def test_piece_after_a_marker_continues_the_word_too() -> None:
    # Words are the whole stream's decode split on whitespace, as the reference's transcript.
    tokens = [E, 4, P, E, 10, P, E, 7, P]
    words = words_from_tokens(tokens, decode, encode, frame_rate=12.5)
    assert [w.text for w in words] == ["helloD", "a"]
    assert words[0].start == 1 / 12.5
    assert words[0].end == 5 / 12.5  # ended at the marker (step 3), extended past "D" (step 4)
    assert words[1].start == 7 / 12.5
    cont = [e for _, e in _events(tokens) if isinstance(e, WordContinued)]
    assert cont == [WordContinued(0, "helloD", "D", 1 / 12.5, True)]  # its WordEnd was sent


def test_live_events_rebuild_the_final_words() -> None:
    tokens = [E, 7, P, 10, P, P, 8, 10, P, 9, E, 10, 5, P, 6, P]
    final = [w.text for w in words_from_tokens(tokens, decode, encode, frame_rate=12.5)]
    live: list[str] = []
    for _, event in _events(tokens):
        if isinstance(event, WordStart):
            assert event.index == len(live)
            live.append(event.text)
        elif isinstance(event, WordContinued):
            assert live[event.index] + event.suffix == event.text
            live[event.index] = event.text
    assert live == final == decode([t for t in tokens if t > 3]).split()


def test_words_with_markers_match_reference_spans() -> None:
    # steps:       0  1  2  3  4  5  6  7  8  9  10
    tokens = [P, E, 4, P, P, E, 5, 6, P, P, P]
    words = words_from_tokens(tokens, decode, encode, frame_rate=12.5)
    assert [w.text for w in words] == ["hello", "world"]
    # "hello": segment (1, 5) -> span steps 2..5; "world" is the last word: 1 s at most.
    assert words[0].start == 2 / 12.5 and words[0].end == 5 / 12.5
    assert words[1].start == 6 / 12.5
    assert words[1].end == 11 / 12.5  # end of stream after step 10 (< 1 s after start)


def test_last_word_ends_within_one_second_while_streaming() -> None:
    stream = WordStream(decode, encode, frame_rate=12.5)
    events = []
    for step, token in enumerate([E, 4] + [P] * 20):
        events += [(step, e) for e in stream.push(step, token)]
    starts = [(s, e) for s, e in events if isinstance(e, WordStart)]
    ends = [(s, e) for s, e in events if isinstance(e, WordEnd)]
    assert starts[0][0] == 2 and starts[0][1].text == "hello"  # emitted at the first pad after it
    assert len(ends) == 1
    step, end = ends[0]
    assert end.end == (1 + 12.5) / 12.5  # 12.5 frames after the word start (step 1)
    assert step <= 14  # without waiting for another word


def test_several_words_in_one_segment_split_by_token_counts() -> None:
    tokens = [E, 7, 8, 9, P, P, E, 4, P]
    words = words_from_tokens(tokens, decode, encode, frame_rate=12.5)
    assert [w.text for w in words] == ["a", "b", "c", "hello"]
    assert [round(w.start * 12.5) for w in words] == [1, 2, 3, 7]
    assert [round(w.end * 12.5) for w in words] == [2, 3, 6, 9]


def test_offset_and_clamp() -> None:
    tokens = [E, 4, P, P]
    words = words_from_tokens(tokens, decode, encode, frame_rate=12.5, offset_seconds=0.5)
    assert words[0].start == 0.0  # 1/12.5 - 0.5 < 0 is clamped
    assert abs(words[0].end - (4 / 12.5 - 0.5)) < 1e-9 or words[0].end == 0.0


def test_pieces_before_any_marker_form_a_word() -> None:
    words = words_from_tokens([5, 6, P, E, 4, P], decode, encode, frame_rate=12.5)
    assert [w.text for w in words] == ["world", "hello"]
    assert words[0].start == 0.0 and words[0].end == 3 / 12.5


def test_no_tokens_no_words() -> None:
    assert words_from_tokens([P, P, E, P], decode, encode) == []


def test_prompt_forcer_masks_and_advances() -> None:
    import torch

    from dsm.stt.prompt import PromptForcer

    forcer = PromptForcer(2, 3, (0, 3), torch.device("cpu"))
    forcer.set(0, [7, 9])
    logits = torch.zeros(2, 12)
    logits[:, 11] = 5.0
    forcer.on_logits(logits)
    assert torch.isinf(logits[0, 11]) and logits[0, 7] == 0 and logits[0, 3] == 0
    assert logits[1, 11] == 5.0  # slot 1 has no prompt
    forcer.on_token(torch.tensor([7, 11]), torch.tensor([True, True]))
    assert forcer.pointer.tolist() == [1, 0] and forcer.last_forced.tolist() == [True, False]
    forcer.on_logits(logits)
    forcer.on_token(torch.tensor([9, 11]), torch.tensor([False, True]))  # slot 0 paused
    assert forcer.pointer.tolist() == [1, 0]


def test_words_of_one_segment_split_by_padding_take_reference_spans() -> None:
    # Segment from step 1: "a" (1 token) starts at 1, "b" one token later, although emitted
    # after padding; "c" after "b"'s token (model-spec §4.4).
    tokens = [E, 7, P, P, 8, P, 9, P]
    words = words_from_tokens(tokens, decode, encode, frame_rate=12.5)
    assert [w.text for w in words] == ["a", "b", "c"]
    assert [round(w.start * 12.5) for w in words] == [1, 2, 3]
