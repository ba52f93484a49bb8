"""The TTS training target lines up with generation: on codes the tiny TTS model generated
greedily, the teacher-forced greedy predictions are its own choices (every audio code, and the
text action wherever the model's choice counts), which checks the delays, the text stream and
the conditions of :mod:`dsm.train.tts_target`."""

from __future__ import annotations

import pytest
import torch

from dsm.stt.words import Word
from dsm.train.tts_target import (
    IGNORE,
    build_target,
    target_from_generation,
    training_conditions,
    tts_loss,
)
from dsm.tts.entries import NEW_WORD_TOKEN, PAD_TOKEN
from dsm.tts.voices import load_voice_embedding
from tests.helpers.reference_tts import ReferenceTts
from tests.helpers.threads import one_thread  # noqa: F401 - autouse fixture
from tests.helpers.tts_codes import generate_frames

TEXT = "Hello world, the fox jumps over the dog."
CFG = 2.0


@pytest.fixture(scope="module")
def voice(ref_tts: ReferenceTts) -> torch.Tensor:
    return load_voice_embedding(ref_tts.voice_path(), model_id=None)


@pytest.fixture(scope="module")
def frozen(frozen_tts):  # type: ignore[no-untyped-def]
    return frozen_tts


@pytest.fixture(scope="module")
def frames(frozen, voice) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A greedy generation at cfg 2 (the cfg with free NEW_WORD choices in this tiny model)."""
    return generate_frames(frozen, [TEXT], voice, cfg=CFG, temperature=0.0, seed=0)[0]


def test_teacher_forced_greedy_reproduces_generation(frozen, voice, frames) -> None:  # type: ignore[no-untyped-def]
    cfg = CFG
    target = target_from_generation(frozen, TEXT, frames)
    assert [w for w, _ in target.words] == TEXT.split()
    codes = target.codes[None]
    with torch.no_grad():
        out = frozen.lm(codes, training_conditions(frozen, voice, 1, cfg))
    assert out.audio_logits is not None and out.audio_mask is not None
    audio = codes[:, 1:]
    valid = out.audio_mask
    assert int(valid.sum()) >= 8 * 20  # every codebook of 20+ frames is a target
    predicted = out.audio_logits.argmax(-1)
    agree = (predicted == audio)[valid].float().mean().item()
    print(f"cfg {cfg}: audio argmax = generated code at {agree:.4f} of {int(valid.sum())}")
    assert agree == 1.0
    text_valid = target.text_target != IGNORE
    assert int(text_valid.sum()) >= 5
    # The machine reads any sampled id but NEW_WORD as PAD: compare decisions.
    text_pred = out.text_logits[0, 0].argmax(-1)
    decision = torch.where(text_pred == NEW_WORD_TOKEN, NEW_WORD_TOKEN, PAD_TOKEN)
    print(
        f"text targets: {int(text_valid.sum())}, NEW_WORD among them: "
        f"{int((target.text_target == NEW_WORD_TOKEN).sum())}"
    )
    assert torch.equal(decision[text_valid], target.text_target[text_valid])
    # A wrong condition (another cfg value) changes the predictions: the condition counts.
    other = 3.0 if cfg != 3.0 else 1.0
    with torch.no_grad():
        out2 = frozen.lm(codes, training_conditions(frozen, voice, 1, other))
    assert out2.audio_logits is not None
    assert (out2.audio_logits.argmax(-1) != audio)[valid].any()


def test_recording_target_from_timed_words(frozen, frames) -> None:  # type: ignore[no-untyped-def]
    """Words timed as the model said them give back the generated text stream and targets."""
    generated = target_from_generation(frozen, TEXT, frames)
    steps = [s for _, s in generated.words]
    delay = frozen.delay_steps
    end_step = len(frames[0]) - delay  # past the generation's end: no end marker asked
    words = [
        Word(text, s / 12.5, (steps[i + 1] if i + 1 < len(steps) else end_step) / 12.5)
        for i, (text, s) in enumerate(generated.words)
    ]
    audio = frames[1:, delay:]
    rebuilt = build_target(frozen, audio, words, end=_end_seconds(frames, frozen))
    assert rebuilt.words == generated.words
    assert torch.equal(rebuilt.codes, generated.codes)
    assert torch.equal(rebuilt.text_target, generated.text_target)


def _end_seconds(frames: torch.Tensor, tts) -> float:  # type: ignore[no-untyped-def]
    card = tts.machine.card
    stream = frames[0].tolist()
    markers = [i for i, tok in enumerate(stream) if tok // card - 1 == 0]
    return markers[-1] / 12.5  # the last marker is the end


def test_loss_is_finite_and_differentiable_in_the_voice(frozen, voice, frames) -> None:  # type: ignore[no-untyped-def]
    target = target_from_generation(frozen, TEXT, frames)
    learnt = voice.clone().requires_grad_(True)
    loss = tts_loss(
        frozen,
        target.codes[None],
        target.text_target[None],
        training_conditions(frozen, learnt, 1, CFG),
    )
    loss.total.backward()
    assert torch.isfinite(loss.total) and loss.text > 0 and loss.audio > 0
    assert learnt.grad is not None and learnt.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.lm.parameters())


def test_fewer_depformer_steps_give_the_first_codebooks(frozen, voice, frames) -> None:  # type: ignore[no-untyped-def]
    """The depformer is causal over codebooks: running its first steps only gives the same
    logits for them (what ``codebooks=`` of the loss relies on)."""
    target = target_from_generation(frozen, TEXT, frames)
    conditions = training_conditions(frozen, voice, 1, CFG)
    with torch.no_grad():
        full = frozen.lm(target.codes[None], conditions)
        first = frozen.lm(target.codes[None], conditions, 2)
    assert full.audio_logits is not None and first.audio_logits is not None
    assert first.audio_logits.shape[1] == 2 and first.audio_mask is not None
    torch.testing.assert_close(
        first.audio_logits.nan_to_num(), full.audio_logits[:, :2].nan_to_num(), rtol=1e-5, atol=1e-5
    )
    assert full.audio_mask is not None and torch.equal(first.audio_mask, full.audio_mask[:, :2])
