"""Fixtures of the fine-tuning tests: one thread for the tiny models, a tiny STT checkpoint with
a silence prefix that is not a whole number of frames, and the synthetic dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.reference_stt import ReferenceStt, make_reference_stt_dir, stt_config
from tests.helpers.threads import one_torch_thread
from tests.train.synthetic import write_dataset


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def prefixed_stt(tmp_path_factory: pytest.TempPathFactory) -> ReferenceStt:
    """A tiny STT checkpoint with stt-2.6b's 1 s silence prefix (12.5 frames: the input starts
    mid-frame) and a 0.5 s delay."""
    config = stt_config(context=12, delay=0.5, prefix=1.0)
    return make_reference_stt_dir(tmp_path_factory.mktemp("stt_prefix"), config)


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"))
