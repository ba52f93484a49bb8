"""A tiny STT checkpoint built by the reference, shared by the STT tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.reference_stt import ReferenceStt, make_reference_stt_dir, stt_config


@pytest.fixture(scope="session")
def ref_stt(tmp_path_factory: pytest.TempPathFactory) -> ReferenceStt:
    """Context 12 steps (< 1 s): every test input runs past the attention window."""
    return make_reference_stt_dir(tmp_path_factory.mktemp("stt"), stt_config(context=12))


@pytest.fixture(scope="session")
def stt_dir(ref_stt: ReferenceStt) -> Path:
    return ref_stt.directory
