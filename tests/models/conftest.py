"""Shared fixtures for the model tests: reference Mimi builds, saved in the published layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from dsm.mimi import MimiCodec, load_mimi
from dsm.models.mimi import MimiConfig, MimiTransformerConfig
from tests.helpers.reference_mimi import build_reference_mimi, save_reference_mimi

# Transformer context of the reduced config: streaming 0.8 s (20 latent frames) wraps its ring.
SHORT_CONTEXT = 6


@dataclass
class MimiPair:
    """A reference Mimi, its safetensors file and the dsm codec loaded from that file."""

    reference: Any  # moshi.models.compression.MimiModel
    path: Path
    codec: MimiCodec


def _pair(tmp_dir: Path, context: int, seed: int) -> MimiPair:
    torch.set_grad_enabled(False)
    try:
        reference = build_reference_mimi(context=context, seed=seed)
    finally:
        torch.set_grad_enabled(True)
    path = save_reference_mimi(reference, tmp_dir / f"mimi-ctx{context}.safetensors")
    config = MimiConfig(transformer=MimiTransformerConfig(context=context))
    codec = load_mimi(path, config=config)
    return MimiPair(reference, path, codec)


@pytest.fixture(scope="session")
def mimi_full(tmp_path_factory: pytest.TempPathFactory) -> MimiPair:
    """The published Mimi architecture (context 250), random weights, non-zero codebooks."""
    return _pair(tmp_path_factory.mktemp("mimi"), 250, seed=0)


@pytest.fixture(scope="session")
def mimi_short(tmp_path_factory: pytest.TempPathFactory) -> MimiPair:
    """Same architecture with a transformer context of SHORT_CONTEXT frames."""
    return _pair(tmp_path_factory.mktemp("mimi_short"), SHORT_CONTEXT, seed=1)
