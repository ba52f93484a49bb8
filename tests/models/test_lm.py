"""DSM language model: parity with the reference (moshi 0.2.13), streaming, strict loading.

Reference models are built from ``config.json`` dicts by the reference's loader, randomized
with a fixed seed (conditioners included), saved as hub-layout checkpoint directories and
loaded by dsm (:mod:`tests.helpers.reference_lm`). Figures, float32 on CPU, relative error
``max|dsm - ref| / max|ref|`` over the valid (non-NaN) entries:

* tiny model vs the upstream expected outputs (``tests/assets``): text 2.0e-7, audio 1.6e-7
  (the reference itself gets the same figures against its own assets);
* tiny / STT-like / TTS-like (with conditions) vs the reference built here: 0.0 to 5e-7
  (bound asserted: 1e-4);
* streaming (``forward_text`` step by step, ``depformer_step`` codebook by codebook) vs the
  teacher-forced pass: <= 1e-6 (bound asserted: 1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsm.checkpoint.config import CheckpointConfig, load_config, parse_config
from dsm.errors import ConfigError, WeightsError
from dsm.lm import load_lm, load_lm_from_files
from dsm.models.lm import LMModel
from dsm.models.lm_loading import fuse_split_projections
from dsm.nn import Linear
from dsm.nn.streaming import streaming
from tests.helpers.cpu_kernels import CpuMatmul
from tests.helpers.reference_lm import (
    STT_LIKE,
    TINY,
    TTS_LIKE,
    make_reference_lm,
    make_reference_lm_dir,
    reference_condition_tensors,
)

ASSETS = Path(__file__).parent.parent / "assets"
PARITY_RTOL = 1e-4
STREAM_RTOL = 1e-5


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|ours - ref| / max|ref|`` over finite reference entries (NaN layouts must agree)."""
    valid = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours), valid), "NaN layouts differ"
    return ((ours - ref)[valid].abs().max() / ref[valid].abs().max()).item()


def _no_compile() -> Any:
    from moshi.utils.compile import no_compile

    return no_compile()


@pytest.fixture(autouse=True)
def _no_grad() -> Any:
    with torch.no_grad():
        yield


class Pair:
    """A reference LM, its checkpoint directory and the dsm LM loaded from it."""

    def __init__(self, tmp: Path, raw: dict[str, Any], seed: int, name: str) -> None:
        self.raw = raw
        self.ref, self.dir = make_reference_lm_dir(tmp, raw, seed, name)
        self.config: CheckpointConfig = load_config(self.dir / "config.json")
        self.lm = load_lm_from_files(self.config, self.dir / self.config.moshi_name)


