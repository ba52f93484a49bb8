"""Generation of codes only: a TTS model's frames without the Mimi decoder.

The tiny test checkpoints use a Mimi of the published size, whose decoder costs far more than
the tiny LM per step. The codes a TTS engine generates do not depend on decoding (the decoder
only turns them into audio afterwards), so tests that need codes, not audio, swap the codec for
:class:`CodesOnlyCodec`, whose streaming decoder returns silence.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from dsm.frames import FRAME_SIZE


class _SilentStream:
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.zeros(codes.shape[0], 1, codes.shape[-1] * FRAME_SIZE)

    def set_exec_mask(self, mask: torch.Tensor) -> None:
        pass

    def reset(self, mask: torch.Tensor | None = None) -> None:
        pass


class CodesOnlyCodec:
    """Stands for a ``MimiCodec`` in a TTS engine; decodes every frame to silence."""

    def __init__(self, codec: Any) -> None:
        self._codec = codec

    @property
    def device(self) -> torch.device:
        return torch.device(self._codec.device)

    @contextmanager
    def streaming(self, batch_size: int, **_: Any) -> Iterator[_SilentStream]:
        yield _SilentStream()


def generate_frames(
    tts: Any,
    texts: Sequence[str],
    voice: Any,
    *,
    cfg: float,
    temperature: float,
    seed: int,
    exact: bool = False,
) -> list[torch.Tensor]:
    """The frames ``[1 + n_q, T]`` that ``tts.synthesize(texts, ...)`` generates, as one batch.

    ``exact``: sample from the model's distribution itself (no top-k truncation), so that the
    codes are draws of the model at ``temperature`` 1.
    """
    import dsm.tts.model as tts_model

    codec = tts.codec
    engine_class = tts_model.TtsEngine
    tts.codec = CodesOnlyCodec(codec)
    if exact:
        tts_model.TtsEngine = functools.partial(engine_class, top_k=0, top_k_text=0)  # type: ignore[misc]
    try:
        speeches = tts.synthesize(
            list(texts), voice=voice, cfg=cfg, temperature=temperature, seed=seed
        )
    finally:
        tts.codec = codec
        tts_model.TtsEngine = engine_class  # type: ignore[misc]
    return [torch.from_numpy(s.tokens) for s in speeches]
