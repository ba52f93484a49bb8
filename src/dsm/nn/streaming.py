"""Per-slot streaming state shared by every streaming module.

A streaming run has ``B`` slots (the batch dimension). Each streaming module owns a state object
whose tensors all have a leading ``B`` and are allocated once, when streaming starts. Slots are
controlled with two masks, never with reallocation:

* the **exec mask** ``[B]`` (one tensor shared by the whole module tree): a slot whose entry is
  False is computed along with the others but its state is left bit-identical by the step;
* a **reset** with a ``[B]`` mask puts the selected slots back to the fresh-stream state in place.

Usage::

    with streaming(model, batch_size=4) as ctl:
        ctl.set_exec_mask(mask)      # pause some slots
        y = model(x)                 # one step for every slot
        ctl.reset(mask)              # restart some slots

Leaf modules subclass :class:`StreamingModule` and implement :meth:`StreamingModule.init_state`.
Modules that must manage their own state (e.g. a depformer restarted every frame) are
*detached*: :func:`streaming` on an ancestor skips their subtree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["StreamingControl", "StreamingModule", "StreamingState", "streaming"]


class StreamingState:
    """State of one streaming module. Subclasses add preallocated ``[B, ...]`` tensors."""

    def __init__(self, exec_mask: torch.Tensor) -> None:
        self.exec_mask = exec_mask  # [B] bool, shared by the whole tree

    @property
    def batch_size(self) -> int:
        return int(self.exec_mask.shape[0])

    def reset(self, mask: torch.Tensor) -> None:
        """Put the slots where ``mask`` ([B] bool) is True back to the fresh state, in place."""
        raise NotImplementedError


class StreamingModule(nn.Module):
    """A module that can keep per-slot state between calls.

    Outside a :func:`streaming` context the module behaves as a fresh stream on every call
    (offline mode = a fresh state and one big chunk).
    """

    streaming_detached: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._streaming_state: StreamingState | None = None

    def init_state(self, batch_size: int, exec_mask: torch.Tensor) -> StreamingState | None:
        """Allocate this module's state for ``batch_size`` slots (None if it has none)."""
        return None

    @property
    def streaming_state(self) -> StreamingState | None:
        return self._streaming_state

    @property
    def is_streaming(self) -> bool:
        return self._streaming_state is not None


def _streaming_modules(root: nn.Module, include_root_detached: bool) -> Iterator[StreamingModule]:
    """Streaming modules under ``root``, skipping the subtrees of detached descendants."""

    def visit(module: nn.Module, is_root: bool) -> Iterator[StreamingModule]:
        if isinstance(module, StreamingModule):
            if module.streaming_detached and not (is_root and include_root_detached):
                return
            yield module
        for child in module.children():
            yield from visit(child, False)

    yield from visit(root, True)


class StreamingControl:
    """Handle on a running stream: exec mask and per-slot reset for a module tree."""

    def __init__(self, root: nn.Module, batch_size: int, device: torch.device) -> None:
        self.root = root
        self.exec_mask = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.modules: list[StreamingModule] = list(_streaming_modules(root, True))
        self.states: list[StreamingState] = []
        for module in self.modules:
            state = module.init_state(batch_size, self.exec_mask)
            module._streaming_state = state
            if state is not None:
                self.states.append(state)

    @property
    def batch_size(self) -> int:
        return int(self.exec_mask.shape[0])

    def set_exec_mask(self, mask: torch.Tensor) -> None:
        """Only slots where ``mask`` ([B] bool) is True advance on the next calls."""
        if mask.shape != self.exec_mask.shape:
            raise ValueError(
                f"exec mask must have shape {tuple(self.exec_mask.shape)}, got {tuple(mask.shape)}"
            )
        self.exec_mask.copy_(mask)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Reset the slots where ``mask`` is True (all slots when None) to a fresh stream."""
        if mask is None:
            mask = torch.ones_like(self.exec_mask)
        if mask.shape != self.exec_mask.shape:
            raise ValueError(
                f"reset mask must have shape {tuple(self.exec_mask.shape)}, got {tuple(mask.shape)}"
            )
        mask = mask.to(device=self.exec_mask.device, dtype=torch.bool)
        for state in self.states:
            state.reset(mask)

    def close(self) -> None:
        for module in self.modules:
            module._streaming_state = None
        self.states.clear()


def _device_of(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


@contextmanager
def streaming(
    module: nn.Module, batch_size: int, device: torch.device | None = None
) -> Iterator[StreamingControl]:
    """Run ``module`` (and its non-detached streaming descendants) in streaming mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ctl = StreamingControl(module, batch_size, device or _device_of(module))
    try:
        yield ctl
    finally:
        ctl.close()
