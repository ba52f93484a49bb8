"""dsm.nn transformer blocks against moshi 0.2.13's StreamingTransformer (float32, CPU).

Reference modules are built by moshi, randomly initialised, converted to the published key
layout with ``to_hub_layout`` and loaded with ``strict=True``. Errors observed (float32, CPU):
offline, ring-cache streaming (T=1 and the T=2 quirk), cross-attention and kv_repeat are
bit-exact (max abs 0.0); weights-per-step streaming differs by <= 1.5e-6 abs (dsm attends the
valid prefix of the step cache without a mask where the reference masks the full cache);
batched-vs-alone and streaming-vs-offline comparisons within dsm stay <= 2e-6 abs. The printed
figures (run with ``-s``) give the exact values; asserts use atol 1e-5 / rtol 1e-5.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from dsm.nn import StreamingTransformer, streaming
from dsm.nn.gating import gated_hidden_dim
from dsm.nn.kv_cache import RingPositions
from dsm.nn.norms import make_norm
from dsm.nn.rope import RotaryEmbedding, apply_rope
from dsm.nn.transformer import TransformerState
from tests.helpers.hub_layout import to_hub_layout

try:
    from moshi.modules import transformer as moshi_transformer
    from moshi.utils.compile import no_compile
except ImportError:  # the CUDA tests at the end run without the reference
    moshi_transformer = None
    no_compile = contextlib.nullcontext

needs_moshi = pytest.mark.skipif(moshi_transformer is None, reason="needs moshi (reference)")

ATOL = 1e-5
RTOL = 1e-5
D = 32
HEADS = 4

MIMI_STYLE = dict(
    norm="layer_norm", gating="none", layer_scale=0.01, max_period=10_000.0, dim_feedforward=128
)
LM_STYLE = dict(
    norm="rms_norm_f32", gating="silu", layer_scale=None, max_period=100_000.0, dim_feedforward=128
)
CONTEXT = 8


def _errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a - b).abs()
    return diff.max().item(), (diff / b.abs().clamp_min(1e-6)).max().item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    abs_err, rel_err = _errors(actual, expected)
    print(f"{name}: max abs err {abs_err:.3g}, max rel err {rel_err:.3g}")
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def make_pair(
    seed: int = 0, num_layers: int = 2, **kwargs: object
) -> tuple[torch.nn.Module, StreamingTransformer]:
    """A reference transformer and a dsm one holding the same weights."""
    torch.manual_seed(seed)
    config: dict[str, object] = dict(
        d_model=D,
        num_heads=HEADS,
        num_layers=num_layers,
        causal=True,
        positional_embedding="rope",
    )
    config.update(kwargs)
    ref = moshi_transformer.StreamingTransformer(**config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "alpha" in name or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.3)
    mine = StreamingTransformer(**config).eval()  # type: ignore[arg-type]
    mine.load_state_dict(to_hub_layout(ref.state_dict()), strict=True)
    return ref, mine


def ref_stream(ref: torch.nn.Module, x: torch.Tensor, chunk: int, **kw: object) -> torch.Tensor:
    with ref.streaming(x.shape[0]):
        return torch.cat(
            [ref(x[:, t : t + chunk], **kw) for t in range(0, x.shape[1], chunk)], dim=1
        )


def dsm_stream(
    mine: StreamingTransformer, x: torch.Tensor, chunk: int, **kw: object
) -> torch.Tensor:
    with streaming(mine, x.shape[0]):
        return torch.cat(
            [mine(x[:, t : t + chunk], **kw) for t in range(0, x.shape[1], chunk)], dim=1
        )


@pytest.fixture(autouse=True)
def _no_grad() -> object:
    # The reference torch.compiles its rope/norm kernels when called outside a layer on CPU.
    with torch.no_grad(), no_compile():
        yield


# -- building blocks ------------------------------------------------------------------------


@needs_moshi
def test_rope_matches_reference_with_per_slot_offsets() -> None:
    from moshi.modules.rope import apply_rope as ref_apply_rope

    torch.manual_seed(0)
    B, T, H, Dh = 3, 5, 2, 16
    q = torch.randn(B, H, T, Dh)
    k = torch.randn(B, H, T, Dh)
    offsets = torch.tensor([0, 7, 1234])
    rq, rk = ref_apply_rope(q, k, offsets, 100_000.0, True, False)
    rope = RotaryEmbedding(Dh, 100_000.0)
    cos, sin = rope.rotation(offsets[:, None] + torch.arange(T))
    qk = torch.stack([q, k], dim=2).transpose(1, 3)  # [B, T, 2, H, Dh]
    out = apply_rope(qk, cos, sin).transpose(1, 3)
    assert torch.equal(out[:, :, 0], rq)
    assert torch.equal(out[:, :, 1], rk)
    # bf16 inputs: f32 math then cast back, like the reference.
    rq16, _ = ref_apply_rope(q.bfloat16(), k.bfloat16(), offsets, 100_000.0, True, False)
    out16 = apply_rope(q.bfloat16().transpose(1, 2), cos, sin).transpose(1, 2)
    assert out16.dtype == torch.bfloat16
    assert torch.equal(out16, rq16)


@needs_moshi
@pytest.mark.parametrize("kind", ["layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32"])
def test_norms_match_reference(kind: str) -> None:
    torch.manual_seed(0)
    ref = moshi_transformer.create_norm_fn(kind, D)
    mine = make_norm(kind, D)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, D) * 3
    assert torch.equal(mine(x), ref(x))
    if kind == "rms_norm_f32":
        assert tuple(mine.state_dict()["alpha"].shape) == (1, 1, D)
        xb = x.bfloat16()
        assert torch.equal(mine.bfloat16()(xb), ref.bfloat16()(xb))


def test_gated_hidden_dims() -> None:
    assert gated_hidden_dim(2048, 8448) == 5632  # LM: hidden_scale 4.125
    assert gated_hidden_dim(1024, 3072) == 2048  # TTS depformer
    assert gated_hidden_dim(512, 2048) == (21 * 512) // 8  # dim_feedforward == 4 * d


@needs_moshi
def test_checkpoint_key_names() -> None:
    _, lm = make_pair(**LM_STYLE, context=CONTEXT, cross_attention=True)
    keys = set(lm.state_dict())
    for key in [
        "layers.0.self_attn.in_proj_weight",
        "layers.0.self_attn.out_proj.weight",
        "layers.0.norm1.alpha",
        "layers.0.norm2.alpha",
        "layers.0.gating.linear_in.weight",
        "layers.0.gating.linear_out.weight",
        "layers.0.cross_attention.in_proj_weight",
        "layers.0.cross_attention.out_proj.weight",
        "layers.0.norm_cross.weight",
        "layers.0.norm_cross.bias",
    ]:
        assert key in keys, key
    _, mimi = make_pair(**MIMI_STYLE, context=CONTEXT)
    assert {
        "layers.1.linear1.weight",
        "layers.1.layer_scale_1.scale",
        "layers.1.norm1.bias",
    } <= set(mimi.state_dict())
    _, dep = make_pair(
        **LM_STYLE,
        positional_embedding="none",
        weights_per_step=4,
        weights_per_step_schedule=[0, 1, 1, 2],
    )
    sd = dep.state_dict()
    assert tuple(sd["layers.0.self_attn.in_proj_weight"].shape) == (3 * 3 * D, D)
    assert tuple(sd["layers.0.self_attn.out_proj.weight"].shape) == (3 * D, D)
    assert "layers.0.gating.2.linear_in.weight" in sd


# -- parity with the reference --------------------------------------------------------------


@needs_moshi
@pytest.mark.parametrize("style", ["mimi", "lm"])
def test_offline_matches_reference(style: str) -> None:
    cfg = MIMI_STYLE if style == "mimi" else LM_STYLE
    ref, mine = make_pair(**cfg, context=CONTEXT)
    x = torch.randn(2, 24, D)
    assert_close(f"offline {style}", mine(x), ref(x))


@needs_moshi
@pytest.mark.parametrize("style", ["mimi", "lm"])
def test_streaming_steps_match_reference_past_context(style: str) -> None:
    cfg = MIMI_STYLE if style == "mimi" else LM_STYLE
    ref, mine = make_pair(**cfg, context=CONTEXT)
    x = torch.randn(2, 3 * CONTEXT, D)
    expected = ref_stream(ref, x, 1)
    actual = dsm_stream(mine, x, 1)
    assert_close(f"streaming T=1 {style}", actual, expected)
    # T=1 streaming has no quirk: it equals the offline forward.
    assert_close(f"streaming T=1 vs offline {style}", actual, mine(x))


@needs_moshi
@pytest.mark.parametrize("chunk", [1, 2])
def test_bf16_streaming_as_precise_as_reference(chunk: int) -> None:
    """bfloat16 streaming on CPU computes few-query attention with float32 scores instead of
    PyTorch's flash kernel (:func:`dsm.nn.attention.attend`): not bit-identical to the reference,
    but as close to the float32 result as the reference's own bfloat16 run."""
    ref, mine = make_pair(**LM_STYLE, context=CONTEXT, cross_attention=True)
    x = torch.randn(2, 3 * CONTEXT, D)
    src = torch.randn(2, 5, D)
    truth = ref_stream(ref, x, chunk, cross_attention_src=src)
    ref.bfloat16()
    mine.bfloat16()
    expected = ref_stream(ref, x.bfloat16(), chunk, cross_attention_src=src.bfloat16())
    actual = dsm_stream(mine, x.bfloat16(), chunk, cross_src=src.bfloat16())
    scale = truth.abs().max()
    ref_err = ((expected.float() - truth).abs().max() / scale).item()
    our_err = ((actual.float() - truth).abs().max() / scale).item()
    between = ((actual.float() - expected.float()).abs().max() / scale).item()
    print(
        f"bf16 streaming T={chunk}: vs float32, reference {ref_err:.2e}, dsm {our_err:.2e}; "
        f"dsm vs reference {between:.2e}"
    )
    assert our_err <= 1.5 * ref_err + 1e-3


