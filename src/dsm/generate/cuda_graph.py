"""CUDA-graph capture of argument-free step phases.

The generator splits a step into phases (main forward, text sampling, depformer, commit). Each
phase is a closure that reads and writes tensors the generator allocated once, so it takes no
arguments and returns nothing: capturing it needs no input/output copies. Hooks, which may run
arbitrary Python, run eagerly between the replays and mutate the phases' buffers in place.

Graphs are used only on CUDA and can be turned off with ``DSM_NO_CUDA_GRAPH=1``. Graphs replay
the same kernels on the same addresses, so they do not change the numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["GraphedPhase", "cuda_graphs_enabled"]

NO_CUDA_GRAPH_ENV = "DSM_NO_CUDA_GRAPH"


def cuda_graphs_enabled(device: torch.device) -> bool:
    """True when phases on ``device`` should be captured (CUDA, and not disabled by env)."""
    if device.type != "cuda":
        return False
    return os.environ.get(NO_CUDA_GRAPH_ENV, "").strip().lower() not in ("1", "true", "yes")


class GraphedPhase:
    """Run ``fn`` eagerly ``warmup_steps`` times, then capture it once and replay it.

    ``fn`` must only touch tensors whose addresses do not change between calls (the buffers
    allocated when streaming started, and tensors it created itself on a previous call, which
    the capture keeps alive in ``pool``).
    """

    def __init__(
        self,
        fn: Callable[[], None],
        *,
        enabled: bool,
        pool: Any = None,
        generators: tuple[torch.Generator, ...] = (),
        warmup_steps: int = 2,
    ) -> None:
        self.fn = fn
        self.enabled = enabled
        self.pool = pool
        self.generators = generators
        self.warmup_steps = warmup_steps
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        if not self.enabled:
            self.fn()
            return
        if self._graph is not None:
            self._graph.replay()
            return
        if self._calls < self.warmup_steps:
            # Warm up on a side stream, as the CUDA-graph docs recommend, so lazy inits
            # (cuBLAS handles, autotuning) happen before the capture.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream().wait_stream(stream)
            self._calls += 1
            return
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, pool=self.pool):
            self.fn()
        self._graph = graph
        # Capturing records the kernels without running them: run this call for real.
        graph.replay()

    def reset(self) -> None:
        """Drop the captured graph (e.g. after buffers were reallocated)."""
        self._graph = None
        self._calls = 0
