"""Tests of dsm.generate: per-slot streaming generation against the reference ``LMGen``.

Parity is token for token (greedy, and sampled with the same seed), on random models, over more
than 200 steps (past the attention window), with slots that start at different steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from dsm.generate import StreamingGenerator
from dsm.generate.cuda_graph import cuda_graphs_enabled
from dsm.generate.delay_ring import DelayRing
from dsm.generate.sampling import SlotSampler, resolve_max_top_k, sample_tokens
from dsm.nn.kv_cache import RingPositions
from dsm.nn.transformer import TransformerState

moshi_lm = pytest.importorskip("moshi.models.lm")
moshi_sampling = pytest.importorskip("moshi.utils.sampling")
no_compile = pytest.importorskip("moshi.utils.compile").no_compile

from tests.generate.pairs import ModelPair, build_pair  # noqa: E402
from tests.helpers.cpu_kernels import CpuMatmul  # noqa: E402

CONFIGS = ["stt", "stt0", "tts", "tiny"]
STEPS = 210


# ----------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_grad_one_thread() -> Iterator[None]:
    # These models are tiny: one intra-op thread is faster, and far faster on a busy machine
    # where a second OpenMP thread spins waiting for a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def run_reference(
    pair: ModelPair,
    codes: torch.Tensor,
    steps: int,
    rows: list[int] | None = None,
    cfg: bool = False,
    replace: Callable[[int], torch.Tensor | None] | None = None,
    **kwargs: Any,
) -> list[torch.Tensor | None]:
    """Fresh reference ``LMGen`` over ``steps`` calls: the frames ``[B, 1 + dep_q]`` (None
    while the reference returns None)."""
    rows = rows if rows is not None else list(range(codes.shape[0]))
    gen = moshi_lm.LMGen(pair.ref, **{**pair.ref_kwargs(rows, cfg), **kwargs})
    out: list[torch.Tensor | None] = []
    with no_compile(), gen.streaming(codes.shape[0]):
        for t in range(steps):
            frame = gen.step(codes[:, :, t : t + 1], None if replace is None else replace(t))
            out.append(None if frame is None else frame[..., 0].clone())
    return out


def random_inputs(pair: ModelPair, B: int, T: int, seed: int) -> torch.Tensor:
    """``[B, max(n_in, 1), T]`` random input audio tokens."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, pair.card, (B, max(pair.n_in, 1), T), generator=g)


def assert_same_stream(
    ref: list[torch.Tensor | None], got: list[torch.Tensor], valid: list[bool], what: object
) -> None:
    """Frames equal where the reference has one; -2 and not valid where it returns None."""
    assert len(ref) == len(got) == len(valid)
    for t, (r, g, v) in enumerate(zip(ref, got, valid, strict=True)):
        if r is None:
            assert not v and bool((g == -2).all()), (what, t, g)
        else:
            assert v and torch.equal(r[0], g), (what, t, r[0], g)


@dataclass
class Slot:
    start: int  # step at which the slot is reset (starts fresh)
    codes: torch.Tensor  # [1, n_in, T] its own inputs, indexed from its start


def run_staggered(
    pair: ModelPair, starts: list[int], steps: int, cfg_coef: float = 1.0, **kwargs: Any
) -> tuple[list[Slot], list[list[torch.Tensor]], list[list[bool]]]:
    """B = len(starts) slots; slot i runs other inputs (and, when conditioned, the conditions
    of the spare row) until it is reset at ``starts[i]`` with its own inputs and row i."""
    B = len(starts)
    total = max(starts) + steps
    slots = [Slot(s, random_inputs(pair, 1, total, seed=10 + i)) for i, s in enumerate(starts)]
    garbage = random_inputs(pair, B, total, seed=99)
    cfg = cfg_coef != 1.0
    spare = [pair.rows - 1] * B
    gen_kwargs = pair.gen_kwargs(spare if pair.conditioned else list(range(B)), cfg)
    gen = StreamingGenerator(pair.dsm, B, cfg_coef=cfg_coef, **{**gen_kwargs, **kwargs})
    own = pair.dsm_conditions(list(range(B)), cfg)
    got: list[list[torch.Tensor]] = [[] for _ in slots]
    valid: list[list[bool]] = [[] for _ in slots]
    with gen:
        for t in range(total):
            starting = torch.tensor([s.start == t for s in slots])
            if bool(starting.any()):
                gen.reset(starting, conditions=own)
            inputs = garbage[:, :, t].clone()
            for i, s in enumerate(slots):
                if t >= s.start:
                    inputs[i] = s.codes[0, :, t - s.start]
            out = gen.step(inputs[..., None])
            for i, s in enumerate(slots):
                if t >= s.start:
                    got[i].append(out.tokens[i])
                    valid[i].append(bool(out.valid[i]))
    return slots, got, valid