@pytest.fixture(scope="module")
def stt(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return Pair(tmp_path_factory.mktemp("lm"), STT_LIKE, 1, "stt")


@pytest.fixture(scope="module")
def tts(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return Pair(tmp_path_factory.mktemp("lm"), TTS_LIKE, 2, "tts")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return Pair(tmp_path_factory.mktemp("lm"), TINY, 3, "tiny")


def _codes(lm: LMModel, B: int, T: int, seed: int, *, demux: bool = False) -> torch.Tensor:
    """Random ``[B, K, T]`` codes with a few -1 (zero) tokens in text and audio."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, lm.card, (B, lm.num_codebooks, T), generator=gen)
    text = torch.randint(0, lm.text_card, (B, T), generator=gen)
    if demux:
        second = torch.randint(-1, lm.text_card, (B, T), generator=gen)
        text = (second + 1) * (lm.text_card + 1) + text
    codes[:, 0] = text
    codes[0, 0, 2] = -1
    codes[-1, 1, T // 2] = -1
    codes[0, -1, 1] = -1
    return codes


def _tts_inputs(B: int, S: int = 10) -> tuple[dict[str, Any], dict[str, Any]]:
    gen = torch.Generator().manual_seed(5)
    text = {"cfg": ["1.5", None, "4.0"][:B], "control": ["ok", "ok", None][:B]}
    speaker = torch.randn(B, S, 16, generator=gen)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 6:] = False
    mask[-1] = False
    return text, {"speaker_wavs": (speaker, mask)}


def _delayed(lm: LMModel, codes: torch.Tensor) -> torch.Tensor:
    """Stream k shifted right by delays[k], initial tokens in front (the training alignment)."""
    out = codes.clone()
    for k, d in enumerate(lm.delays):
        if d:
            out[:, k, d:] = codes[:, k, :-d]
            out[:, k, :d] = lm.text_initial_token_id if k == 0 else lm.initial_token_id
    return out


def _step_inputs(lm: LMModel, delayed: torch.Tensor) -> torch.Tensor:
    """Main-transformer inputs: an initial column, then the delayed codes minus the last."""
    B = delayed.shape[0]
    initial = torch.full((B, lm.num_codebooks, 1), lm.initial_token_id, device=delayed.device)
    initial[:, 0] = lm.text_initial_token_id
    return torch.cat([initial, delayed[:, :, :-1]], dim=2)


# -- parity with the reference ---------------------------------------------------------------


def test_tiny_matches_upstream_assets() -> None:
    """The reference's own fixture: weights, codes and expected ``LMModel.forward`` outputs."""
    lm = load_lm_from_files(parse_config(TINY), ASSETS / "test_lm_model.safetensors")
    codes = load_file(ASSETS / "test_lm_codes.safetensors")["codes"]
    expected = load_file(ASSETS / "test_lm_out.safetensors")
    out = lm(codes)
    assert out.audio_logits is not None and out.audio_mask is not None
    assert torch.equal(out.text_mask, expected["text_mask"])
    assert torch.equal(out.audio_mask, expected["mask"])
    text_err = _rel(out.text_logits, expected["text_logits"])
    audio_err = _rel(out.audio_logits, expected["logits"])
    print(f"tiny vs upstream assets: text {text_err:.2e}, audio {audio_err:.2e}")
    assert text_err < 1e-5 and audio_err < 1e-5


def test_tiny_random_matches_reference(tiny: Pair, cpu_matmul: CpuMatmul) -> None:
    cpu_matmul(tiny.lm)
    codes = _codes(tiny.lm, 2, 9, seed=0)
    with _no_compile():
        ref = tiny.ref(codes)
    out = tiny.lm(codes)
    assert out.audio_logits is not None and out.audio_mask is not None
    assert torch.equal(out.text_mask, ref.text_mask) and torch.equal(out.audio_mask, ref.mask)
    text_err, audio_err = _rel(out.text_logits, ref.text_logits), _rel(out.audio_logits, ref.logits)
    print(f"tiny random [{cpu_matmul}]: text {text_err:.2e}, audio {audio_err:.2e}")
    assert text_err < PARITY_RTOL and audio_err < PARITY_RTOL


def test_stt_like_matches_reference(stt: Pair, cpu_matmul: CpuMatmul) -> None:
    """dep_q = 0: the reference's forward() fails, so compare its forward_text (one-step shift)."""
    cpu_matmul(stt.lm)
    lm = stt.lm
    B, T = 2, 13
    codes = _codes(lm, B, T, seed=1)
    out = lm(codes)
    assert out.audio_logits is None and out.audio_mask is None
    assert out.text_logits.shape == (B, 1, T, lm.text_out_card)
    assert torch.equal(out.text_mask, codes[:, :1] != -1)
    with _no_compile():
        hidden, ref_text = stt.ref.forward_text(_step_inputs(lm, codes))
        ref_probs = [torch.softmax(head(hidden), dim=-1) for head in stt.ref.extra_heads]
    text_err = _rel(out.text_logits, ref_text)
    _, ours_hidden = lm.forward_text(_step_inputs(lm, codes))
    probs = lm.extra_heads_probs(ours_hidden)
    assert probs.shape == (B, T, 4, 6)
    probs_err = _rel(probs, torch.stack(ref_probs, dim=2))
    print(f"stt-like [{cpu_matmul}]: text {text_err:.2e}, extra heads {probs_err:.2e}")
    assert text_err < PARITY_RTOL and probs_err < PARITY_RTOL


def test_tts_like_matches_reference_with_conditions(tts: Pair, cpu_matmul: CpuMatmul) -> None:
    cpu_matmul(tts.lm)
    lm, B, T = tts.lm, 3, 10
    codes = _codes(lm, B, T, seed=2, demux=True)
    text, tensors = _tts_inputs(B)
    conditions = lm.make_conditions(text, tensors, B)
    ref_conditions = reference_condition_tensors(tts.ref, text, tensors, B)
    assert conditions.sum is not None and conditions.cross is not None
    assert conditions.sum.dtype == torch.float32
    sum_err = _rel(conditions.sum, tts.ref.fuser.get_sum(ref_conditions))
    cross_err = _rel(conditions.cross, tts.ref.fuser.get_cross(ref_conditions))
    with _no_compile():
        ref = tts.ref(codes, ref_conditions)
    out = lm(codes, conditions)
    assert out.audio_logits is not None and out.audio_mask is not None
    assert torch.equal(out.text_mask, ref.text_mask) and torch.equal(out.audio_mask, ref.mask)
    text_err, audio_err = _rel(out.text_logits, ref.text_logits), _rel(out.audio_logits, ref.logits)
    print(
        f"tts-like [{cpu_matmul}]: sum {sum_err:.2e}, cross {cross_err:.2e}, text {text_err:.2e}, "
        f"audio {audio_err:.2e}"
    )
    for err in (sum_err, cross_err, text_err, audio_err):
        assert err < PARITY_RTOL


def test_null_conditions_match_dropout_all_conditions(tts: Pair) -> None:
    from moshi.conditioners import ConditionAttributes, TensorCondition, dropout_all_conditions

    B, S = 3, 10
    text, tensors = _tts_inputs(B, S)
    speaker, mask = tensors["speaker_wavs"]
    attributes = [
        ConditionAttributes(
            text={name: values[b] for name, values in text.items()},
            tensor={"speaker_wavs": TensorCondition(speaker[b : b + 1], mask[b : b + 1])},
        )
        for b in range(B)
    ]
    ref = tts.ref.condition_provider.prepare_and_provide(dropout_all_conditions(attributes))
    null = tts.lm.null_conditions(B, {"speaker_wavs": S})
    assert null.sum is not None and null.cross is not None
    assert _rel(null.sum, tts.ref.fuser.get_sum(ref)) < PARITY_RTOL
    assert _rel(null.cross, tts.ref.fuser.get_cross(ref)) < PARITY_RTOL
    with pytest.raises(ValueError, match="length of tensor condition"):
        tts.lm.null_conditions(B)


def test_condition_input_errors(tts: Pair) -> None:
    text, tensors = _tts_inputs(2)
    with pytest.raises(ValueError, match="expected one of"):
        tts.lm.make_conditions({**text, "cfg": ["9.9", None]}, tensors, 2)
    with pytest.raises(ValueError, match="missing tensor condition"):
        tts.lm.make_conditions(text, None, 2)
    with pytest.raises(ValueError, match="unknown condition"):
        tts.lm.make_conditions({**text, "speed": ["1", "2"]}, tensors, 2)
    with pytest.raises(ValueError, match="conditioned"):
        tts.lm(_codes(tts.lm, 2, 4, seed=0, demux=True))


# -- embeddings --------------------------------------------------------------------------------


def test_zero_token_embeds_to_exact_zero(tts: Pair) -> None:
    lm = tts.lm
    tokens = torch.full((2, lm.num_codebooks, 3), -1)
    assert torch.equal(lm.embed(tokens), torch.zeros(2, 3, lm.dim))
    assert lm.depformer_text_emb is not None
    assert torch.equal(lm.depformer_text_emb(tokens[:, 0]), torch.zeros(2, 3, 32))
    assert torch.equal(lm.depformer_emb[0](tokens[:, 1]), torch.zeros(2, 3, 32))


def test_ids_and_properties(tts: Pair, stt: Pair) -> None:
    lm = tts.lm
    assert (lm.n_q, lm.dep_q, lm.card, lm.text_card, lm.num_codebooks) == (8, 8, 64, 50, 9)
    assert lm.delays == (0, 0, 2, 2, 2, 2, 2, 2, 2) and lm.max_delay == 2
    assert (lm.initial_token_id, lm.text_initial_token_id) == (64, 50)
    assert (lm.zero_token_id, lm.ungenerated_token_id) == (-1, -2)
    assert (lm.text_padding_token_id, lm.end_of_text_padding_id) == (3, 0)
    assert stt.lm.depformer is None and stt.lm.dep_q == 0 and len(stt.lm.depformer_in) == 0
    assert lm.depformer is not None and lm.depformer.streaming_detached


# -- streaming ---------------------------------------------------------------------------------


def test_forward_text_streaming_equals_teacher_forced(stt: Pair) -> None:
    """T = 13 steps with context 8: the ring KV cache wraps."""
    lm, B, T = stt.lm, 2, 13
    codes = _codes(lm, B, T, seed=3)
    out = lm(codes)
    inputs = _step_inputs(lm, _delayed(lm, codes))
    steps = []
    with streaming(lm, B):
        for s in range(T):
            logits, hidden = lm.forward_text(inputs[:, :, s : s + 1])
            assert hidden.shape == (B, 1, lm.dim)
            steps.append(logits)
    err = _rel(torch.cat(steps, dim=1), out.text_logits[:, 0])
    print(f"stt-like streaming text: {err:.2e}")
    assert err < STREAM_RTOL


def test_streaming_slot_equals_same_input_alone(tts: Pair) -> None:
    """Row 1 of a conditioned batch of 3 gives the logits it gets when run alone."""
    lm, B, T = tts.lm, 3, 5
    codes = _codes(lm, B, T, seed=8, demux=True)
    inputs = _step_inputs(lm, _delayed(lm, codes))
    text, tensors = _tts_inputs(B)
    full = lm.make_conditions(text, tensors, B)
    one = lm.make_conditions(
        {k: v[1:2] for k, v in text.items()},
        {k: (t[1:2], m[1:2]) for k, (t, m) in tensors.items()},
        1,
    )
    outs = []
    for rows, cond in ((slice(None), full), (slice(1, 2), one)):
        steps = []
        with streaming(lm, inputs[rows].shape[0]):
            for s in range(T):
                logits, _ = lm.forward_text(
                    inputs[rows, :, s : s + 1], sum_condition=cond.sum, cross_src=cond.cross
                )
                steps.append(logits)
        outs.append(torch.cat(steps, dim=1))
    assert _rel(outs[0][1:2], outs[1]) < STREAM_RTOL


@pytest.mark.parametrize("which", ["tts", "tiny"])
def test_depformer_steps_equal_teacher_forced(which: str, request: pytest.FixtureRequest) -> None:
    """Text logits per step and audio logits per codebook, under streaming, vs ``lm(codes)``."""
    pair: Pair = request.getfixturevalue(which)
    lm, B, T = pair.lm, 3, 7
    codes = _codes(lm, B, T, seed=4, demux=lm.config.demux_second_stream)
    conditions = None
    sum_condition = cross = None
    if lm.condition_provider is not None:
        text, tensors = _tts_inputs(B)
        conditions = lm.make_conditions(text, tensors, B)
        sum_condition, cross = conditions.sum, conditions.cross
    out = lm(codes, conditions)
    assert out.audio_logits is not None
    delayed = _delayed(lm, codes)
    inputs = _step_inputs(lm, delayed)
    text_err = audio_err = 0.0
    assert lm.depformer is not None
    with streaming(lm, B), streaming(lm.depformer, B) as depformer:
        for s in range(T):
            logits, hidden = lm.forward_text(
                inputs[:, :, s : s + 1], sum_condition=sum_condition, cross_src=cross
            )
            if s - lm.delays[0] >= 0:
                text_err = max(text_err, _rel(logits[:, 0], out.text_logits[:, 0, s]))
            depformer.reset()
            prev = delayed[:, 0, s]
            for c in range(lm.dep_q):
                audio = lm.depformer_step(c, hidden[:, 0], prev)
                assert audio.shape == (B, lm.card)
                t = s - lm.delays[1 + c]
                if t >= 0:
                    audio_err = max(audio_err, _rel(audio, out.audio_logits[:, c, t]))
                prev = delayed[:, 1 + c, s]
    print(f"{which} streaming: text {text_err:.2e}, audio {audio_err:.2e}")
    assert text_err < STREAM_RTOL and audio_err < STREAM_RTOL


def test_depformer_step_checks_its_stream(tts: Pair) -> None:
    lm = tts.lm
    hidden, token = torch.zeros(1, lm.dim), torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="streaming"):
        lm.depformer_step(0, hidden, token)
    assert lm.depformer is not None
    with streaming(lm.depformer, 1), pytest.raises(RuntimeError, match="step 1"):
        lm.depformer_step(1, hidden, token)


def test_bad_kernel_environment_is_an_error_at_load(
    stt: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSM_CPU_MATMUL", "fastest")
    with pytest.raises(ValueError, match="DSM_CPU_MATMUL must be one of auto, onednn, mkl"):
        load_lm(stt.dir)
    monkeypatch.setenv("DSM_CPU_MATMUL", "mkl")
    monkeypatch.setenv("DSM_CPU_PACK", "0")
    lm = load_lm(stt.dir)
    kernels = {(m.kernels.matmul, m.kernels.pack) for m in lm.modules() if isinstance(m, Linear)}
    assert kernels == {("mkl", False)}


def test_real_width_float32_packed_projections_match_reference() -> None:
    """At the published width (here D=1024, one layer) the default ``auto`` policy sends every
    float32 projection to oneDNN through packed weights: teacher-forced and streaming text
    logits stay within float32 rounding of the reference (which multiplies with MKL)."""
    from dsm.models.lm_loading import load_lm_state
    from dsm.nn import linear as lin
    from dsm.nn import packed_weight_bytes, set_cpu_kernels

    raw = dict(STT_LIKE, dim=1024, num_heads=8, num_layers=1, n_q=4, delays=[0] * 5)
    ref = make_reference_lm(raw, seed=5)
    lm = LMModel(parse_config(raw).lm, device="meta")
    load_lm_state(lm, ref.state_dict()).eval()
    B, T = 2, 11
    inputs = _step_inputs(lm, _codes(lm, B, T, seed=8))
    with _no_compile():
        _, want = ref.forward_text(inputs)
    want = want[:, 0]
    kernels = set_cpu_kernels(lm, "auto")
    offline = lm.forward_text(inputs)[0]
    with streaming(lm, B):
        steps = [lm.forward_text(inputs[:, :, s : s + 1])[0] for s in range(T)]
    packed = packed_weight_bytes(lm)
    if lin.ONEDNN_AVAILABLE and kernels.pack:
        # in_proj, out_proj, linear_in, linear_out: every projection of the layer is packed.
        layer = sum(p.numel() for n, p in lm.transformer.named_parameters() if "norm" not in n)
        assert packed >= 4 * layer
    offline_err, stream_err = _rel(offline, want), _rel(torch.cat(steps, dim=1), want)
    print(f"D=1024 packed float32: teacher-forced {offline_err:.2e}, streaming {stream_err:.2e}")
    assert offline_err < PARITY_RTOL and stream_err < PARITY_RTOL


def test_bfloat16_packed_weights_on_cpu(stt: Pair) -> None:
    """bfloat16 on CPU runs the packed-weight projections: the streaming logits stay as close to
    the float32 model's as with plain ``F.linear`` (``mkl`` mode), and within bfloat16 rounding."""
    from dsm.nn import linear as lin
    from dsm.nn import packed_weight_bytes, set_cpu_kernels

    B, T = 2, 13
    lm16 = load_lm(stt.dir, dtype=torch.bfloat16)
    set_cpu_kernels(lm16, "auto", pack=True)
    codes = _codes(stt.lm, B, T, seed=7)
    inputs = _step_inputs(lm16, _delayed(lm16, codes))
    want = stt.lm(codes).text_logits[:, 0]

    def run() -> torch.Tensor:
        steps = []
        with streaming(lm16, B):
            for s in range(T):
                steps.append(lm16.forward_text(inputs[:, :, s : s + 1])[0].float())
        return torch.cat(steps, dim=1)

    packed = run()
    if lin.bf16_packing_available():
        assert packed_weight_bytes(lm16), "no bfloat16 projection went through the packed path"
    set_cpu_kernels(lm16, "mkl")
    assert packed_weight_bytes(lm16) == 0
    plain = run()
    err_packed, err_plain = _rel(packed, want), _rel(plain, want)
    print(f"bf16 vs f32 text logits: packed {err_packed:.2e}, F.linear {err_plain:.2e}")
    assert err_packed < 5e-2
    assert err_packed <= 1.5 * err_plain + 1e-3


# -- loading -----------------------------------------------------------------------------------


def test_load_lm_from_directory_and_dtype_rule(tts: Pair) -> None:
    lm = load_lm(tts.dir, dtype=torch.bfloat16)
    assert not lm.training
    for name, param in lm.state_dict().items():
        want = torch.float32 if name.startswith("condition_provider.") else torch.bfloat16
        assert param.dtype == want, name
    assert load_lm(tts.dir).dtype == torch.float32  # CPU default


def test_reference_split_layout_loads(tiny: Pair, tmp_path: Path) -> None:
    """The reference's in-memory keys (``in_projs.{i}.weight``) are fused on load."""
    state = {k: v.contiguous() for k, v in tiny.ref.state_dict().items()}
    assert any(".in_projs.1." in k for k in state)
    fused = fuse_split_projections(state)
    assert "depformer.layers.0.self_attn.in_proj_weight" in fused
    assert fused["depformer.layers.0.self_attn.in_proj_weight"].shape == (96, 16)
    path = tmp_path / "split.safetensors"
    save_file(state, str(path))
    lm = load_lm_from_files(tiny.config, path)
    codes = _codes(lm, 1, 5, seed=6)
    assert torch.equal(lm(codes).text_logits, tiny.lm(codes).text_logits)


def test_strict_load_lists_every_bad_key(tiny: Pair, tmp_path: Path) -> None:
    state = load_file(tiny.dir / "model.safetensors")
    del state["emb.1.weight"]
    del state["linears.2.weight"]
    state["extra_heads.0.weight"] = torch.zeros(6, 16)
    state["text_linear.weight"] = torch.zeros(47, 16)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError) as info:
        load_lm_from_files(tiny.config, path)
    message = str(info.value)
    print(message)
    for needle in (
        "emb.1.weight",
        "linears.2.weight",
        "extra_heads.0.weight",
        "text_linear.weight: checkpoint [47, 16] vs model [48, 16]",
        "2 key(s) missing",
        "1 key(s) unexpected",
        "same checkpoint",
    ):
        assert needle in message


def test_weights_of_another_config_are_rejected(stt: Pair, tts: Pair) -> None:
    with pytest.raises(WeightsError, match="missing"):
        load_lm_from_files(tts.config, stt.dir / "model.safetensors")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="delays"):
        parse_config({**TINY, "delays": [0, 1]})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({**TINY, "dimm": 16})
    with pytest.raises(ConfigError, match="positional_embedding"):
        parse_config({**TINY, "positional_embedding": "sin_rope"})
    bad = dict(TTS_LIKE)
    bad.pop("fuser")
    with pytest.raises(ConfigError):
        parse_config(bad)
    with pytest.raises(ConfigError, match="cannot build"):
        # Per-step depformer weights need a gated FFN.
        load_lm_from_files(
            parse_config({**TINY, "depformer_gating": "none"}), ASSETS / "test_lm_model.safetensors"
        )
    (tmp_path / "config.json").write_text(json.dumps({**STT_LIKE, "n_q": "32"}))
    with pytest.raises(ConfigError, match="n_q"):
        load_lm(tmp_path)


def test_meta_construction_and_random_init() -> None:
    """A model can be built for real (random init) or on meta (no memory)."""
    config = parse_config(TTS_LIKE).lm
    meta = LMModel(config, device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta for p in meta.parameters())
    real = LMModel(config, dtype=torch.bfloat16)
    assert real.dtype == torch.bfloat16
    assert real.condition_provider is not None
    assert all(p.dtype == torch.float32 for p in real.condition_provider.parameters())
    ref_keys = set(make_reference_lm(TTS_LIKE).state_dict())
    assert set(fuse_split_projections(dict.fromkeys(ref_keys, torch.zeros(1)))) == set(
        real.state_dict()
    )
