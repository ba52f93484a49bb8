"""Text to entries and the state machine against the reference (no model involved)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from dsm.tts.entries import EntryMaker, ScriptSplitter, TextEntries, TextError, script_to_entries
from dsm.tts.state_machine import StateMachine
from tests.helpers.reference_tts import train_tts_tokenizer

TEXTS = [
    "Hello world, this is a test.",
    "In the heart of an (ancient) forest: there lived a rabbit.",
    'Bonjour<break time="0.5s"/>tout le monde.   Numbers  one two',
    'Wait <break time="1.5s"/> for it <break time="2s" /> now<break time="0.24s">done',
    "It’s the dog’s river: bank",
    '<break time="1s"/>Leading pause, then words.',
    "tabs\tand\nnew lines",
    "",
]


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import sentencepiece

    path = train_tts_tokenizer(tmp_path_factory.mktemp("tok"))
    proc = sentencepiece.SentencePieceProcessor()
    proc.Load(str(Path(path)))
    return proc


def _ref_entries(sp, turns: list[str], multi: bool = True):  # type: ignore[no-untyped-def]
    from moshi.models.tts import TokenIds
    from moshi.models.tts import script_to_entries as ref_script

    entries = ref_script(sp, TokenIds(65), 12.5, turns, multi_speaker=multi, padding_between=1)
    return [(e.tokens, e.text, e.padding) for e in entries]


def _dsm_entries(sp, turns: list[str], multi: bool = True):  # type: ignore[no-untyped-def]
    entries = script_to_entries(turns, sp.encode, multi_speaker=multi, padding_between=1)
    return [(e.tokens, e.text, e.padding) for e in entries]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("multi", [True, False])
def test_entries_match_reference(sp, text: str, multi: bool) -> None:  # type: ignore[no-untyped-def]
    assert _dsm_entries(sp, [text], multi) == _ref_entries(sp, [text], multi)


def test_dialog_entries_match_reference(sp) -> None:  # type: ignore[no-untyped-def]
    turns = ["Hello there.", "Hi! How are you?", "", "fine (thanks)."]
    assert _dsm_entries(sp, turns) == _ref_entries(sp, turns)


def _chunkings(text: str, rng: random.Random) -> list[list[str]]:
    words = text.split(" ")
    out = [[text], list(text), [w + " " for w in words[:-1]] + [words[-1]]]
    for _ in range(6):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return out


@pytest.mark.parametrize("text", [t for t in TEXTS if len(t) > 2])
def test_splitter_any_chunking_equals_whole(text: str) -> None:
    rng = random.Random(0)
    whole = ScriptSplitter()
    expected = whole.push(text) + whole.finish()
    for chunks in _chunkings(text, rng):
        splitter = ScriptSplitter()
        events = []
        for chunk in chunks:
            events += splitter.push(chunk)
        events += splitter.finish()
        assert events == expected, chunks


def test_splitter_releases_words_early() -> None:
    splitter = ScriptSplitter()
    assert splitter.push("Hello wor") == [("word", "Hello")]
    assert splitter.push('ld <break time="1') == [("word", "world")]
    assert splitter.push('s"/>x') == [("break", "1")]
    assert splitter.finish() == [("word", "x")]


def test_text_errors(sp) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TextError, match="unsupported characters"):
        script_to_entries(["Hello 😀 world"], sp.encode, multi_speaker=True)
    with pytest.raises(TextError, match="malformed break"):
        script_to_entries(['a <break time="1x5s"/> b'], sp.encode, multi_speaker=True)
    for seconds in ("1e400", "1e9", "601"):  # infinite, absurd: refused, never an overflow
        with pytest.raises(TextError, match="malformed break"):
            script_to_entries([f'a <break time="{seconds}s"/> b'], sp.encode, multi_speaker=True)


def test_text_entries_drop_unspellable_characters(sp) -> None:  # type: ignore[no-untyped-def]
    text = TextEntries(EntryMaker(sp.encode, True), drop_unspellable=True)
    entries = text.push("Hello😀 😀 wor") + text.push("ld ") + text.finish()
    expected = script_to_entries(["Hello world"], sp.encode, multi_speaker=True)
    assert [(e.tokens, e.text, e.padding) for e in entries] == [
        (e.tokens, e.text, e.padding) for e in expected
    ]
    assert text.dropped == {"😀"}
    strict = TextEntries(EntryMaker(sp.encode, True))
    with pytest.raises(TextError, match="unsupported characters"):
        strict.push("Hello😀 ")


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("seed", range(4))
def test_state_machine_matches_reference(sp, lookahead: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    from moshi.models.tts import Entry as RefEntry
    from moshi.models.tts import StateMachine as RefMachine
    from moshi.models.tts import TokenIds

    text = 'The quick brown fox <break time="0.4s"/> jumps over the lazy dog near the river.'
    entries = script_to_entries([text], sp.encode, multi_speaker=True)
    ref_machine = RefMachine(TokenIds(65), lookahead, max_padding=8, initial_padding=2)
    machine = StateMachine(65, lookahead, max_padding=8, initial_padding=2)
    ref_state = ref_machine.new_state([RefEntry(e.tokens, e.text, e.padding) for e in entries])
    state = machine.new_state(entries)
    gen = torch.Generator().manual_seed(seed)
    for step in range(200):
        token = int(torch.randint(0, 6, (1,), generator=gen))
        expected, _ = ref_machine.process(step, ref_state, token)
        assert machine.process(step, state, token) == expected, step
    assert state.end_step == ref_state.end_step is not None
    assert state.transcript == ref_state.transcript
    assert state.consumption_times == ref_state.consumption_times