# ----------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(("temp", "top_k"), [(0.7, 25), (0.8, 0), (0.6, 250), (0.0, 25), (1.0, 1)])
def test_sampling_equals_reference_with_same_noise(temp: float, top_k: int) -> None:
    logits = torch.randn(6, 3, 100) * 3
    torch.manual_seed(1234)
    ref = moshi_sampling.sample_token(logits, True, temp, top_k)
    torch.manual_seed(1234)
    ours = sample_tokens(
        logits,
        torch.full((6,), temp),
        torch.full((6,), top_k),
        max_top_k=resolve_max_top_k([top_k], 100),
    )
    assert torch.equal(ref, ours)


def test_greedy_is_first_max_on_ties() -> None:
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    out = sample_tokens(logits, torch.zeros(2), torch.zeros(2, dtype=torch.long), max_top_k=0)
    assert out.tolist() == [1, 0]


@pytest.mark.parametrize("impl", ["function", "SlotSampler"])
def test_sampling_distribution_per_slot(impl: str) -> None:
    """Each slot follows softmax(logits / temp) restricted to its own top-k (chi-square)."""
    N, M = 12, 20_000
    base = torch.randn(N, generator=torch.Generator().manual_seed(0)) * 1.5
    settings = [(1.0, 0), (0.7, 5), (1.3, 3), (0.5, 12)]
    temps = torch.tensor([t for t, _ in settings]).repeat_interleave(M)
    ks = torch.tensor([k for _, k in settings]).repeat_interleave(M)
    logits = base.expand(len(settings) * M, N)
    gen = torch.Generator().manual_seed(42)
    max_k = resolve_max_top_k([k for _, k in settings], N)
    if impl == "function":
        tokens = sample_tokens(logits, temps, ks, max_top_k=max_k, generator=gen)
    else:
        sampler = SlotSampler(temps, ks, max_top_k=max_k, cardinality=N, generator=gen)
        assert sampler.all_sampling and sampler.masked
        tokens = sampler(logits)
    for i, (temp, k) in enumerate(settings):
        probs = torch.softmax(base / temp, -1)
        if k > 0:
            keep = probs.topk(k).indices
            masked = torch.zeros_like(probs)
            masked[keep] = probs[keep]
            probs = masked / masked.sum()
        counts = torch.bincount(tokens[i * M : (i + 1) * M], minlength=N).double()
        support = probs > 0
        assert counts[~support].sum() == 0, "sampled outside the top-k"
        expected = probs[support].double() * M
        chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
        dof = int(support.sum()) - 1
        # chi2 has mean dof and sd sqrt(2 dof): 6 sd is generous and still catches a wrong
        # temperature or top-k (those give chi2 in the hundreds or more).
        assert chi2 < dof + 6 * (2 * max(dof, 1)) ** 0.5 + 1, (temp, k, chi2, dof)


@pytest.mark.parametrize(("temp", "top_k"), [(0.7, 25), (0.8, 0), (0.0, 25)])
def test_slot_sampler_equals_reference_with_same_noise(temp: float, top_k: int) -> None:
    logits = torch.randn(5, 100) * 3
    sampler = SlotSampler(
        torch.full((5,), temp),
        torch.full((5,), top_k),
        max_top_k=resolve_max_top_k([top_k], 100),
        cardinality=100,
    )
    torch.manual_seed(99)
    ref = moshi_sampling.sample_token(logits, True, temp, top_k)
    torch.manual_seed(99)
    assert torch.equal(ref, sampler(logits))


