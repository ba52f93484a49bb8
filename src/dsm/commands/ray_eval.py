"""``dsm eval DATASET --ray [ADDRESS]``: the evaluation's transcription on a pool of Ray actors.

The evaluation itself (dataset, normalizer, scores, files) runs in the driver unchanged
(:mod:`dsm.eval.runner`); only its ``transcribe(batch) -> texts`` goes to Ray: each batch of
``--batch-size`` utterances is cut into one contiguous part per actor, the actors (one loaded
model each, ``num_gpus=1`` where the cluster has GPUs) transcribe their parts at the same time
with continuous batching, and the texts come back in order. So ``--batch-size`` is the total over
the actors: give each actor a full batch (e.g. 4 actors x 32 = ``--batch-size 128``).
"""

from __future__ import annotations

import argparse
import atexit
from typing import Any

import numpy as np

from dsm.extras import import_optional

__all__ = ["EvalWorker", "ray_transcriber"]

PURPOSE = "dsm eval --ray"


class EvalWorker:
    """A Ray actor: one loaded model; texts of a list of 24 kHz utterances ('' for a failure)."""

    def __init__(self, model: dict[str, Any], threads: int | None) -> None:
        import torch

        from dsm.commands.model_args import load_stt_from_args, model_options

        if threads is not None:
            torch.set_num_threads(max(1, threads))
        options = {**model_options(argparse.Namespace()), **model}
        self.stt = load_stt_from_args(argparse.Namespace(**options))

    def texts(self, batch: list[np.ndarray]) -> list[str]:
        from dsm.stt.transcript import TranscriptionFailure

        results = self.stt.transcribe_many(
            batch, batch_size=len(batch), sample_rate=self.stt.sample_rate, progress=False
        )
        return ["" if isinstance(r, TranscriptionFailure) else r.text for r in results]


def _parts(batch: list[np.ndarray], n: int) -> list[list[np.ndarray]]:
    """``batch`` cut into at most ``n`` contiguous parts of near-equal size (none empty)."""
    size, extra = divmod(len(batch), n)
    parts, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            parts.append(batch[start:end])
        start = end
    return parts


def ray_transcriber(
    model: dict[str, Any], address: str | None, actors: int | None
) -> Any:  # TranscribeBatch
    """Start the actors (joining ``address``, or a local Ray) and return the transcriber."""
    from dsm.commands.ray_transcribe import actor_pool, connect

    ray = import_optional("ray", PURPOSE)
    if connect(ray, address):
        atexit.register(ray.shutdown)
    count, resources, threads = actor_pool(ray, actors)
    worker = ray.remote(**resources)(EvalWorker)
    workers = [worker.remote(model, threads) for _ in range(count)]

    def transcribe_batch(batch: list[np.ndarray]) -> list[str]:
        parts = _parts(batch, len(workers))
        futures = [w.texts.remote(p) for w, p in zip(workers[: len(parts)], parts, strict=True)]
        return [text for texts in ray.get(futures) for text in texts]

    return transcribe_batch