@needs_moshi
def test_two_step_chunks_reproduce_reference_quirk() -> None:
    ref, mine = make_pair(**MIMI_STYLE, context=CONTEXT)
    x = torch.randn(2, 3 * CONTEXT, D)
    expected = ref_stream(ref, x, 2)
    actual = dsm_stream(mine, x, 2)
    assert_close("streaming T=2 (quirk)", actual, expected)
    # Before the ring fills, chunks equal offline; after it, the oldest key is lost.
    offline = mine(x)
    torch.testing.assert_close(actual[:, :CONTEXT], offline[:, :CONTEXT], atol=ATOL, rtol=RTOL)
    assert (actual[:, CONTEXT + 1 :] - offline[:, CONTEXT + 1 :]).abs().max() > 1e-3


@needs_moshi
def test_cross_attention_matches_reference() -> None:
    ref, mine = make_pair(**LM_STYLE, context=CONTEXT, cross_attention=True)
    x = torch.randn(2, 12, D)
    src = torch.randn(2, 5, D)
    assert_close("cross offline", mine(x, src), ref(x, src))
    expected = ref_stream(ref, x, 1, cross_attention_src=src)
    actual = dsm_stream(mine, x, 1, cross_src=src)
    assert_close("cross streaming", actual, expected)


@needs_moshi
def test_kv_repeat_matches_reference() -> None:
    ref, mine = make_pair(**LM_STYLE, context=CONTEXT, kv_repeat=2)
    x = torch.randn(2, 20, D)
    assert_close("kv_repeat offline", mine(x), ref(x))
    assert_close("kv_repeat streaming", dsm_stream(mine, x, 1), ref_stream(ref, x, 1))


