"""Transposed convolutions as one product + overlap-add equal PyTorch's kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsm.nn.conv import StreamingConvTranspose1d, conv_transpose1d
from dsm.nn.streaming import streaming


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "groups", "steps", "batch"),
    [
        (64, 32, 16, 8, 1, 2, 1),  # Mimi's first decoder layer, scaled down
        (32, 16, 12, 6, 1, 16, 2),
        (24, 24, 4, 2, 24, 1, 3),  # depthwise upsampling
        (24, 24, 4, 2, 24, 7, 2),
        (8, 4, 6, 2, 1, 5, 1),  # three overlapping blocks
    ],
)
def test_matches_torch(
    cin: int, cout: int, kernel: int, stride: int, groups: int, steps: int, batch: int
) -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(cin, cout, kernel, stride, groups=groups)
    x = torch.randn(batch, cin, steps)
    with torch.no_grad():
        expected = conv(x)
        got = conv_transpose1d(x, conv)
    assert got.shape == expected.shape
    err = ((got - expected).norm() / expected.norm()).item()
    print(f"relative error {err:.1e}")
    assert err < 1e-6


def test_falls_back_where_the_product_does_not_apply() -> None:
    conv = nn.ConvTranspose1d(4, 4, 5, 2)  # kernel not a multiple of the stride
    x = torch.randn(1, 4, 3)
    with torch.no_grad():
        assert torch.equal(conv_transpose1d(x, conv), conv(x))
    long = torch.randn(1, 4, 64)  # long inputs keep PyTorch's kernel
    conv = nn.ConvTranspose1d(4, 4, 4, 2)
    with torch.no_grad():
        assert torch.equal(conv_transpose1d(long, conv), conv(long))
    # With gradients the product is not used (and the result still carries a graph).
    assert conv_transpose1d(x, conv).requires_grad


def test_streaming_equals_offline() -> None:
    torch.manual_seed(1)
    layer = StreamingConvTranspose1d(16, 8, 8, 4)
    x = torch.randn(2, 16, 12)
    with torch.no_grad():
        offline = layer(x)
        with streaming(layer, 2):
            chunks = [layer(x[..., i : i + 3]) for i in range(0, 12, 3)]
    torch.testing.assert_close(torch.cat(chunks, -1), offline, rtol=1e-5, atol=1e-6)
