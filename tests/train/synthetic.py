"""Synthetic training data with known word times: each word is a tone of its own pitch.

A tiny random model can learn to transcribe these (the pitch says which word, the onset says
when), so a fine-tuning run on them checks that the training target and the inference decoding
agree on delays, markers and times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dsm.audio.encode import write_wav
from dsm.frames import SAMPLE_RATE

# Words of the tiny test tokenizer with few pieces each, and their pitch in Hz.
PITCH = {"the": 220.0, "fox": 330.0, "forest": 440.0, "river": 587.0, "one": 784.0, "two": 988.0}
WORD_SECONDS = 0.4


def tone(seconds: float, pitch: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    return (0.4 * envelope * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


def utterance(
    words: list[str], starts: list[float], seconds: float
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Audio of ``words`` starting at ``starts`` (seconds) in ``seconds`` of silence."""
    pcm = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    timed = []
    for word, start in zip(words, starts, strict=True):
        piece = tone(WORD_SECONDS, PITCH[word])
        i = round(start * SAMPLE_RATE)
        pcm[i : i + piece.shape[0]] += piece
        timed.append({"text": word, "start": start, "end": round(start + WORD_SECONDS, 3)})
    return pcm, timed


# (words, start times): every word starts at a different phase of the 80 ms frame grid.
SCRIPT: list[tuple[list[str], list[float]]] = [
    (["the", "fox"], [0.31, 0.97]),
    (["forest", "river"], [0.45, 1.13]),
    (["one", "two", "the"], [0.22, 0.85, 1.52]),
    (["river", "one"], [0.5, 1.29]),
    (["two", "forest"], [0.38, 1.06]),
    (["fox", "the", "river"], [0.27, 0.9, 1.61]),
]
SECONDS = 2.2


def write_dataset(directory: Path, script: list[tuple[list[str], list[float]]] = SCRIPT) -> Path:
    """Wav files and a dsm manifest (``train.jsonl``) in ``directory``; returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (words, starts) in enumerate(script):
        pcm, timed = utterance(words, starts, SECONDS)
        path = directory / f"u{i}.wav"
        write_wav(path, pcm)
        lines.append(json.dumps({"audio": path.name, "text": " ".join(words), "words": timed}))
    manifest = directory / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
