"""Voice learning recovers a voice: codes drawn from the tiny TTS model speaking with a known
embedding V* teach an embedding started at another one, V0, until its teacher-forced loss on
held-out utterances of V* is much closer to V*'s than V0's. The voice file written loads in dsm
and in the reference ``TTSModel``, in the voice repo's format."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from dsm.checkpoint.config import ModelId
from dsm.train.tts_target import target_from_generation
from dsm.train.voice import learn_voice, save_voice, voice_loss
from dsm.tts.voices import load_voice_embedding
from tests.helpers.reference_tts import VOICE_FRAMES, ReferenceTts, reference_model
from tests.helpers.threads import one_thread  # noqa: F401 - autouse fixture
from tests.helpers.tts_codes import generate_frames

TRAIN = [
    "Hello world, the fox jumps.",
    "The dog sleeps under a tree today.",
    "What a day. Yes, of course.",
    "The quick brown fox jumps over the lazy dog.",
]
HELD_OUT = ["Yes, no, maybe; of course.", "The fox and the dog."]
SCALE = 3.0  # embeddings far enough apart for the tiny random model to tell them apart


@pytest.fixture(scope="module")
def voices(ref_tts: ReferenceTts) -> tuple[torch.Tensor, torch.Tensor]:
    dim = ref_tts.config["conditioners"]["speaker_wavs"]["tensor"]["dim"]
    gen = torch.Generator().manual_seed(1)
    v_star = SCALE * torch.randn(1, dim, VOICE_FRAMES, generator=gen)
    v_zero = SCALE * torch.randn(1, dim, VOICE_FRAMES, generator=gen)
    return v_star, v_zero


def test_learning_recovers_the_voice(frozen_tts, voices, ref_tts: ReferenceTts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v_star, v_zero = voices
    texts = TRAIN + HELD_OUT
    # Draws of the model itself (temperature 1, no top-k): V* is their best explanation.
    frames = generate_frames(
        frozen_tts, texts, v_star, cfg=1.0, temperature=1.0, seed=0, exact=True
    )
    targets = [target_from_generation(frozen_tts, t, f) for t, f in zip(texts, frames, strict=True)]
    train, held = targets[: len(TRAIN)], targets[len(TRAIN) :]
    loss_star = voice_loss(frozen_tts, held, v_star)
    loss_zero = voice_loss(frozen_tts, held, v_zero)
    fit = learn_voice(frozen_tts, train, v_zero, steps=24, lr=0.1 * SCALE)
    loss_fit = voice_loss(frozen_tts, held, fit.voice)
    share = (loss_fit - loss_star) / (loss_zero - loss_star)
    print(
        f"held-out loss: V* {loss_star:.3f}, V0 {loss_zero:.3f}, learnt {loss_fit:.3f} "
        f"({share:.0%} of the V0 gap left); train loss {fit.losses[0]:.3f} -> {fit.losses[-1]:.3f}"
    )
    assert loss_zero - loss_star > 1.0  # the test can tell the voices apart
    assert share < 0.5
    assert fit.losses[-1] < fit.losses[0]
    # The fast variant: the audio loss on the semantic codebook only (the depformer's first
    # step), judged on the full held-out loss.
    fast = learn_voice(frozen_tts, train, v_zero, steps=24, lr=0.1 * SCALE, codebooks=1)
    share_fast = (voice_loss(frozen_tts, held, fast.voice) - loss_star) / (loss_zero - loss_star)
    print(f"semantic codebook only: {share_fast:.0%} of the V0 gap left")
    assert share_fast < 0.5

    # The file: the repo format, loadable by dsm and by the reference.
    model_id = ModelId(**ref_tts.config["model_id"])
    path = save_voice(tmp_path / "learnt.safetensors", fit.voice, model_id)
    with safe_open(str(path), "pt") as mine, safe_open(str(ref_tts.voice_path()), "pt") as repo:
        assert list(mine.keys()) == list(repo.keys()) == ["speaker_wavs"]
        assert mine.metadata() == repo.metadata()
        a, b = mine.get_tensor("speaker_wavs"), repo.get_tensor("speaker_wavs")
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    loaded = load_voice_embedding(path, model_id=model_id, dim=v_star.shape[1])
    assert torch.equal(loaded, fit.voice)
    rows = frozen_tts.conditions([path], 1.0)  # as `dsm synthesize --voice FILE` does
    assert rows.cross is not None
    ref = reference_model(ref_tts)
    attributes = ref.make_condition_attributes([path], cfg_coef=1.0)
    with torch.no_grad():
        provided = ref.lm.condition_provider.prepare_and_provide([attributes])
        fused = ref.lm.fuser.get_cross(provided)
    assert fused is not None
    torch.testing.assert_close(fused, rows.cross, rtol=1e-5, atol=1e-5)
