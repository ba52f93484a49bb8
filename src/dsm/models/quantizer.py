"""Split residual vector quantizer of Mimi (spec §3.6).

Module and buffer names equal the published keys:
``quantizer.rvq_first.vq.layers.{l}._codebook.{_initialized,cluster_usage,embedding_sum}``,
``quantizer.rvq_{first,rest}.{input_proj,output_proj}.weight``.

Centroids are ``embedding_sum / clamp(cluster_usage, 1e-5)``. They are derived once, when the
weights are loaded or the module is moved (``_apply``), never per call.

Nearest neighbour. The reference picks ``argmin(torch.cdist(x, E))``. With 2048 centroids
``cdist`` always takes its matrix-product path: ``sqrt(clamp([-2x, |x|^2, 1] @ [E, 1, |E|^2]^T,
1e-30))``. Near-ties between two centroids are decided by the rounding of that product, so this
module computes the same augmented product (the centroid side ``[E, 1, |E|^2]`` precomputed,
the query side built per call with the same memory layout as the reference) and takes the
first minimum. ``tests/models/test_mimi.py`` measures the agreement.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Codebook", "ResidualVectorQuantizer", "SplitResidualVectorQuantizer"]

CLUSTER_USAGE_EPS = 1e-5  # floor of cluster_usage when turning sums into centroids


class Codebook(nn.Module):
    """One codebook level: ``[codebook_size, dim]`` centroids and nearest-centroid search."""

    augmented: torch.Tensor
    _initialized: torch.Tensor
    cluster_usage: torch.Tensor
    embedding_sum: torch.Tensor

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        # Training-time EMA statistics, kept only because the checkpoint stores them.
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(codebook_size))
        self.register_buffer("embedding_sum", torch.zeros(codebook_size, dim))
        # [E, 1, |E|^2] per row: the centroid operand of the distance product.
        self.register_buffer("augmented", torch.zeros(codebook_size, dim + 2), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.refresh()

    @property
    def centroids(self) -> torch.Tensor:
        """``[codebook_size, dim]`` (a strided view into the precomputed operand)."""
        return self.augmented[:, : self.dim]

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the centroids from ``embedding_sum`` and ``cluster_usage``."""
        usage = self.cluster_usage.clamp(min=CLUSTER_USAGE_EPS)
        centroids = self.embedding_sum / usage[:, None]
        squared_norms = centroids.pow(2).sum(-1, keepdim=True)
        self.augmented = torch.cat(
            [centroids, torch.ones_like(squared_norms), squared_norms], dim=-1
        )

    def _apply(self, fn: Any, recurse: bool = True) -> Codebook:
        # Moving or casting the module recomputes the centroids where they now live, so the
        # distance operand is rounded exactly as the reference computes it on that device.
        super()._apply(fn, recurse)
        self.refresh()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest centroid of each row: ``[N, dim]`` -> ``[N]`` int64."""
        squared_norms = x.pow(2).sum(-1, keepdim=True)
        query = torch.cat([x.mul(-2), squared_norms, torch.ones_like(squared_norms)], dim=-1)
        # Batched [1, N, dim + 2] @ [1, dim + 2, bins], as in the reference's cdist call.
        distances = torch.matmul(query[None], self.augmented[None].mT)[0]
        distances.clamp_min_(1e-30).sqrt_()
        return distances.argmin(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Centroids of ``codes`` ``[...]`` -> ``[..., dim]``."""
        return F.embedding(codes, self.centroids)


def _refresh_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, Codebook)
    module.refresh()


class VectorQuantization(nn.Module):
    """Holder of one :class:`Codebook` (checkpoint naming level ``layers.{l}._codebook``)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = Codebook(dim, codebook_size)


class ResidualVectorQuantization(nn.Module):
    """The codebook levels of one residual quantizer (``vq.layers``)."""

    def __init__(self, dim: int, codebook_size: int, num_levels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [VectorQuantization(dim, codebook_size) for _ in range(num_levels)]
        )

    def codebooks(self) -> list[Codebook]:
        """The levels' codebooks, in order."""
        codebooks = []
        for layer in self.layers:
            assert isinstance(layer, VectorQuantization)
            codebooks.append(layer._codebook)
        return codebooks


