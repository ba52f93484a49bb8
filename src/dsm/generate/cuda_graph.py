"""CUDA-graph capture of streaming steps: the one wrapper of the LM and of Mimi.

:class:`GraphedPhase` captures an argument-free closure; :class:`GraphedStep` wraps a
tensor-to-tensor step (Mimi's encode/decode) on top of it, one graph per input shape.

The generator splits a step into phases (main forward, text sampling, depformer, commit). Each
phase is a closure that reads and writes tensors the generator allocated once, so it takes no
arguments and returns nothing: capturing it needs no input/output copies. Hooks, which may run
arbitrary Python, run eagerly between the replays and mutate the phases' buffers in place.

Graphs are used only on CUDA and can be turned off with ``DSM_NO_CUDA_GRAPH=1`` (read by
:func:`cuda_graphs_allowed`, for the LM and Mimi alike). Graphs replay the same kernels on the
same addresses, so they do not change the numbers. A capture that fails (an operation CUDA
graphs do not support) leaves the step eager, with a warning: graphs are an optimisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["NO_CUDA_GRAPH_ENV", "GraphedPhase", "GraphedStep", "cuda_graphs_allowed",
           "cuda_graphs_enabled"]  # fmt: skip

NO_CUDA_GRAPH_ENV = "DSM_NO_CUDA_GRAPH"  # 1/true/yes: run CUDA streaming steps eagerly

logger = logging.getLogger(__name__)


def cuda_graphs_allowed() -> bool:
    """False when ``DSM_NO_CUDA_GRAPH`` is 1, true or yes (the one reading of the switch)."""
    return os.environ.get(NO_CUDA_GRAPH_ENV, "").strip().lower() not in ("1", "true", "yes")


def cuda_graphs_enabled(device: torch.device) -> bool:
    """True when steps on ``device`` should be captured (CUDA, and not disabled by env)."""
    return device.type == "cuda" and cuda_graphs_allowed()


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
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self.fn()
        except Exception as exc:  # capture is an optimisation: fall back to eager
            logger.warning("CUDA graph capture failed (%s); running eagerly", exc)
            self.enabled = False
            self.fn()
            return
        self._graph = graph
        # Capturing records the kernels without running them: run this call for real.
        graph.replay()

    def reset(self) -> None:
        """Drop the captured graph (e.g. after buffers were reallocated)."""
        self._graph = None
        self._calls = 0


class GraphedStep:
    """A step ``fn(x) -> y`` captured once per input shape and dtype (see :class:`GraphedPhase`).

    The input is copied into a static tensor, the captured phase writes the output into memory
    the graph owns, and a copy of it is returned. ``fn`` must only touch state allocated when
    streaming started, updated in place; a graph dies with that streaming context.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, warmup_steps: int = 1):
        self.fn = fn
        self.warmup_steps = warmup_steps
        self._phases: dict[tuple[object, ...], tuple[GraphedPhase, torch.Tensor, list[Any]]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (*x.shape, x.dtype)
        entry = self._phases.get(key)
        if entry is None:
            static_in = x.clone()
            out: list[Any] = [None]

            def run() -> None:
                out[0] = self.fn(static_in)

            phase = GraphedPhase(run, enabled=True, warmup_steps=self.warmup_steps)
            entry = self._phases[key] = (phase, static_in, out)
        phase, static_in, out = entry
        static_in.copy_(x)
        phase()
        result: torch.Tensor = out[0]
        return result.clone()
