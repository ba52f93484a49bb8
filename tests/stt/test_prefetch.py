"""Codes encoded ahead of the language model: FIFO order, shared refills, equal transcripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dsm
from dsm.mimi import FRAME_SIZE
from dsm.stt.prefetch import CodeQueue
from tests.helpers.reference_mimi import speech_like


def _fake_encode(calls: list[list[int]]) -> object:
    """An encoder whose code for a frame is the frame's first sample (frames carry their id)."""

    def encode(pcm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls.append(mask.nonzero()[:, 0].tolist())
        B = pcm.shape[0]
        frames = pcm.view(B, -1, FRAME_SIZE)[:, :, 0].round().long()  # [B, n]
        return frames[:, None, :].expand(B, 2, -1).clone()

    return encode


def test_queue_hands_out_frames_in_order_across_wraps_and_shared_refills() -> None:
    lengths = {0: 23, 1: 9, 2: 40}
    fed = dict.fromkeys(lengths, 0)

    def next_frame(b: int) -> np.ndarray | None:
        if fed[b] == lengths[b]:
            return None
        fed[b] += 1
        return np.full(FRAME_SIZE, 100 * b + fed[b], dtype=np.float32)

    calls: list[list[int]] = []
    queue = CodeQueue(3, 2, chunk=4, device=torch.device("cpu"))
    encode = _fake_encode(calls)
    got: dict[int, list[int]] = {b: [] for b in lengths}
    live = [0, 1]  # slot 2 joins later
    for step in range(60):
        if step == 5:
            live.append(2)
        if queue.needs_refill(live):
            queue.refill(live, next_frame, encode)  # type: ignore[arg-type]
        ready = [b for b in live if queue.count[b] > 0]
        codes = queue.take(ready)
        for b in range(3):
            if b in ready:
                assert codes[b, 0] == codes[b, 1]
                got[b].append(int(codes[b, 0]))
            else:
                assert int(codes[b].abs().sum()) == 0  # rows not taken are zero
        live = [b for b in live if not (queue.count[b] == 0 and fed[b] == lengths[b])]
        assert all(queue.count[b] <= 2 * queue.chunk - 1 for b in range(3))
    for b, n in lengths.items():
        assert got[b] == [100 * b + i for i in range(1, n + 1)]
    # Refills are shared: far fewer encoder calls than frames.
    assert len(calls) <= sum(lengths.values()) // 4 + 3
    assert any(len(c) > 1 for c in calls)


def test_take_from_an_empty_slot_is_an_error() -> None:
    queue = CodeQueue(2, 1, chunk=2, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="no encoded frame"):
        queue.take([0])
    with pytest.raises(ValueError, match="chunk"):
        CodeQueue(1, 1, chunk=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def stt(stt_dir: Path) -> dsm.SpeechToText:
    return dsm.load_stt(stt_dir, device="cpu")


def test_transcripts_do_not_depend_on_the_encode_chunk(stt: dsm.SpeechToText) -> None:
    inputs = [speech_like(s, seed=i)[0, 0].numpy() for i, s in enumerate((1.3, 0.4, 2.2, 0.9))]
    results = {}
    for chunk in (1, 3, 16):
        out = stt.transcribe_many(
            inputs, batch_size=2, sample_rate=24000, progress=False, encode_chunk=chunk
        )
        results[chunk] = [(r.text, [(w.text, w.start, w.end) for w in r.words]) for r in out]  # type: ignore[union-attr]
    assert results[1] == results[3] == results[16]
    assert any(text for text, _ in results[1])
