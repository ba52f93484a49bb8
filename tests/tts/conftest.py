"""A tiny TTS checkpoint built by the reference, shared by the TTS tests."""

from __future__ import annotations

import pytest

from tests.helpers.reference_tts import ReferenceTts, make_reference_tts_dir


@pytest.fixture(scope="session")
def ref_tts(tmp_path_factory: pytest.TempPathFactory) -> ReferenceTts:
    return make_reference_tts_dir(tmp_path_factory.mktemp("tts"))


@pytest.fixture(scope="session")
def tts(ref_tts: ReferenceTts):  # type: ignore[no-untyped-def]
    from dsm.tts.model import load_tts

    return load_tts(ref_tts.directory, voice_repo=ref_tts.voice_dir, device="cpu")


@pytest.fixture(scope="session")
def frozen_tts(ref_tts: ReferenceTts):  # type: ignore[no-untyped-def]
    """The tiny TTS model frozen for training (plain weights, no parameter gradients)."""
    from dsm.train.tts_target import freeze
    from dsm.tts.model import load_tts

    return freeze(load_tts(ref_tts.directory, voice_repo=ref_tts.voice_dir, device="cpu"))
