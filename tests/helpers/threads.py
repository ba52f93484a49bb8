"""One torch thread for tests that train tiny models: they run much faster on one thread than
on two busy ones. Import the fixture into a test module to apply it to every test there, or
use the context manager around one block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block, the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield
