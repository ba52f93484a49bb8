"""A real Pipecat pipeline around the service under test: frames in at the head, every frame
that comes out collected at both ends (downstream at the sink, upstream errors at the head)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import EndFrame, Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner


class Collector(FrameProcessor):
    """Passes every frame on and records those going ``direction``."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append(frame)
            async with self._changed:
                self._changed.notify_all()
        await self.push_frame(frame, direction)

    def of(self, kind: type | tuple[type, ...]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]

    async def wait_for(self, done: Callable[[list[Frame]], bool], timeout: float = 20.0) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: done(self.frames))

        await asyncio.wait_for(wait(), timeout)


@dataclass
class Running:
    worker: PipelineWorker
    head: Collector  # upstream frames (errors) reaching the start of the pipeline
    sink: Collector  # downstream frames reaching the end

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            await self.worker.queue_frame(frame)


@asynccontextmanager
async def pipeline_with(
    *processors: FrameProcessor,
    in_rate: int = 16000,
    out_rate: int = 24000,
    end_timeout: float = 30.0,
) -> AsyncIterator[Running]:
    """Run ``head -> processors -> sink`` in Pipecat's ``PipelineWorker`` and ``WorkerRunner``;
    on exit send an ``EndFrame`` and wait for the pipeline to finish."""
    head = Collector(FrameDirection.UPSTREAM)
    sink = Collector(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([head, *processors, sink]),
        params=PipelineParams(audio_in_sample_rate=in_rate, audio_out_sample_rate=out_rate),
        cancel_on_idle_timeout=False,
        check_dangling_tasks=True,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 10.0)
        yield Running(worker, head, sink)
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(run), end_timeout)
    finally:
        if not run.done():
            await worker.cancel()
            await asyncio.wait_for(run, 10.0)
