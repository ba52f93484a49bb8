"""The Mimi network: SEANet + transformers + 25 -> 12.5 Hz resampling + split RVQ (spec §3).

Attribute names equal the published checkpoint keys, so a Mimi ``.safetensors`` (318 tensors)
loads strictly with no key map:

* ``encoder.model.{i}...`` / ``decoder.model.{i}...``: :mod:`dsm.models.seanet`;
* ``encoder_transformer.transformer.layers.{l}...`` (and ``decoder_transformer``);
* ``downsample.conv.conv.conv.weight`` / ``upsample.convtr.convtr.convtr.weight``;
* ``quantizer.rvq_{first,rest}...``: :mod:`dsm.models.quantizer`.

Streaming. The encoding path (``encoder``, ``encoder_transformer``, ``downsample``) and the
decoding path (``upsample``, ``decoder_transformer``, ``decoder``) share no state, so each has
its own module tree: :attr:`MimiModel.encoder_side` and :attr:`MimiModel.decoder_side`.
``streaming(model.encoder_side, B)`` and ``streaming(model.decoder_side, B2)`` can be open at the
same time with different batch sizes, exec masks and resets (a server encodes the users' audio
and decodes the generated audio of other slots). ``streaming(model, B)`` streams both with one
exec mask. The quantizer is stateless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from dsm.models.quantizer import SplitResidualVectorQuantizer
from dsm.models.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder
from dsm.nn.conv import StreamingConv1d, StreamingConvTranspose1d
from dsm.nn.transformer import StreamingTransformer

__all__ = ["MimiConfig", "MimiModel", "MimiTransformerConfig"]


@dataclass(frozen=True)
class MimiTransformerConfig:
    """Encoder/decoder transformer (``loaders._transformer_kwargs``), run at 25 Hz."""

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250  # frames at 25 Hz: 10 s
    max_period: float = 10000.0
    layer_scale: float = 0.01


@dataclass(frozen=True)
class MimiConfig:
    """Mimi hyper-parameters; the defaults are the published codec (``loaders._mimi_config``)."""

    sample_rate: int = 24000
    frame_rate: float = 12.5
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    transformer: MimiTransformerConfig = field(default_factory=MimiTransformerConfig)
    codebook_dim: int = 256
    codebook_size: int = 2048
    num_codebooks: int = 32
    num_semantic: int = 1

    @property
    def frame_size(self) -> int:
        """Samples per code frame: 1920 = 80 ms at 24 kHz."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        """Frame rate of the SEANet latent (25 Hz)."""
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        """Latent frames per code frame (2)."""
        stride = self.encoder_frame_rate / self.frame_rate
        if stride != int(stride) or stride < 1:
            raise ValueError(
                f"encoder frame rate {self.encoder_frame_rate} must be an integer multiple of "
                f"the frame rate {self.frame_rate}"
            )
        return int(stride)


class MimiTransformer(nn.Module):
    """A :class:`StreamingTransformer` on ``[B, D, T]`` tensors (the reference's conv layout).

    The reference wraps it in a ``ProjectedTransformer`` whose projections are identities at
    Mimi's sizes; only the ``transformer.`` naming level is kept.
    """

    def __init__(self, config: MimiTransformerConfig) -> None:
        super().__init__()
        self.transformer = StreamingTransformer(
            d_model=config.d_model,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            dim_feedforward=config.dim_feedforward,
            causal=True,
            context=config.context,
            positional_embedding="rope",
            max_period=config.max_period,
            gating="none",
            norm="layer_norm",
            layer_scale=config.layer_scale,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, T]`` -> ``[B, D, T]``."""
        return self.transformer(x.transpose(1, 2)).transpose(1, 2)


class ConvDownsample(nn.Module):
    """Learnt causal stride-``s`` conv (kernel ``2s``, no bias, replicate-padded start)."""

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.conv = StreamingConv1d(
            dimension, dimension, 2 * stride, stride=stride, bias=False, pad_mode="replicate"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, T]`` -> ``[B, D, T // stride]``."""
        return self.conv(x)


class ConvTrUpsample(nn.Module):
    """Learnt causal stride-``s`` transposed conv, channel-wise (``groups = dimension``).

    The reference's ``upsample_channel_wise_bug=True`` makes it grouped; the checkpoint's
    ``[512, 1, 4]`` weight depends on it.
    """

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.convtr = StreamingConvTranspose1d(
            dimension, dimension, 2 * stride, stride=stride, groups=dimension, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, T]`` -> ``[B, D, T * stride]``."""
        return self.convtr(x)


class _Side(nn.Module):
    """One path of Mimi as a module tree of its own, for :func:`dsm.nn.streaming.streaming`."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)


class MimiModel(nn.Module):
    """Mimi: ``pcm [B, 1, S]`` <-> ``codes [B, K, S // frame_size]`` (float32 network)."""

    def __init__(self, config: MimiConfig | None = None) -> None:
        super().__init__()
        config = config or MimiConfig()
        self.config = config
        dimension = config.seanet.dimension
        stride = config.resample_stride
        self.encoder = SEANetEncoder(config.seanet)
        self.decoder = SEANetDecoder(config.seanet)
        self.encoder_transformer = MimiTransformer(config.transformer)
        self.decoder_transformer = MimiTransformer(config.transformer)
        self.downsample = ConvDownsample(stride, dimension)
        self.upsample = ConvTrUpsample(stride, dimension)
        self.quantizer = SplitResidualVectorQuantizer(
            dimension=config.codebook_dim,
            input_dimension=dimension,
            output_dimension=dimension,
            num_codebooks=config.num_codebooks,
            num_semantic=config.num_semantic,
            codebook_size=config.codebook_size,
        )
        # Not registered as children: the same modules, grouped per path (see module doc).
        self.__dict__["_encoder_side"] = _Side(
            self.encoder, self.encoder_transformer, self.downsample
        )
        self.__dict__["_decoder_side"] = _Side(
            self.upsample, self.decoder_transformer, self.decoder
        )

    @property
    def encoder_side(self) -> nn.Module:
        """The encoding path as one module tree: ``streaming(model.encoder_side, B)``."""
        side: nn.Module = self.__dict__["_encoder_side"]
        return side

    @property
    def decoder_side(self) -> nn.Module:
        """The decoding path as one module tree: ``streaming(model.decoder_side, B)``."""
        side: nn.Module = self.__dict__["_decoder_side"]
        return side

    @property
    def frame_size(self) -> int:
        """Samples per code frame (1920)."""
        return self.config.frame_size

    @property
    def num_codebooks(self) -> int:
        """Codebooks produced by :meth:`encode`."""
        return self.quantizer.num_codebooks

    @property
    def total_codebooks(self) -> int:
        """Codebooks in the checkpoint (32)."""
        return self.quantizer.total_codebooks

    @property
    def cardinality(self) -> int:
        """Entries per codebook (2048)."""
        return self.quantizer.codebook_size

    def set_num_codebooks(self, num_codebooks: int) -> None:
        """Make :meth:`encode` produce the first ``num_codebooks`` levels (1..32)."""
        self.quantizer.set_num_codebooks(num_codebooks)

    @property
    def encoder_is_streaming(self) -> bool:
        """Whether the encoding path is inside a streaming context."""
        return self.downsample.conv.is_streaming

    @property
    def decoder_is_streaming(self) -> bool:
        """Whether the decoding path is inside a streaming context."""
        return self.upsample.convtr.is_streaming

    def encode_to_latent(self, pcm: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """``[B, 1, S]`` -> latent ``[B, 512, T]`` at the frame rate.

        Offline, ``S`` is right-padded with zeros to a multiple of ``frame_size`` (as the
        reference does), so ``T = ceil(S / frame_size)``. Streaming, ``S`` must be a positive
        multiple of ``frame_size`` and ``T = S // frame_size``. With ``quantize`` the latent is
        replaced by the decoded codes (the quantizer's reconstruction).
        """
        latent = self._encode_unquantized(pcm)
        if quantize:
            return self.quantizer.decode(self.quantizer.encode(latent))
        return latent

    def _encode_unquantized(self, pcm: torch.Tensor) -> torch.Tensor:
        frame_size = self.frame_size
        S = pcm.shape[-1]
        if self.encoder_is_streaming:
            if S == 0 or S % frame_size != 0:
                raise ValueError(
                    f"streaming encode takes a positive multiple of {frame_size} samples per "
                    f"call, got {S}; buffer the audio into whole frames first"
                )
        elif S % frame_size != 0:
            pcm = F.pad(pcm, (0, frame_size - S % frame_size))
        latent = self.encoder(pcm)
        latent = self.encoder_transformer(latent)
        return self.downsample(latent)

    def encode(self, pcm: torch.Tensor) -> torch.Tensor:
        """``[B, 1, S]`` float -> codes ``[B, num_codebooks, T]`` int64 (see encode_to_latent)."""
        return self.quantizer.encode(self._encode_unquantized(pcm))

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> quantized latent ``[B, 512, T]``."""
        return self.quantizer.decode(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (``1 <= K <= 32``) -> pcm ``[B, 1, T * frame_size]`` (unclipped)."""
        latent = self.upsample(self.quantizer.decode(codes))
        latent = self.decoder_transformer(latent)
        return self.decoder(latent)