@needs_moshi
def test_weights_per_step_match_reference() -> None:
    dep_q = 4
    ref, mine = make_pair(
        **LM_STYLE,
        positional_embedding="none",
        weights_per_step=dep_q,
        weights_per_step_schedule=[0, 1, 1, 2],
    )
    x = torch.randn(3, dep_q, D)
    expected = ref(x)
    assert_close("weights_per_step offline", mine(x), expected)
    # Depformer usage: a fresh stream per frame, one step per codebook; several frames in one
    # stream via reset.
    frames = [torch.randn(3, dep_q, D) for _ in range(3)]
    with streaming(mine, 3) as ctl:
        for f, frame in enumerate(frames):
            ctl.reset()
            steps = torch.cat([mine(frame[:, c : c + 1]) for c in range(dep_q)], dim=1)
            assert_close(f"weights_per_step frame {f}", steps, ref_stream(ref, frame, 1))
        ctl.reset()
        two = torch.cat([mine(frames[0][:, :2]), mine(frames[0][:, 2:])], dim=1)
        assert_close("weights_per_step T=2 chunks", two, ref(frames[0]))
        with pytest.raises(ValueError, match="exceed"):
            mine(frames[0][:, :1])


# -- slots: exec mask, reset, batch independence --------------------------------------------