# ----------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("config", CONFIGS)
def test_staggered_slots_match_fresh_reference_runs(config: str, cpu_matmul: CpuMatmul) -> None:
    """B=3 slots started (reset) at different steps each equal their own fresh reference run,
    over STEPS steps past the attention window; slots also run other inputs (and conditions)
    before their start."""
    pair = build_pair(config)
    cpu_matmul(pair.dsm)
    slots, got, valid = run_staggered(pair, [0, 7, 23], STEPS)
    for i, s in enumerate(slots):
        ref = run_reference(pair, s.codes, len(got[i]), rows=[i])
        assert len(got[i]) >= STEPS
        assert_same_stream(ref, got[i], valid[i], (config, i))


def _state_tensors(gen: StreamingGenerator) -> list[torch.Tensor]:
    """Every tensor of the generator's and the LM's streaming state (cloned).

    The ring KV caches have one scratch column past the capacity that paused slots write into
    and nothing reads (dsm.nn.kv_cache): it is left out.
    """
    out = [gen.cache, gen.offsets]
    for state in gen.lm_ctl.states:
        assert isinstance(state, TransformerState)
        positions = state.positions
        assert isinstance(positions, RingPositions)
        out += [positions.offsets, positions.key_pos]
        for cache in state.caches:
            out += [cache.k[:, :, : positions.capacity], cache.v[:, :, : positions.capacity]]
        for k, v in state.cross_kv or []:
            out += [k, v]
    return [t.clone() for t in out]


@pytest.mark.parametrize("config", ["stt", "tts"])
def test_sampled_generation_equals_reference_with_seed(config: str) -> None:
    """Same global seed, same slots -> the exponential noise is drawn in the same order, so
    sampled generation (temperature + top-k) is token-for-token the reference's."""
    pair = build_pair(config)
    B, T = 2, 40
    rows = list(range(B))
    codes = random_inputs(pair, B, T, seed=5)
    sampling: dict[str, Any] = dict(temp=0.8, temp_text=0.7, top_k=20, top_k_text=10)
    torch.manual_seed(77)
    ref = run_reference(pair, codes, T, rows=rows, **sampling)
    torch.manual_seed(77)
    gen = StreamingGenerator(pair.dsm, B, **{**pair.gen_kwargs(rows), **sampling})
    with gen:
        ours = [gen.step(codes[:, :, t : t + 1]) for t in range(T)]
    n_frames = 0
    for r, o in zip(ref, ours, strict=True):
        if r is None:
            assert not bool(o.valid.any())
        else:
            assert torch.equal(r, o.tokens)
            n_frames += 1
    assert n_frames > T // 2


def test_per_slot_sampling_settings() -> None:
    """A greedy slot next to a sampling slot still equals the greedy reference."""
    pair = build_pair("tts")
    T = 30
    codes = random_inputs(pair, 2, T, seed=6)
    gen = StreamingGenerator(
        pair.dsm,
        2,
        **{
            **pair.gen_kwargs([0, 1]),
            "temp": torch.tensor([0.0, 1.0]),
            "temp_text": torch.tensor([0.0, 1.0]),
        },
        generator=torch.Generator().manual_seed(0),
    )
    got, valid = [], []
    with gen:
        for t in range(T):
            out = gen.step(codes[:, :, t : t + 1])
            got.append(out.tokens[0])
            valid.append(bool(out.valid[0]))
    assert_same_stream(run_reference(pair, codes[:1], T, rows=[0]), got, valid, "greedy slot")


@pytest.mark.parametrize(
    ("cfg_is_no_text", "masked_until"), [(False, None), (True, None), (False, 6)]
)
def test_cfg_matches_reference(cfg_is_no_text: bool, masked_until: int | None) -> None:
    """CFG (cfg_coef 2, null branch as slots B:2B) on the conditioned TTS-like model, slots
    started at different steps."""
    pair = build_pair("tts")
    extra: dict[str, Any] = dict(cfg_is_no_text=cfg_is_no_text)
    slots, got, valid = run_staggered(
        pair,
        [0, 5],
        40,
        cfg_coef=2.0,
        cfg_is_masked_until=masked_until,
        **extra,
    )
    for i, s in enumerate(slots):
        ref = run_reference(
            pair,
            s.codes,
            len(got[i]),
            rows=[i],
            cfg=True,
            cfg_coef=2.0,
            cfg_is_masked_until=None if masked_until is None else [masked_until],
            **extra,
        )
        assert_same_stream(ref, got[i], valid[i], i)


