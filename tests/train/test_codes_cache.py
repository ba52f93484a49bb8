"""The Mimi codes cache: codes equal the streaming encoding inference uses; an entry is reused
for the same audio, codec and padding, and never for an edited file or other codec weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import dsm
from dsm.audio.encode import write_wav
from dsm.frames import FRAME_SIZE
from dsm.stt.engine import SttEngine
from dsm.train.codes_cache import CodesCache, file_digest
from tests.train.synthetic import tone


def test_cache_reuse_and_invalidation(stt_dir: Path, tmp_path: Path) -> None:
    stt = dsm.load_stt(stt_dir, device="cpu")
    audio = tmp_path / "a.wav"
    write_wav(audio, tone(0.5, 440.0))
    digest = file_digest(stt_dir / "mimi-test.safetensors")
    cache = CodesCache(tmp_path / "cache", stt.codec, digest)
    codes = cache.codes(audio, 1000, 2000)
    frames = (1000 + 12000 + 2000) // FRAME_SIZE
    assert codes.shape == (stt.codec.num_codebooks, frames) and codes.dtype == torch.int64
    assert (cache.hits, cache.misses) == (0, 1)
    assert torch.equal(cache.codes(audio, 1000, 2000), codes)
    assert (cache.hits, cache.misses) == (1, 1)
    # The same frames as inference: the STT engine's streaming encoder, many frames a call.
    pcm = np.concatenate([np.zeros(1000), tone(0.5, 440.0), np.zeros(2000)]).astype(np.float32)
    pcm = torch.from_numpy(pcm[: frames * FRAME_SIZE]).view(1, -1)
    with SttEngine(stt.codec, stt.lm, 1) as engine:
        expected = engine.encode_frames(pcm, torch.ones(1, dtype=torch.bool))[0]
    assert torch.equal(codes, expected)
    # Other padding, other codec weights, an edited file (same name and size): new entries.
    cache.codes(audio, 0, 2000)
    CodesCache(tmp_path / "cache", stt.codec, "other-codec").codes(audio, 1000, 2000)
    write_wav(audio, tone(0.5, 660.0))
    edited = cache.codes(audio, 1000, 2000)
    assert (cache.hits, cache.misses) == (1, 3)
    assert not torch.equal(edited, codes)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    assert not list((tmp_path / "cache").glob("*.tmp"))