def _state(mine: StreamingTransformer) -> TransformerState:
    state = mine.streaming_state
    assert isinstance(state, TransformerState)
    return state


def _slot_snapshot(mine: StreamingTransformer, i: int) -> list[torch.Tensor]:
    state = _state(mine)
    pos = state.positions
    assert isinstance(pos, RingPositions)
    tensors = [pos.offsets[i].clone(), pos.key_pos[i].clone()]
    for cache in state.caches:  # the ring, without the scratch column
        tensors += [cache.k[i, :, : pos.capacity].clone(), cache.v[i, :, : pos.capacity].clone()]
    return tensors


@needs_moshi
def test_exec_mask_leaves_paused_slots_bit_identical() -> None:
    _, mine = make_pair(**LM_STYLE, context=CONTEXT)
    B = 3
    x = torch.randn(B, 2 * CONTEXT, D)
    paused = torch.randn(B, 3, D)
    with streaming(mine, B) as ctl:
        for t in range(CONTEXT + 2):  # past the ring capacity
            mine(x[:, t : t + 1])
        before = _slot_snapshot(mine, 1)
        ctl.set_exec_mask(torch.tensor([True, False, True]))
        for t in range(3):
            out = mine(paused[:, t : t + 1])
            assert torch.isfinite(out).all()
        mine(paused[:, :2])  # a T=2 chunk too
        after = _slot_snapshot(mine, 1)
        for a, b in zip(before, after, strict=True):
            assert torch.equal(a, b)
        ctl.set_exec_mask(torch.ones(B, dtype=torch.bool))
        rest = torch.cat([mine(x[:, t : t + 1]) for t in range(CONTEXT + 2, 2 * CONTEXT)], dim=1)
    # Slot 1 resumed exactly as if the paused steps never happened.
    alone = dsm_stream(mine, x[1:2], 1)[:, CONTEXT + 2 :]
    assert_close("exec mask resume", rest[1:2], alone)


@needs_moshi
def test_reset_slot_equals_fresh_stream() -> None:
    _, mine = make_pair(**MIMI_STYLE, context=CONTEXT)
    B = 3
    x = torch.randn(B, CONTEXT + 3, D)
    y = torch.randn(B, 2 * CONTEXT, D)
    with streaming(mine, 1):
        fresh_state = _slot_snapshot(mine, 0)
    with streaming(mine, B) as ctl:
        for t in range(x.shape[1]):
            mine(x[:, t : t + 1])
        ctl.reset(torch.tensor([False, True, False]))
        for a, b in zip(_slot_snapshot(mine, 1), fresh_state, strict=True):
            assert torch.equal(a, b)
        out = torch.cat([mine(y[:, t : t + 1]) for t in range(y.shape[1])], dim=1)
    assert_close("reset slot vs fresh stream", out[1:2], dsm_stream(mine, y[1:2], 1))