def test_hooks_and_replaced_depformer_tokens_like_reference() -> None:
    """Logits, text and audio hooks mutate in place like the reference's; replacement tokens
    skip the depformer."""
    pair = build_pair("tts")
    T = 50

    def make_hooks(offset_of: Callable[[], torch.Tensor]) -> dict[str, Any]:
        def on_logits(logits: torch.Tensor) -> None:
            logits[..., 3] += 2.0

        def on_text(token: torch.Tensor) -> None:
            force = offset_of() % 4 == 1
            token.copy_(torch.where(force, torch.full_like(token, 5), token))

        def on_audio(tokens: torch.Tensor) -> None:
            early = (offset_of() < 12)[:, None]
            tokens[:, :2] = torch.where(early, -1, tokens[:, :2])

        return dict(on_text_logits_hook=on_logits, on_text_hook=on_text, on_audio_hook=on_audio)

    def replace(t: int) -> torch.Tensor | None:
        return torch.full((1, pair.dsm.dep_q, 1), -1) if t < 4 else None

    codes = random_inputs(pair, 1, T, seed=8)
    ref_step = [0]

    def ref_offset() -> torch.Tensor:
        return torch.tensor([ref_step[0]])

    ref = run_reference(pair, codes, T, rows=[0], replace=replace, **make_hooks(ref_offset))
    assert ref_step[0] == 0  # the reference counter is advanced below, from the frames
    # The reference hooks read a host counter: re-run, advancing it after every step.
    gen_ref = moshi_lm.LMGen(pair.ref, **pair.ref_kwargs([0]), **make_hooks(ref_offset))
    ref = []
    with no_compile(), gen_ref.streaming(1):
        for t in range(T):
            frame = gen_ref.step(codes[:, :, t : t + 1], replace(t))
            ref.append(None if frame is None else frame[..., 0])
            ref_step[0] += 1

    holder: list[StreamingGenerator] = []
    gen = StreamingGenerator(
        pair.dsm, 1, **pair.gen_kwargs([0]), **make_hooks(lambda: holder[0].offsets)
    )
    holder.append(gen)
    got, valid = [], []
    with gen:
        for t in range(T):
            out = gen.step(codes[:, :, t : t + 1], replace(t))
            got.append(out.tokens[0])
            valid.append(bool(out.valid[0]))
    assert_same_stream(ref, got, valid, "hooks")
    frames = torch.stack([g for g, v in zip(got, valid, strict=True) if v])
    assert bool((frames[:, 0] == 5).any()) and bool((frames[:, 1:3] == -1).any())


def test_streaming_text_logits_equal_teacher_forced() -> None:
    """Text logits of the streaming steps equal ``lm(codes)`` on the generated stream."""
    pair = build_pair("stt")
    lm = pair.dsm
    T = 40
    codes_in = random_inputs(pair, 1, T, seed=4)
    gen = StreamingGenerator(lm, 1, temp=0.0, temp_text=0.0)
    logits, frames = [], []
    with gen:
        for t in range(T):
            out = gen.step(codes_in[:, :, t : t + 1])
            assert out.text_logits is not None and out.extra_heads is not None
            logits.append(out.text_logits[0].clone())
            if bool(out.valid[0]):
                frames.append(out.tokens[0, 0])
    d0 = lm.delays[0]
    n = min(len(frames), T - 1)
    codes = torch.empty(1, lm.num_codebooks, n, dtype=torch.long)
    codes[0, 0] = torch.stack(frames[:n])
    # The input passed at call c is the training-aligned code of time c - 1 (model-spec §2.4).
    codes[0, 1:] = codes_in[0, :, 1 : n + 1]
    forced = lm(codes).text_logits[0, 0]  # [n, N], aligned with the codes
    assert n - d0 > 30
    for t in range(n - d0):  # the last d0 positions have no teacher-forced prediction
        s = t + d0  # the step that sampled the text of time t
        torch.testing.assert_close(logits[s], forced[t], rtol=1e-5, atol=1e-5)


def test_cuda_graph_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not cuda_graphs_enabled(torch.device("cpu"))
    monkeypatch.setenv("DSM_NO_CUDA_GRAPH", "1")
    assert not cuda_graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("DSM_NO_CUDA_GRAPH", "0")
    assert cuda_graphs_enabled(torch.device("cuda"))


