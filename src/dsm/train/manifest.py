"""Training manifests: one utterance a line of a jsonl file, checked before any training.

Two layouts are read (paths are relative to the manifest's folder unless absolute):

* dsm's: ``{"audio": "a.wav", "text": "hello world", "words": [{"text": "hello", "start":
  0.31, "end": 0.62}, ...]}``. ``words`` is optional (such lines are aligned first, see
  :func:`needs_alignment`); ``text`` is optional when ``words`` is given (it is then the words
  joined by spaces).
* moshi-finetune's: ``{"path": "a.wav", "duration": 24.5}`` with a sidecar ``a.json`` next to the
  audio holding ``{"alignments": [["hello", [0.31, 0.62], "SPEAKER_MAIN"], ...]}``. Words of
  every speaker are kept (an STT transcript has them all).

Every problem raises :class:`ManifestError` naming ``file:line``: a line that is not a JSON
object, a missing audio file, an empty transcript, words out of order, with an end before their
start, or beyond the end of the audio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm.errors import DsmError
from dsm.stt.words import Word, join_words

__all__ = ["ManifestError", "Utterance", "needs_alignment", "read_manifest"]

# Word times may pass the decoded length by this much (container durations and aligners round).
END_TOLERANCE_SECONDS = 0.05


class ManifestError(DsmError, ValueError):
    """A manifest line is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    """One training item: an audio file, its transcript and (when known) its word times."""

    audio: Path
    text: str
    words: tuple[Word, ...] | None  # None: to be aligned
    duration: float  # seconds, from the file's metadata
    where: str  # "manifest.jsonl:12", for messages

    def with_words(self, words: Sequence[Word]) -> Utterance:
        """This utterance with word times (from an aligner), checked like a manifest's."""
        checked = check_words(list(words), self.duration, self.where)
        return Utterance(self.audio, self.text, tuple(checked), self.duration, self.where)


def needs_alignment(utterances: Sequence[Utterance]) -> list[int]:
    """Indices of the utterances without word times."""
    return [i for i, u in enumerate(utterances) if u.words is None]


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read and check every line of ``path`` (blank lines are skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None
    out: list[Utterance] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        out.append(_parse_line(line, path, f"{path}:{number}"))
    if not out:
        raise ManifestError(f"manifest {path} has no utterances (one JSON object a line)")
    return out


def _parse_line(line: str, manifest: Path, where: str) -> Utterance:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{where}: not valid JSON ({exc.msg}); one JSON object a line"
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if "audio" in data:
        audio = _audio_path(data["audio"], manifest, where, "audio")
        words = None
        if data.get("words") is not None:
            words = _dsm_words(data["words"], where)
        text = data.get("text")
        if text is None and words is not None:
            text = join_words(words)
        if not isinstance(text, str):
            raise ManifestError(f'{where}: "text" must be a string (the transcript)')
    elif "path" in data:
        audio = _audio_path(data["path"], manifest, where, "path")
        words = _sidecar_words(audio, where)
        text = join_words(words)
    else:
        raise ManifestError(
            f'{where}: a line needs "audio" (dsm layout) or "path" (moshi-finetune layout)'
        )
    if not text.strip() or (words is not None and not words):
        raise ManifestError(f"{where}: empty transcript; remove the line or give its text")
    duration = _duration(audio, data.get("duration"), where)
    checked = None if words is None else tuple(check_words(words, duration, where))
    return Utterance(audio, text.strip(), checked, duration, where)


def _audio_path(value: Any, manifest: Path, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ManifestError(f'{where}: "{key}" must be a file path')
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = manifest.parent / path
    if not path.is_file():
        raise ManifestError(f"{where}: audio file {path} does not exist")
    return path


def _duration(audio: Path, stated: Any, where: str) -> float:
    from dsm.audio import audio_duration

    try:
        duration = audio_duration(audio)
    except Exception as exc:  # any decoder failure: the file is unusable
        raise ManifestError(f"{where}: audio file {audio} cannot be read: {exc}") from None
    if duration is None:
        if isinstance(stated, (int, float)) and stated > 0:
            return float(stated)
        from dsm.audio import SAMPLE_RATE, load_audio

        duration = load_audio(audio).shape[0] / SAMPLE_RATE
    if duration <= 0:
        raise ManifestError(f"{where}: audio file {audio} is empty")
    return float(duration)


def _word(text: Any, start: Any, end: Any, where: str, i: int) -> Word:
    if not isinstance(text, str) or not text.strip():
        raise ManifestError(f"{where}: word {i} has no text")
    for name, value in (("start", start), ("end", end)):
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ManifestError(f"{where}: word {i} ({text!r}) needs a numeric {name} in seconds")
    return Word(text.strip(), float(start), float(end))


def _dsm_words(value: Any, where: str) -> list[Word]:
    if not isinstance(value, list):
        raise ManifestError(f'{where}: "words" must be a list of {{"text", "start", "end"}}')
    words = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ManifestError(f'{where}: word {i} must be {{"text", "start", "end"}}')
        words.append(_word(item.get("text"), item.get("start"), item.get("end"), where, i))
    return words


def _sidecar_words(audio: Path, where: str) -> list[Word]:
    sidecar = audio.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(
            f"{where}: no transcript {sidecar} next to the audio (moshi-finetune layout)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: transcript {sidecar} cannot be read: {exc}") from None
    alignments = data.get("alignments") if isinstance(data, dict) else None
    if not isinstance(alignments, list):
        raise ManifestError(f'{where}: {sidecar} has no "alignments" list')
    words = []
    for i, item in enumerate(alignments):
        ok = isinstance(item, list) and len(item) >= 2 and isinstance(item[1], list)
        if not ok or len(item[1]) != 2:
            raise ManifestError(
                f"{where}: {sidecar} alignment {i} is not [word, [start, end], ...]"
            )
        words.append(_word(item[0], item[1][0], item[1][1], f"{where} ({sidecar.name})", i))
    return words


def check_words(words: list[Word], duration: float, where: str) -> list[Word]:
    """Raise :class:`ManifestError` unless the words are in order and within the audio."""
    previous = 0.0
    for i, word in enumerate(words):
        if word.start < 0 or word.end < word.start:
            raise ManifestError(
                f"{where}: word {i} ({word.text!r}) has start {word.start} and end {word.end}; "
                "times are seconds from the start of the audio, with start <= end"
            )
        if word.start < previous:
            raise ManifestError(
                f"{where}: word {i} ({word.text!r}) starts at {word.start} s, before the word "
                f"before it ({previous} s); words must be in time order"
            )
        if word.end > duration + END_TOLERANCE_SECONDS:
            raise ManifestError(
                f"{where}: word {i} ({word.text!r}) ends at {word.end} s, beyond the audio "
                f"({duration:.3f} s)"
            )
        previous = word.start
    return words
