"""A randomly initialised reference Mimi (moshi 0.2.13), saved in the published key layout.

The reference's own init leaves every codebook at zero (``embedding_sum`` zeros), which would
make all codes 0. :func:`randomize_codebooks` gives each level random non-zero centroids at the
scale of that level's residual, positive ``cluster_usage`` (a few entries at zero, so the
``clamp(1e-5)`` path is exercised) and ``_initialized = 1``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from moshi.models import compression, loaders

from tests.helpers.hub_layout import save_hub_safetensors

SAMPLE_RATE = 24000
FRAME_SIZE = 1920


def reference_config(context: int = 250) -> dict[str, Any]:
    """The published Mimi config (``loaders._mimi_config``) with the given transformer context."""
    config: dict[str, Any] = copy.deepcopy(loaders._mimi_config)
    config["transformer"]["context"] = context
    return config


def speech_like(seconds: float, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Synthetic voiced audio ``[batch, 1, S]``: gliding f0 with vibrato, harmonics shaped by
    moving formants, syllable-rate amplitude modulation, short noise bursts (fricatives)."""
    gen = torch.Generator().manual_seed(seed)
    S = int(seconds * SAMPLE_RATE)
    t = torch.arange(S, dtype=torch.float64) / SAMPLE_RATE
    out = []
    for _ in range(batch):
        f0_base = 90 + 120 * torch.rand(1, generator=gen, dtype=torch.float64)
        f0 = f0_base * (
            1 + 0.15 * torch.sin(2 * math.pi * 0.7 * t) + 0.01 * torch.sin(2 * math.pi * 5.5 * t)
        )
        phase = 2 * math.pi * torch.cumsum(f0, 0) / SAMPLE_RATE
        # Formants glide between vowel-like targets.
        f1 = 500 + 250 * torch.sin(2 * math.pi * 1.3 * t)
        f2 = 1500 + 600 * torch.sin(2 * math.pi * 0.9 * t + 1.0)
        f3 = 2600 + 200 * torch.sin(2 * math.pi * 0.5 * t + 2.0)
        signal = torch.zeros(S, dtype=torch.float64)
        for h in range(1, 60):
            freq = h * f0
            gain = sum(
                1.0 / (1.0 + ((freq - fc) / bw) ** 2)
                for fc, bw in ((f1, 90.0), (f2, 120.0), (f3, 160.0))
            )
            gain = gain * (freq < 11000) / h**0.5
            signal += gain * torch.sin(h * phase)
        envelope = 0.5 * (1 - torch.cos(2 * math.pi * 4.0 * t)) ** 1.5
        noise = torch.randn(S, generator=gen, dtype=torch.float64)
        bursts = (torch.sin(2 * math.pi * 1.1 * t + 0.3) > 0.93).double()
        signal = signal * envelope + 0.3 * noise * bursts
        signal = 0.3 * signal / signal.abs().max()
        out.append(signal.float())
    return torch.stack(out)[:, None, :]


@torch.no_grad()
def randomize_codebooks(model: Any, seed: int = 0) -> None:
    """Give every codebook level random centroids matched to its residual's scale.

    Level scales follow the residual of speech-like audio through the model itself, so codes
    are varied at every level (as with a trained codec) rather than stuck on one centroid.
    """
    gen = torch.Generator().manual_seed(seed)
    latent = model._encode_to_unquantized_latent(speech_like(2.0, seed=seed + 1))
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        residual = rvq.input_proj(latent).transpose(1, 2).reshape(-1, rvq.dimension)
        for layer in rvq.vq.layers:
            codebook = layer._codebook
            bins, dim = codebook.embedding_sum.shape
            mean = residual.mean(0)
            scale = 0.25 * (residual - mean).std().item()
            centroids = mean + scale * torch.randn(bins, dim, generator=gen)
            usage = 0.2 + 2 * torch.rand(bins, generator=gen)
            usage[torch.randperm(bins, generator=gen)[:4]] = 0.0  # exercises the clamp
            codebook.cluster_usage.copy_(usage)
            codebook.embedding_sum.copy_(centroids * usage[:, None])
            codebook._initialized.fill_(1.0)
            codebook.register_buffer("_embedding", None, persistent=False)
            codes = torch.cdist(residual[None], codebook.embedding[None])[0].argmin(-1)
            residual = residual - codebook.embedding[codes]


def build_reference_mimi(context: int = 250, seed: int = 0) -> compression.MimiModel:
    """A reference Mimi with random weights (published architecture), in eval mode on CPU."""
    torch.manual_seed(seed)
    model = loaders.get_mimi(None, reference_config(context), device="cpu", num_codebooks=32)
    model.eval()
    randomize_codebooks(model, seed)
    return model


def save_reference_mimi(model: Any, path: Path) -> Path:
    """Save ``model`` as a published-layout Mimi ``.safetensors`` (318 tensors)."""
    return save_hub_safetensors(model.state_dict(), path)