class ResidualVectorQuantizer(nn.Module):
    """Projection in, residual VQ over ``n_q`` levels, projection out."""

    def __init__(
        self,
        dimension: int,
        input_dimension: int,
        output_dimension: int,
        num_levels: int,
        codebook_size: int,
    ) -> None:
        super().__init__()
        self.dimension = dimension
        self.max_levels = num_levels
        self.num_levels = num_levels
        self.input_proj = nn.Conv1d(input_dimension, dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(dimension, output_dimension, 1, bias=False)
        self.vq = ResidualVectorQuantization(dimension, codebook_size, num_levels)
        self._codebooks = self.vq.codebooks()

    def encode(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, input_dimension, T]`` -> codes ``[B, num_levels, T]`` int64."""
        B, _, T = latent.shape
        residual = self.input_proj(latent)  # [B, D, T]
        D = self.dimension
        codes = []
        for codebook in self._codebooks[: self.num_levels]:
            # Same [B*T, D] layout as the reference's rearrange (a view when B == 1).
            level_codes = codebook.encode(residual.transpose(1, 2).reshape(-1, D))
            level_codes = level_codes.view(B, T)
            residual = residual - codebook.decode(level_codes).transpose(1, 2)
            codes.append(level_codes)
        return torch.stack(codes, dim=1)

    def decode_sum(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the centroids of ``codes`` ``[B, K, T]`` -> ``[B, T, D]`` (before projection)."""
        total = self._codebooks[0].decode(codes[:, 0])
        for level in range(1, codes.shape[1]):
            total = total + self._codebooks[level].decode(codes[:, level])
        return total

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (K <= max levels) -> ``[B, output_dimension, T]``."""
        return self.output_proj(self.decode_sum(codes).transpose(1, 2))


class SplitResidualVectorQuantizer(nn.Module):
    """Mimi's quantizer: ``rvq_first`` (semantic levels) and ``rvq_rest`` (acoustic levels).

    Both read the same latent through their own input projection; decoding adds both outputs.
    """

    def __init__(
        self,
        dimension: int = 256,
        input_dimension: int = 512,
        output_dimension: int = 512,
        num_codebooks: int = 32,
        num_semantic: int = 1,
        codebook_size: int = 2048,
    ) -> None:
        super().__init__()
        if not 0 < num_semantic < num_codebooks:
            raise ValueError(
                f"num_semantic ({num_semantic}) must be in [1, num_codebooks={num_codebooks})"
            )
        self.codebook_size = codebook_size
        self.total_codebooks = num_codebooks
        self.num_semantic = num_semantic
        self.rvq_first = ResidualVectorQuantizer(
            dimension, input_dimension, output_dimension, num_semantic, codebook_size
        )
        self.rvq_rest = ResidualVectorQuantizer(
            dimension,
            input_dimension,
            output_dimension,
            num_codebooks - num_semantic,
            codebook_size,
        )

    @property
    def num_codebooks(self) -> int:
        """Codebooks produced by :meth:`encode`."""
        return self.num_semantic + self.rvq_rest.num_levels

    def set_num_codebooks(self, num_codebooks: int) -> None:
        """Use the first ``num_codebooks`` levels (``num_semantic`` .. ``total_codebooks``)."""
        if not self.num_semantic <= num_codebooks <= self.total_codebooks:
            raise ValueError(
                f"num_codebooks must be in [{self.num_semantic}, {self.total_codebooks}], "
                f"got {num_codebooks}"
            )
        self.rvq_rest.num_levels = num_codebooks - self.num_semantic

    def encode(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, input_dimension, T]`` -> codes ``[B, num_codebooks, T]`` int64."""
        codes = self.rvq_first.encode(latent)
        if self.rvq_rest.num_levels > 0:
            codes = torch.cat([codes, self.rvq_rest.encode(latent)], dim=1)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (``1 <= K <= total_codebooks``) -> ``[B, output_dimension, T]``."""
        S = self.num_semantic
        latent = self.rvq_first.decode(codes[:, :S])
        if codes.shape[1] > S:
            latent = latent + self.rvq_rest.decode(codes[:, S:])
        return latent
