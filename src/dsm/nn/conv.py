"""Causal streaming 1-d convolutions (spec §3.3).

Both classes keep their ``nn.Conv1d`` / ``nn.ConvTranspose1d`` two attribute levels down
(``conv.conv`` / ``convtr.convtr``) so parameter names equal the published Mimi keys
(``encoder.model.0.conv.conv.weight``, ``decoder.model.2.convtr.convtr.weight``).

:class:`StreamingConv1d` is causal: each call convolves ``[previous | x]`` with no other padding,
where ``previous`` holds the last ``(kernel - 1) * dilation + 1 - stride`` input samples of the
slot (zeros for a fresh stream, or the first sample repeated in ``"replicate"`` mode). Offline
calls behave as a fresh stream fed one big chunk.

:class:`StreamingConvTranspose1d` keeps the ``kernel - stride`` overlapping output samples of
the last call (bias removed) in ``partial`` and adds them to the start of the next call's output.
Offline calls trim those samples on the right.

Both respect the shared exec mask: a slot whose mask entry is False gets an output but its
state is left bit-identical.

On CPU without gradients, transposed convolutions of short inputs whose kernel is a multiple of
the stride (all of Mimi's) run as one matrix product and an overlap-add
(:func:`conv_transpose1d`): PyTorch sends such inputs to a slow generic kernel (32.6 ms for
Mimi's first decoder layer on one frame, against 2.4 ms).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dsm.nn.streaming import StreamingModule, StreamingState

__all__ = ["StreamingConv1d", "StreamingConvTranspose1d", "conv_transpose1d"]

PAD_MODES = ("constant", "replicate")


class _Conv1dHolder(nn.Module):
    """One naming level between the streaming conv and ``nn.Conv1d`` (checkpoint layout)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv


class _ConvTr1dHolder(nn.Module):
    """One naming level between the streaming conv and ``nn.ConvTranspose1d``."""

    def __init__(self, convtr: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.convtr = convtr


class _ConvState(StreamingState):
    """Per-slot context of a causal conv: the last ``P`` input samples of every slot."""

    def __init__(
        self, exec_mask: torch.Tensor, channels: int, context: int, dtype: torch.dtype
    ) -> None:
        super().__init__(exec_mask)
        device = exec_mask.device
        self.previous = torch.zeros(self.batch_size, channels, context, dtype=dtype, device=device)
        # Replicate mode: True until the slot has seen its first sample.
        self.first = torch.ones(self.batch_size, dtype=torch.bool, device=device)

    def reset(self, mask: torch.Tensor) -> None:
        self.previous.masked_fill_(mask.view(-1, 1, 1), 0.0)
        self.first.masked_fill_(mask, True)


class StreamingConv1d(StreamingModule):
    """Causal ``Conv1d`` with per-slot streaming context.

    Input ``[B, C_in, T]`` with ``T`` a positive multiple of ``stride``; output
    ``[B, C_out, T // stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.stride = stride
        effective_kernel = (kernel_size - 1) * dilation + 1
        if effective_kernel < stride:
            raise ValueError(
                f"kernel span {effective_kernel} shorter than stride {stride} is not supported"
            )
        self.context = effective_kernel - stride
        self.conv = _Conv1dHolder(
            nn.Conv1d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        )

    def init_state(self, batch_size: int, exec_mask: torch.Tensor) -> _ConvState | None:
        """Zeroed ``previous`` samples for ``batch_size`` slots (None when the kernel has none)."""
        if self.context == 0:
            return None
        conv = self.conv.conv
        return _ConvState(exec_mask, conv.in_channels, self.context, conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, T]`` -> ``[B, C_out, T // stride]``."""
        T = x.shape[-1]
        assert T > 0 and T % self.stride == 0, (T, self.stride)
        P = self.context
        if P == 0:
            return self.conv.conv(x)
        state = self._streaming_state
        if state is None:
            # Offline: a fresh stream and one chunk.
            mode = "replicate" if self.pad_mode == "replicate" else "constant"
            return self.conv.conv(F.pad(x, (P, 0), mode=mode))
        assert isinstance(state, _ConvState)
        previous = state.previous
        exec_mask = state.exec_mask.view(-1, 1, 1)
        if self.pad_mode == "replicate":
            assert T >= P, "replicate padding needs a chunk at least as long as the context"
            fill = (state.first & state.exec_mask).view(-1, 1, 1)
            torch.where(fill, x[..., :1], previous, out=previous)
            state.first.logical_and_(~state.exec_mask)
        # Every update is an in-place tensor op on state allocated once (no Python-side
        # bookkeeping per call), so a streaming step can be captured in a CUDA graph.
        padded = torch.cat([previous, x], dim=-1)  # [B, C, P + T]
        y = self.conv.conv(padded)
        torch.where(exec_mask, padded[..., T:], previous, out=previous)
        return y


# Up to this many input steps the product is faster than PyTorch's CPU kernels (measured on
# Mimi's decoder layers: 2 steps 2.4 vs 32.6 ms, 16 steps 0.7 vs 1.3 ms, 96 steps 2.7 vs 1.5 ms).
_MATMUL_MAX_STEPS = 16


def _matmul_convtr_ok(x: torch.Tensor, convtr: nn.ConvTranspose1d) -> bool:
    K, S = convtr.kernel_size[0], convtr.stride[0]
    return (
        x.device.type == "cpu"
        and x.shape[-1] <= _MATMUL_MAX_STEPS
        and not torch.is_grad_enabled()
        and K % S == 0
        and convtr.dilation[0] == 1
        and convtr.padding[0] == 0
        and convtr.output_padding[0] == 0
        and convtr.groups in (1, convtr.in_channels)
        and (convtr.groups == 1 or convtr.out_channels == convtr.in_channels)
    )


def conv_transpose1d(x: torch.Tensor, convtr: nn.ConvTranspose1d) -> torch.Tensor:
    """``convtr(x)``: ``[B, C_in, T]`` -> ``[B, C_out, (T - 1) * S + K]``.

    When the kernel ``K`` is ``n`` times the stride ``S`` (dense or depthwise, CPU, no grad),
    every input step contributes ``K`` output samples: one product gives ``[B, T, C_out, n, S]``
    and the ``n`` blocks are added at offsets ``0, S, ..., (n - 1) S``. Equal to PyTorch's
    kernel up to float rounding.
    """
    if not _matmul_convtr_ok(x, convtr):
        return convtr(x)
    B, C, T = x.shape
    K, S = convtr.kernel_size[0], convtr.stride[0]
    n = K // S
    w = convtr.weight  # [C_in, C_out / groups, K]
    if convtr.groups == 1:
        out_c = w.shape[1]
        z = torch.matmul(x.transpose(1, 2), w.reshape(C, out_c * K))  # [B, T, C_out * K]
        z = z.view(B, T, out_c, n, S).permute(0, 2, 3, 1, 4)  # [B, C_out, n, T, S]
    else:  # depthwise: channel c scales its own kernel
        out_c = C
        z = x[:, :, None, :, None] * w.view(C, n, 1, S)  # [B, C, n, T, S]
    y = x.new_zeros(B, out_c, (T + n - 1) * S)
    for i in range(n):
        y[:, :, i * S : (i + T) * S] += z[:, :, i].reshape(B, out_c, T * S)
    if convtr.bias is not None:
        y += convtr.bias[:, None]
    return y


class _ConvTrState(StreamingState):
    def __init__(self, exec_mask: torch.Tensor, partial: torch.Tensor) -> None:
        super().__init__(exec_mask)
        self.partial = partial  # [B, C_out, K - S] overlap of the last output, bias removed

    def reset(self, mask: torch.Tensor) -> None:
        self.partial.masked_fill_(mask.view(-1, 1, 1), 0.0)


class StreamingConvTranspose1d(StreamingModule):
    """Causal ``ConvTranspose1d`` with overlap-add across calls.

    Input ``[B, C_in, T]``; output ``[B, C_out, T * stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} < stride {stride} is not supported")
        self.stride = stride
        self.overlap = kernel_size - stride
        self.convtr = _ConvTr1dHolder(
            nn.ConvTranspose1d(
                in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias
            )
        )

    def init_state(self, batch_size: int, exec_mask: torch.Tensor) -> _ConvTrState | None:
        """Zeroed overlap buffer for ``batch_size`` slots (None when kernel == stride)."""
        if self.overlap == 0:
            return None
        weight = self.convtr.convtr.weight
        partial = torch.zeros(
            batch_size,
            self.convtr.convtr.out_channels,
            self.overlap,
            dtype=weight.dtype,
            device=exec_mask.device,
        )
        return _ConvTrState(exec_mask, partial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, T]`` -> ``[B, C_out, T * stride]``."""
        y = conv_transpose1d(x, self.convtr.convtr)  # [B, C_out, (T - 1) * S + K]
        P = self.overlap
        if P == 0:
            return y
        state = self._streaming_state
        if state is None:
            return y[..., :-P]
        assert isinstance(state, _ConvTrState)
        y[..., :P] += state.partial
        tail = y[..., -P:]
        bias = self.convtr.convtr.bias
        if bias is not None:
            tail = tail - bias[:, None]
        torch.where(state.exec_mask.view(-1, 1, 1), tail, state.partial, out=state.partial)
        return y[..., :-P]
