"""Mimi codes of training audio, computed once and cached on disk (the codec is frozen).

An entry holds the codes of the whole fed signal of one input (silence prefix, audio, right
padding: the frames ``dsm transcribe`` feeds), encoded exactly as inference encodes them
(streaming Mimi, whole frames). Its file name is a hash of everything that determines it:

* the audio file's **content** (SHA-256 of its bytes, so an edited file is re-encoded even if
  its name, size and time stamp are kept),
* the codec weights' content (SHA-256 of the Mimi file, computed once per run),
* the padding in samples on each side and the number of codebooks,
* :data:`CACHE_VERSION` (bumped when the encoding changes).

Entries are ``.npy`` files of int16 codes ``[K, T]`` written atomically (a temporary file
renamed into place), so an interrupted run leaves no partial entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from dsm.frames import FRAME_SIZE

__all__ = ["CACHE_VERSION", "CodesCache", "default_cache_dir", "file_digest"]

CACHE_VERSION = 1
_BLOCK = 1 << 20


def default_cache_dir() -> Path:
    """``$DSM_CACHE/codes`` or ``$XDG_CACHE_HOME/dsm/codes`` (``~/.cache/dsm/codes``)."""
    if os.environ.get("DSM_CACHE"):
        return Path(os.environ["DSM_CACHE"]) / "codes"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsm" / "codes"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class CodesCache:
    """Codes of fed signals for one codec (``codec_id``: the digest of its weights file)."""

    def __init__(self, directory: str | Path, codec: object, codec_id: str) -> None:
        from dsm.mimi import MimiCodec

        assert isinstance(codec, MimiCodec)
        self.directory = Path(directory)
        self.codec = codec
        self.codec_id = codec_id
        self.hits = 0
        self.misses = 0

    def key(self, audio: Path, left_samples: int, right_samples: int) -> str:
        """The entry name of ``audio`` with this padding (see the module docstring)."""
        parts = [
            f"v{CACHE_VERSION}",
            file_digest(audio),
            self.codec_id,
            str(left_samples),
            str(right_samples),
            str(self.codec.num_codebooks),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def codes(self, audio: Path, left_samples: int, right_samples: int) -> torch.Tensor:
        """Codes ``[K, T]`` (int64) of ``audio`` padded with silence; cached."""
        path = self.directory / f"{self.key(audio, left_samples, right_samples)}.npy"
        if path.is_file():
            try:
                cached = np.load(path)
                self.hits += 1
                return torch.from_numpy(cached.astype(np.int64))
            except (OSError, ValueError):
                pass  # an unreadable entry is recomputed and replaced
        codes = self.encode(audio, left_samples, right_samples)
        self.misses += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, codes.numpy().astype(np.int16))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return codes

    @torch.no_grad()
    def encode(self, audio: Path, left_samples: int, right_samples: int) -> torch.Tensor:
        """Encode the fed signal as inference does: streaming Mimi over whole frames."""
        from dsm.audio import load_audio

        pcm = load_audio(audio)
        signal = np.concatenate(
            [
                np.zeros(left_samples, dtype=np.float32),
                pcm,
                np.zeros(right_samples, dtype=np.float32),
            ]
        )
        frames = signal.shape[0] // FRAME_SIZE
        x = torch.from_numpy(signal[: frames * FRAME_SIZE].copy()).to(self.codec.device)
        with self.codec.streaming(1, decoder=False):
            codes = self.codec.encode(x.view(1, 1, -1))
        return codes[0].to(device="cpu", dtype=torch.int64)
