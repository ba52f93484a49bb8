"""The flat depformer frame (:class:`dsm.generate.depformer_frame.DepformerFrame`) against the
module path (:meth:`LMModel.depformer_step`): the same logits, bit for bit, in float32 and with
int8 / int4 projections, at one and several slots, across frames without a reset."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from dsm.checkpoint.config import parse_config
from dsm.generate.depformer_frame import DepformerFrame
from dsm.models.lm import LMModel
from dsm.models.lm_loading import quantize_lm
from dsm.nn.streaming import streaming
from tests.helpers.reference_lm import TINY, TTS_LIKE, randomize_

TINY_NO_SIN = {**TINY, "depformer_pos_emb": "none"}


def _lm(raw: dict[str, Any], mode: str | None, seed: int) -> LMModel:
    config = parse_config(copy.deepcopy(raw))
    lm = randomize_(LMModel(config.lm if hasattr(config, "lm") else config), seed).eval()
    return quantize_lm(lm, mode) if mode else lm


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
@pytest.mark.parametrize("raw", [TTS_LIKE, TINY_NO_SIN], ids=["tts", "tiny"])
@pytest.mark.parametrize("B", [1, 3])
def test_frame_logits_equal_module_path(raw: dict[str, Any], mode: str | None, B: int) -> None:
    lm = _lm(raw, mode, seed=5)
    assert DepformerFrame.supports(lm)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.no_grad(), streaming(lm.depformer, B) as ctl:
        frame = DepformerFrame(lm, B, lm.dep_q)
        for _ in range(3):  # frames: the flat loop needs no reset between them
            hidden = torch.randn(B, lm.dim, generator=gen)
            ctl.reset()
            inputs = lm.depformer_inputs(hidden)
            prev = torch.randint(0, lm.text_card, (B,), generator=gen)
            for step in range(lm.dep_q):
                expected = lm.depformer_step(step, hidden, prev, projected=inputs[step])
                got = frame.logits(step, inputs[step], prev)
                worst = max(worst, (got - expected).abs().max().item())
                assert got.shape == expected.shape and got.dtype == expected.dtype
                prev = torch.randint(0, lm.card, (B,), generator=gen)
    print(f"{mode or 'float32'} B={B}: largest difference {worst:.1e}")
    assert worst == 0.0


def test_unsupported_depformer_keeps_the_module_path() -> None:
    lm = _lm(TINY, None, seed=2)  # a sinusoidal depformer embedding (the default)
    assert not DepformerFrame.supports(lm)
    with pytest.raises(ValueError, match="module path"):
        DepformerFrame(lm, 1, lm.dep_q)
