"""Quantized language models: logits close to float32, greedy choices mostly the same, the
streaming path equal to the teacher-forced one, the conditioners and the embeddings' projections
left float, the embedding tables int8 rows.

Bounds: measured on these random models (seeded) with a margin of about 2x (relative logit
error) and 8-15 points (agreement): int8 (projections and int8 embedding tables) text
0.014-0.019 / audio 0.023, agreement 0.93-0.98; int4 (group 32) text 0.19-0.20 / audio 0.28,
agreement 0.63-0.83. Random weights are the worst case for a weight quantizer (no structure to
preserve); the README has real-width figures.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dsm.checkpoint.config import parse_config
from dsm.lm import Conditions
from dsm.models.embeddings import TokenEmbedding
from dsm.models.lm import LMModel
from dsm.models.lm_loading import quantize_lm
from dsm.nn import Linear
from dsm.nn.native import kernels as native_kernels
from dsm.nn.quantized import QuantizedLinear
from tests.helpers.reference_lm import STT_LIKE, TINY, TTS_LIKE, randomize_
from tests.models.test_projections import _codes, _stream

# mode -> (text rel error, audio rel error, least agreement)
BOUNDS = {"int8": (0.04, 0.06, 0.85), "int4": (0.35, 0.5, 0.5)}
B, T = 2, 48


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    valid = ~(a.isnan() | b.isnan())
    return float((a[valid] - b[valid]).norm() / b[valid].norm())


def _setup(raw: dict) -> tuple[LMModel, torch.Tensor, Conditions | None]:  # type: ignore[type-arg]
    lm = LMModel(parse_config(raw).lm)
    randomize_(lm, seed=3)
    lm.eval()
    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(0, lm.card, (B, lm.num_codebooks, T), generator=gen)
    codes[:, 0] = torch.randint(0, lm.text_card, (B, T), generator=gen)
    conditions = None
    if lm.condition_provider is not None:
        speaker = torch.randn(B, 10, 16, generator=gen)
        with torch.no_grad():
            conditions = lm.make_conditions(
                {"control": ["ok"] * B, "cfg": ["2.0"] * B},
                {"speaker_wavs": (speaker, torch.ones(B, 10, dtype=torch.bool))},
                B,
            )
    return lm, codes, conditions


@pytest.fixture(scope="module")
def stt_lm() -> tuple[LMModel, torch.Tensor, Conditions | None]:
    return _setup(STT_LIKE)


@pytest.fixture(scope="module")
def tts_lm() -> tuple[LMModel, torch.Tensor, Conditions | None]:
    return _setup(TTS_LIKE)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("kind", ["stt", "tts"])
def test_logits_close_and_greedy_agrees(
    kind: str, mode: str, request: pytest.FixtureRequest
) -> None:
    lm, codes, conditions = request.getfixturevalue(f"{kind}_lm")
    quantized = quantize_lm(copy.deepcopy(lm), mode, group_size=32)
    with torch.no_grad():
        ref, out = lm(codes, conditions), quantized(codes, conditions)
    text_bound, audio_bound, agreement = BOUNDS[mode]
    assert _rel(out.text_logits, ref.text_logits) < text_bound
    mask = ref.text_mask
    same = out.text_logits.argmax(-1) == ref.text_logits.argmax(-1)
    if kind == "stt":  # STT: the text tokens are what it outputs
        assert float(same[mask].float().mean()) > agreement
    else:  # TTS: the audio codes
        assert ref.audio_logits is not None and out.audio_logits is not None
        assert ref.audio_mask is not None
        assert _rel(out.audio_logits, ref.audio_logits) < audio_bound
        same = out.audio_logits.argmax(-1) == ref.audio_logits.argmax(-1)
        assert float(same[ref.audio_mask].float().mean()) > agreement


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_streaming_through_quantized_projections(mode: str) -> None:
    """Streaming steps (main transformer one step at a time, then the depformer's per-codebook
    steps on its per-step row blocks) run on the quantized modules: the text logits equal the
    whole-sequence call's, the audio logits stay close to float32's."""
    lm = LMModel(parse_config({**TINY, "dim": 64, "depformer_dim": 32}).lm)
    randomize_(lm, seed=7)
    lm.eval()
    codes = _codes(lm, 2, 6)
    quantized = quantize_lm(copy.deepcopy(lm), mode, group_size=32)
    assert isinstance(quantized.depformer.layers[0].self_attn.in_proj, QuantizedLinear)
    text, audio = _stream(quantized, codes)
    with torch.no_grad():
        whole, _ = quantized.forward_text(codes)
    if mode == "int8" and native_kernels() is not None:
        # A streaming step (2 rows) runs dsm's native kernel on float32 activations, the
        # whole-sequence call (12 rows) PyTorch's on bfloat16 ones: they differ by that rounding
        # (0.4% here), not elementwise within 1%.
        assert _rel(text, whole) < 1e-2
    else:
        assert torch.allclose(text, whole, rtol=1e-2, atol=1e-3)
    _, float_audio = _stream(lm, codes)
    assert _rel(audio, float_audio) < BOUNDS[mode][1]


def test_only_transformer_depformer_and_heads_are_quantized(
    tts_lm: tuple[LMModel, torch.Tensor, Conditions | None],
) -> None:
    lm, _, _ = tts_lm
    quantized = quantize_lm(copy.deepcopy(lm), "int8")
    kinds = {
        name: type(m)
        for name, m in quantized.named_modules()
        if isinstance(m, (Linear, QuantizedLinear))
    }
    for name, kind in kinds.items():
        head = name.split(".")[0]
        float_parts = ("condition_provider", "fuser", "emb", "text_emb", "depformer_emb")
        if head in (*float_parts, "depformer_text_emb"):
            assert kind is Linear, name
        else:
            assert kind is QuantizedLinear, name
    assert any(n.startswith("depformer.") for n, k in kinds.items() if k is QuantizedLinear)
    assert any(n.startswith("transformer.") for n, k in kinds.items() if k is QuantizedLinear)
    tables = [m for m in quantized.modules() if isinstance(m, TokenEmbedding)]
    assert tables and all(t.quantized and t.weight is None for t in tables)
    assert not any(k.endswith("emb.0.weight") for k in quantized.state_dict())


def test_embedding_tables_round_trip(
    tts_lm: tuple[LMModel, torch.Tensor, Conditions | None],
) -> None:
    """A table's int8 rows and bfloat16 row scales reconstruct it within half a step (plus the
    scale's own rounding); a lookup returns exactly the dequantized rows; -1 still embeds to 0."""
    lm, _, _ = tts_lm
    for name in ("emb.3", "text_emb", "depformer_emb.0"):
        float_table = lm.get_submodule(name)
        assert isinstance(float_table, TokenEmbedding) and float_table.weight is not None
        weight = float_table.weight.detach().clone()
        table = copy.deepcopy(float_table)
        table.quantize_table()
        assert table.qweight is not None and table.scale is not None
        assert table.qweight.dtype == torch.int8 and table.scale.dtype == torch.bfloat16
        scale = table.scale.float()[:, None]
        rebuilt = table.qweight.float() * scale
        assert bool(((rebuilt - weight).abs() <= scale * (0.5 + 1e-3)).all()), name
        ids = torch.tensor([[0, 5, table.num_embeddings - 1, 2]])
        assert torch.equal(table.lookup(ids), rebuilt[ids])
        with torch.no_grad():
            out = table(torch.tensor([[-1, 4]]))
            expected = float_table(torch.tensor([[-1, 4]]))
        assert out.dtype == torch.float32 and bool((out[0, 0] == 0).all())
        assert torch.allclose(out, expected, rtol=0.05, atol=float(scale.max()))
        half = copy.deepcopy(table).to(torch.bfloat16)
        assert half.lookup(ids).dtype == torch.bfloat16 and half.scale is not None
        assert half.scale.dtype == torch.bfloat16
