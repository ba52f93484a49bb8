"""Test-wide settings and the shared tiny checkpoints (built once per session).

The reference (moshi) must not torch.compile on CPU: it is slow there and not exact.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("NO_CUDA_GRAPH", "1")
os.environ.setdefault("DSM_NO_CUDA_GRAPH", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm.nn import packed_weight_bytes, set_cpu_kernels
from dsm.nn.linear import ONEDNN_AVAILABLE, cpu_kernels_from_env
from tests.helpers.cpu_kernels import CpuMatmul
from tests.helpers.reference_stt import (
    ReferenceStt,
    make_reference_stt_dir,
    stt_config,
)


@pytest.fixture(scope="session")
def ref_stt(tmp_path_factory: pytest.TempPathFactory) -> ReferenceStt:
    """A tiny STT checkpoint (4 VAD heads) built by the reference; context 12 steps (< 1 s),
    so every test input runs past the attention window."""
    return make_reference_stt_dir(tmp_path_factory.mktemp("stt"), stt_config(context=12))


@pytest.fixture(scope="session")
def stt_dir(ref_stt: ReferenceStt) -> Path:
    return ref_stt.directory


@pytest.fixture(params=["mkl", "onednn"])
def cpu_matmul(request: pytest.FixtureRequest) -> Iterator[CpuMatmul]:
    """Run a test under each float32 CPU matmul kernel of :mod:`dsm.nn.linear`; the test calls
    the fixture on the models it runs (``cpu_matmul(lm)``).

    The default ``auto`` policy only sends weights of 2M+ elements to oneDNN, which the tiny
    test models never reach; ``onednn`` sends every projection there (multiplying packed copies
    of the parameters), so the parity tests that use this fixture also cover the kernel that the
    real checkpoints run on.
    """
    kernels = CpuMatmul(request.param)
    try:
        yield kernels
        assert kernels.models, "the test did not set its models' kernels"
        if request.param == "onednn" and ONEDNN_AVAILABLE and cpu_kernels_from_env()[1]:
            # The models' projections are parameters: they ran on packed copies, as real ones do.
            packed = sum(packed_weight_bytes(m) for m in kernels.models)
            assert packed > 0, "no projection went through a packed weight"
    finally:
        for model in kernels.models:
            set_cpu_kernels(model)  # back to the loaders' default