def _conditions_to_cuda(kwargs: dict) -> None:  # type: ignore[type-arg]
    """Move the generator keyword arguments' conditions to CUDA, in place."""
    c = kwargs.get("conditions")
    if c is not None:
        kwargs["conditions"] = type(c)(
            None if c.sum is None else c.sum.cuda(), None if c.cross is None else c.cross.cuda()
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("config", "sampled"), [("stt", False), ("tts", False), ("tts", True)])
def test_cuda_graph_equals_eager(config: str, sampled: bool) -> None:
    """The captured phases replay exactly what eager mode computes, hooks and seeded sampling
    (a CUDA generator registered with the graphs) included."""
    pair = build_pair(config)
    B, T = 3, 30
    lm = pair.dsm.cuda()
    codes = random_inputs(pair, B, T, seed=2).cuda()
    outs = []
    for graph in (False, True):
        kwargs = pair.gen_kwargs(list(range(B)))
        _conditions_to_cuda(kwargs)
        if sampled:
            kwargs.update(temp=0.8, temp_text=0.7, top_k=20, top_k_text=10)
            kwargs["generator"] = torch.Generator("cuda").manual_seed(3)

        def on_text(token: torch.Tensor) -> None:
            token.copy_(torch.where(token == 7, 8, token))

        gen = StreamingGenerator(lm, B, cuda_graph=graph, on_text_hook=on_text, **kwargs)
        with gen:
            outs.append([gen.step(codes[:, :, t : t + 1]).tokens.cpu() for t in range(T)])
            if graph:
                assert gen._phase_main._graph is not None
    pair.dsm.cpu()
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_cuda_graph_captures_quantized_projections(mode: str) -> None:
    """A quantized LM (projections and int8 embedding tables) on CUDA: the captured phases
    replay what eager mode computes."""
    import copy

    from dsm.models.lm_loading import quantize_lm

    pair = build_pair("tts")
    B, T = 2, 20
    lm = quantize_lm(copy.deepcopy(pair.dsm), mode, group_size=32).cuda()
    codes = random_inputs(pair, B, T, seed=4).cuda()
    outs = []
    for graph in (False, True):
        kwargs = pair.gen_kwargs(list(range(B)))
        _conditions_to_cuda(kwargs)
        gen = StreamingGenerator(lm, B, cuda_graph=graph, **kwargs)
        with gen:
            outs.append([gen.step(codes[:, :, t : t + 1]).tokens.cpu() for t in range(T)])
            if graph:
                assert gen._phase_main._graph is not None
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


def test_delay_ring_alignment_and_pause() -> None:
    """The ring undelays generated streams and feeds input streams ``delay_k`` ahead; a paused
    slot's columns and offset do not move."""
    delays = [1, 0, 2, 3]  # text, one generated audio stream, two input-only streams
    ring = DelayRing(2, delays, [100, 200, 200, 200], num_generated=2, device=torch.device("cpu"))
    run = torch.tensor([True, True])
    frames, fed = [], []
    for step in range(8):
        exec_mask = run if step != 3 else torch.tensor([True, False])
        ring.write_inputs(torch.tensor([[10 + step, 20 + step]] * 2), exec_mask)
        tokens, _ = ring.read(exec_mask)
        fed.append(tokens.clone())
        before = ring.tokens[1].clone(), ring.offsets[1].clone()
        frame, valid = ring.commit(torch.tensor([[step, 50 + step]] * 2), exec_mask)
        if step == 3:
            assert torch.equal(ring.tokens[1], before[0]) and ring.offsets[1] == before[1]
            assert not bool(valid[1]) and bool((frame[1] == -2).all())
        frames.append((frame.clone(), valid.clone()))
    # Slot 0: the frame of time t (valid from step max_delay = 3) holds the text sampled at
    # step t + 1 and the audio sampled at step t (their delays).
    for step in range(3, 8):
        frame, valid = frames[step]
        t = step - 3
        assert bool(valid[0]) and frame[0].tolist() == [t + 1, 50 + t]
    # Input stream k (delay d) given at call c is read at step c + d; initial tokens before.
    assert fed[1][0].tolist() == [100, 50, 200, 200]
    assert fed[5][0, 2:].tolist() == [10 + 5 - 2, 20 + 5 - 3]
