"""Every product of the LM goes through its projection modules: one swapped in by
:func:`dsm.nn.replace_linears` is called by the teacher-forced forward, training, streaming
inference and the depformer's steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dsm.checkpoint.config import parse_config
from dsm.models.lm import LMModel
from dsm.nn import Linear, replace_linears
from dsm.nn.streaming import streaming
from tests.helpers.reference_lm import TINY, randomize_


class Counting(nn.Module):
    """Calls the wrapped projection and counts the calls."""

    def __init__(self, inner: Linear) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.inner(*args, **kwargs)
        return out


def _model() -> LMModel:
    lm = LMModel(parse_config(TINY).lm)
    randomize_(lm, seed=11)
    return lm.eval()


def _codes(lm: LMModel, B: int, T: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(12)
    codes = torch.randint(0, lm.card, (B, lm.num_codebooks, T), generator=gen)
    codes[:, 0] = torch.randint(0, lm.text_card, (B, T), generator=gen)
    return codes


def _stream(lm: LMModel, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text logits of every main step and audio logits of every depformer step, streaming."""
    B, _, T = codes.shape
    text, audio = [], []
    assert lm.depformer is not None
    with torch.no_grad(), streaming(lm, B), streaming(lm.depformer, B) as depformer:
        for s in range(T):
            logits, hidden = lm.forward_text(codes[:, :, s : s + 1])
            text.append(logits)
            depformer.reset()
            prev = codes[:, 0, s]
            for c in range(lm.dep_q):
                audio.append(lm.depformer_step(c, hidden[:, 0], prev))
                prev = codes[:, 1 + c, s]
    return torch.cat(text, dim=1), torch.stack(audio, dim=1)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN (positions without a target) where the other has NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _calls(wrappers: dict[str, Counting], prefix: str = "") -> dict[str, int]:
    out = {name: w.calls for name, w in wrappers.items() if name.startswith(prefix)}
    for w in wrappers.values():
        w.calls = 0
    return out


def test_counting_wrapper_sees_every_path() -> None:
    lm = _model()
    codes = _codes(lm, 2, 5)
    with torch.no_grad():
        want = lm(codes)
    want_text, want_audio = _stream(lm, codes)

    originals = {name: m for name, m in lm.named_modules() if isinstance(m, Linear)}
    replace_linears(lm, Counting)
    wrappers = {name: m for name, m in lm.named_modules() if isinstance(m, Counting)}
    assert set(wrappers) == set(originals) and len(wrappers) > 10
    assert not any(isinstance(m, Linear) for name, m in lm.named_modules() if "inner" not in name)

    # Teacher-forced forward: the main transformer, text head, depformer and its heads.
    with torch.no_grad():
        got = lm(codes)
    assert _same(got.text_logits, want.text_logits)
    assert got.audio_logits is not None and want.audio_logits is not None
    assert _same(got.audio_logits, want.audio_logits)
    assert all(_calls(wrappers).values()), "a projection was bypassed by the forward"

    # Training: the same modules, with gradients reaching the wrapped weights.
    lm.train()
    out = lm(codes)
    assert out.audio_logits is not None
    (out.text_logits.nan_to_num().sum() + out.audio_logits.nan_to_num().sum()).backward()
    assert all(_calls(wrappers).values())
    assert all(m.weight.grad is not None for m in originals.values())
    lm.eval()

    # Streaming inference, main transformer then the depformer's per-codebook steps.
    text, audio = _stream(lm, codes)
    assert torch.equal(text, want_text) and torch.equal(audio, want_audio)
    calls = _calls(wrappers)
    assert all(calls.values()), [name for name, n in calls.items() if not n]
    steps = codes.shape[2]
    assert calls["text_linear"] == steps
    assert all(calls[f"linears.{c}"] == steps for c in range(lm.dep_q))
    # Per-step weights: each depformer step calls its layers' fused in_proj once.
    assert calls["depformer.layers.0.self_attn.in_proj"] == steps * lm.dep_q
