"""SEANet convolutional encoder and decoder of Mimi (spec §3.2).

Layouts and indices equal the published checkpoint (``encoder.model.{i}``, ``decoder.model.{i}``,
residual convs at ``block.1`` and ``block.3``). Convolutions are causal and streaming
(:mod:`dsm.nn.conv`); ELU activations have no parameters. Weight norm was folded into the
weights before export, so the convs are plain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dsm.nn.conv import StreamingConv1d, StreamingConvTranspose1d

__all__ = ["SEANetConfig", "SEANetDecoder", "SEANetEncoder", "SEANetResBlock"]


@dataclass(frozen=True)
class SEANetConfig:
    """SEANet hyper-parameters (defaults: the published Mimi, ``loaders._seanet_kwargs``)."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder order; the encoder uses them reversed
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    elu_alpha: float = 1.0

    @property
    def hop_length(self) -> int:
        """Samples per latent frame (960 for Mimi: 25 Hz at 24 kHz)."""
        hop = 1
        for ratio in self.ratios:
            hop *= ratio
        return hop


class SEANetResBlock(nn.Module):
    """``x + conv1x1(elu(conv_k(elu(x))))`` with a ``dim // compress`` bottleneck."""

    def __init__(
        self, dim: int, kernel_size: int, dilation: int, compress: int, elu_alpha: float
    ) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(
            nn.ELU(elu_alpha),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            nn.ELU(elu_alpha, inplace=True),
            StreamingConv1d(hidden, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``."""
        return self.block(x).add_(x)


def _dilations(config: SEANetConfig) -> Sequence[int]:
    return [config.dilation_base**j for j in range(config.n_residual_layers)]


class SEANetEncoder(nn.Module):
    """Waveform ``[B, channels, S]`` -> latent ``[B, dimension, S // hop_length]``.

    ``S`` must be a multiple of ``hop_length`` (every strided conv needs whole strides).
    """

    def __init__(self, config: SEANetConfig) -> None:
        super().__init__()
        self.config = config
        alpha = config.elu_alpha
        width = config.n_filters
        layers: list[nn.Module] = [StreamingConv1d(config.channels, width, config.kernel_size)]
        for ratio in reversed(config.ratios):
            for dilation in _dilations(config):
                layers.append(
                    SEANetResBlock(
                        width, config.residual_kernel_size, dilation, config.compress, alpha
                    )
                )
            layers.append(nn.ELU(alpha, inplace=True))
            layers.append(StreamingConv1d(width, 2 * width, 2 * ratio, stride=ratio))
            width *= 2
        layers.append(nn.ELU(alpha, inplace=True))
        layers.append(StreamingConv1d(width, config.dimension, config.last_kernel_size))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, channels, S]`` -> ``[B, dimension, S // hop_length]``."""
        return self.model(x)


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, T]`` -> waveform ``[B, channels, T * hop_length]``."""

    def __init__(self, config: SEANetConfig) -> None:
        super().__init__()
        self.config = config
        alpha = config.elu_alpha
        width = config.n_filters * 2 ** len(config.ratios)
        layers: list[nn.Module] = [StreamingConv1d(config.dimension, width, config.kernel_size)]
        for ratio in config.ratios:
            # The first ELU reads a conv output and the later ones a residual sum, so all can
            # work in place.
            layers.append(nn.ELU(alpha, inplace=True))
            layers.append(StreamingConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio))
            width //= 2
            for dilation in _dilations(config):
                layers.append(
                    SEANetResBlock(
                        width, config.residual_kernel_size, dilation, config.compress, alpha
                    )
                )
        layers.append(nn.ELU(alpha, inplace=True))
        layers.append(StreamingConv1d(width, config.channels, config.last_kernel_size))
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, dimension, T]`` -> ``[B, channels, T * hop_length]``."""
        return self.model(z)
