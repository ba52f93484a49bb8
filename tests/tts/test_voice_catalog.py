"""VoiceCatalog: a server's voices are the names enumerated in its folders, nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsm.tts.voice_catalog import UNKNOWN_VOICE, UnknownVoice, VoiceCatalog

SUFFIX = ".abc@1.safetensors"


def _folder(root: Path) -> Path:
    voices = root / "voices"
    for name in ("expresso/a.wav", "b.wav", "deep/er/c.wav"):
        path = voices / (name + SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (voices / "notes.txt").write_text("not a voice")
    (voices / "other.wav.zzz@9.safetensors").write_bytes(b"x")  # another checkpoint's
    (root / ("secret" + SUFFIX)).write_bytes(b"x")
    return voices


def test_names_are_the_enumerated_voices(tmp_path: Path) -> None:
    catalog = VoiceCatalog([_folder(tmp_path)], SUFFIX, SUFFIX)
    assert catalog.names() == ["b.wav", "deep/er/c.wav", "expresso/a.wav"]
    assert catalog.path("expresso/a.wav").name == "a.wav" + SUFFIX
    assert catalog.path("expresso/a") == catalog.path("expresso/a.wav")  # .wav optional
    assert " b.wav " in catalog and "b" in catalog


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "../voices/b.wav",
        "expresso/../b.wav",
        "./b.wav",
        "/etc/passwd",
        "~/b.wav",
        "file:///tmp/b.wav",
        "hf://kyutai/tts-voices/b.wav.abc@1.safetensors",
        "b.wav" + SUFFIX,
        "C:\\voices\\b.wav",
        "b.wav\0",
        "other.wav",
        "",
        "missing.wav",
    ],
)
def test_anything_else_is_the_one_unknown_voice(tmp_path: Path, name: str) -> None:
    voices = _folder(tmp_path)
    catalog = VoiceCatalog([voices], SUFFIX, SUFFIX)
    if name.startswith("/etc") or "://" in name:
        name = name.replace("/tmp", str(voices))
    with pytest.raises(UnknownVoice) as exc:
        catalog.path(name)
    assert str(exc.value) == UNKNOWN_VOICE
    assert catalog.find(name) is None


def test_absolute_path_of_a_real_voice_is_unknown(tmp_path: Path) -> None:
    voices = _folder(tmp_path)
    catalog = VoiceCatalog([voices], SUFFIX, SUFFIX)
    for name in (str(voices / ("b.wav" + SUFFIX)), str(voices / "b.wav")):
        assert os.path.isabs(name) and catalog.find(name) is None


def test_prefix_voices_keep_their_wav_and_first_folder_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for folder in (first, second):
        (folder / "x").mkdir(parents=True)
        (folder / "x" / "v.wav").write_bytes(b"x")
    (second / "only.wav").write_bytes(b"x")
    catalog = VoiceCatalog([first, second, tmp_path / "absent"], ".wav")
    assert catalog.names() == ["only.wav", "x/v.wav"]
    assert catalog.path("x/v.wav").parent.parent == first
    assert len(catalog) == 2