@needs_moshi
def test_slot_in_batch_equals_alone() -> None:
    _, mine = make_pair(**LM_STYLE, context=CONTEXT)
    x = torch.randn(4, 2 * CONTEXT, D)
    batched = dsm_stream(mine, x, 1)
    for i in range(4):
        assert_close(
            f"slot {i} batched vs alone", batched[i : i + 1], dsm_stream(mine, x[i : i + 1], 1)
        )


@needs_moshi
def test_set_cross_source_replaces_masked_slots_only() -> None:
    _, mine = make_pair(**LM_STYLE, context=CONTEXT, cross_attention=True)
    B = 2
    x = torch.randn(B, 6, D)
    src_a = torch.randn(B, 5, D)
    src_b = torch.randn(B, 5, D)
    with streaming(mine, B) as ctl:
        mine.set_cross_source(src_a)
        first = mine(x[:, :3])
        ctl.reset(torch.tensor([False, True]))
        mine.set_cross_source(src_b, mask=torch.tensor([False, True]))
        second = mine(x[:, :3])
    # Slot 0 kept its source and its history (its 2nd chunk is positions 3..5 of a stream).
    twice = torch.cat([x[:1, :3], x[:1, :3]], dim=1)
    assert_close("cross slot kept", second[:1], mine(twice, src_a[:1])[:, 3:])
    assert_close("cross slot replaced", second[1:], mine(x[1:, :3], src_b[1:]))
    assert_close("cross first", first, mine(x[:, :3], src_a))


# -- CUDA: no host syncs, graph capture ------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _graph(fn: object) -> tuple[torch.cuda.CUDAGraph, object]:
    """Warm ``fn`` up on a side stream, then capture it (capture runs no kernels)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # type: ignore[operator]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()  # type: ignore[operator]
    return graph, out


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_step_has_no_host_sync_and_graphs(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    mine = StreamingTransformer(
        64, 4, 2, 256, context=CONTEXT, gating="silu", norm="rms_norm_f32", max_period=1e5
    )
    mine = mine.to(device=dev, dtype=dtype).eval()
    B, steps = 3, 3 * CONTEXT
    xs = torch.randn(steps, B, 1, 64, device=dev, dtype=dtype)
    masks = torch.rand(steps, B, device=dev) > 0.3
    with streaming(mine, B) as ctl:
        mine(xs[0])
        ctl.reset()
        eager = []
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(steps):
                ctl.set_exec_mask(masks[t])
                eager.append(mine(xs[t]).clone())
        finally:
            torch.cuda.set_sync_debug_mode(0)
    with streaming(mine, B) as ctl:
        static_x = torch.zeros_like(xs[0])
        graph, static_y = _graph(lambda: mine(static_x))
        ctl.reset()
        for t in range(steps):
            static_x.copy_(xs[t])
            ctl.set_exec_mask(masks[t])
            graph.replay()
            assert isinstance(static_y, torch.Tensor)
            assert torch.equal(static_y, eager[t]), t


@cuda_only
def test_cuda_depformer_frame_graphs() -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    dep_q = 4
    mine = StreamingTransformer(
        64,
        4,
        2,
        256,
        positional_embedding="none",
        gating="silu",
        norm="rms_norm_f32",
        weights_per_step=dep_q,
        weights_per_step_schedule=[0, 1, 1, 2],
    )
    mine = mine.to(dev).eval()
    B = 2
    frames = torch.randn(3, B, dep_q, 64, device=dev)
    offline = [mine(frame) for frame in frames]  # teacher-forced forward over dep_q positions
    with streaming(mine, B) as ctl:
        static_x = torch.zeros_like(frames[0])

        def run_frame() -> torch.Tensor:
            ctl.reset()  # the depformer restarts every frame
            return torch.cat([mine(static_x[:, c : c + 1]) for c in range(dep_q)], dim=1)

        graph, static_y = _graph(run_frame)
        for f in range(frames.shape[0]):
            static_x.copy_(frames[f])
            graph.replay()
            assert isinstance(static_y, torch.Tensor)
            replayed = static_y.clone()
            assert torch.equal(replayed, run_frame())  # eager, same inputs
            torch.testing.assert_close(replayed, offline[f], atol=ATOL, rtol=RTOL)
