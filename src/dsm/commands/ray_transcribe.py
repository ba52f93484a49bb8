"""``dsm transcribe --ray``: batch transcription on a Ray cluster (or a local Ray) with Ray Data.

The driver lists the inputs (:mod:`dsm.commands.batch_inputs`), skips those whose outputs all
exist, and makes the rest a Ray Dataset of ``{index, input, name}`` rows in blocks of one actor
call each. ``map_batches`` runs :class:`Transcriber`, a pool of ``--actors`` actors that each
load the model once (``num_gpus=1`` each where the cluster has GPUs, CPU actors otherwise) and
transcribe each block with :meth:`~dsm.stt.model.SpeechToText.transcribe_many` (continuous
batching inside the actor). The driver consumes the dataset with ``iter_batches`` (Ray Data
streams: blocks arrive as actors finish them) and writes each input's outputs and results-table
row at once (:mod:`dsm.commands.batch_results`), so results are on disk as they finish and a
killed run loses only the blocks in flight. An input that fails is a row with its error; the
others go on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.commands.batch_inputs import is_url, open_url
from dsm.commands.batch_results import ResultsTable, output_paths, write_atomic
from dsm.commands.outputs import output_names
from dsm.errors import DsmError
from dsm.extras import import_optional

__all__ = [
    "BatchOptions",
    "BatchSummary",
    "Transcriber",
    "actor_pool",
    "connect",
    "run_batch",
    "run_failure",
]

PURPOSE = "dsm transcribe --ray"


@dataclass(frozen=True)
class BatchOptions:
    """One batch run: inputs, outputs, the model and the actor pool."""

    inputs: Sequence[str]
    out_dir: Path
    formats: Sequence[str] = ("txt",)
    # dsm.commands.model_args options ("model", "device", ...); those absent take their defaults
    model: dict[str, Any] = field(default_factory=dict)
    table: str = "jsonl"
    actors: int | None = None  # None: one per GPU, or one on a CPU cluster
    batch_size: int = 8  # streams batched together inside an actor
    cpus_per_actor: float | None = None  # CPU actors; None: the cluster's CPUs / actors
    address: str | None = None  # None: the Ray of this process, else a local one started
    vad: dict[str, Any] | None = None  # VadOptions fields, or None for no VAD
    progress: bool = True


@dataclass
class BatchSummary:
    """What a run did (``skipped``: inputs whose outputs existed)."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    actors: int = 0
    errors: list[str] = field(default_factory=list)


class Transcriber:
    """The Ray Data actor: one loaded model, one ``transcribe_many`` per block of inputs."""

    def __init__(
        self, model: dict[str, Any], formats: Sequence[str], batch_size: int,
        vad: dict[str, Any] | None, threads: int | None,
    ) -> None:  # fmt: skip
        import torch

        from dsm.commands.model_args import load_stt_from_args, model_options

        if threads is not None:
            torch.set_num_threads(max(1, threads))
        began = time.monotonic()
        # Options not given take their command-line defaults.
        options = {**model_options(argparse.Namespace()), **model}
        self.stt = load_stt_from_args(argparse.Namespace(**options))
        self.load_seconds = time.monotonic() - began
        self.formats = list(formats)
        self.batch_size = batch_size
        self.vad = vad
        self.actor = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from dsm.commands.outputs import render
        from dsm.stt.transcript import TranscriptionFailure
        from dsm.stt.vad import VadOptions

        inputs = [str(x) for x in batch["input"]]
        began = time.monotonic()
        seconds: dict[int, float] = {}
        results: list[Any] = [None] * len(inputs)
        with tempfile.TemporaryDirectory(prefix="dsm-ray-") as tmp:
            good: list[int] = []
            local: list[str] = []
            for i, item in enumerate(inputs):
                try:
                    local.append(_local_copy(item, Path(tmp), i))
                    good.append(i)
                except Exception as exc:  # a URL that can't be read: this input fails
                    results[i] = exc
            try:
                done = self.stt.transcribe_many(
                    local,
                    batch_size=self.batch_size,
                    vad=VadOptions(**self.vad) if self.vad is not None else None,
                    progress=False,
                    on_result=lambda j, _: seconds.setdefault(good[j], time.monotonic() - began),
                )
            except Exception as exc:  # the whole call failed (the model, not one input)
                done = [exc] * len(good)
            for i, result in zip(good, done, strict=True):
                results[i] = result
        took = time.monotonic() - began
        out: dict[str, list[Any]] = {key: [] for key in _COLUMNS}
        for i, result in enumerate(results):
            failure: str | None = None
            if isinstance(result, TranscriptionFailure):
                failure = str(result)
            elif isinstance(result, BaseException):
                failure = f"{inputs[i]}: {type(result).__name__}: {result}"
            out["index"].append(int(batch["index"][i]))
            out["error"].append(failure or "")
            timings = {
                "load_seconds": round(self.load_seconds, 3),
                "batch_seconds": round(took, 3),
                "batch_files": len(inputs),
                "seconds": round(seconds.get(i, took), 3),
            }
            out["timings"].append(json.dumps(timings))
            out["actor"].append(self.actor)
            if failure is not None:
                out["record"].append("{}")
                out["duration"].append(0.0)
                out["rendered"].append("[]")
                continue
            out["record"].append(json.dumps(result.to_dict(vad=self.vad is not None)))
            out["duration"].append(float(result.duration))
            out["rendered"].append(
                json.dumps([render(result, fmt, self.vad is not None) for fmt in self.formats])
            )
        return out


_COLUMNS = ("index", "error", "record", "duration", "rendered", "timings", "actor")


def _absolute(item: str) -> str:
    return item if is_url(item) else str(Path(item).absolute())


def _local_copy(item: str, tmp: Path, i: int) -> str:
    """A local path for ``item``: itself, or a download of a URL (:func:`open_url`)."""
    if not is_url(item):
        return item
    from pyarrow import fs

    filesystem, path, _ = open_url(item)
    if isinstance(filesystem, fs.LocalFileSystem):
        return path
    target = tmp / f"{i}{Path(path).suffix}"
    with filesystem.open_input_stream(path) as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return str(target)


def connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` (or start a local Ray); True when this run started it.

    A local Ray's workers import dsm from where this process did (its folder goes first on
    their ``PYTHONPATH``), so a source checkout runs the same code in the actors. A cluster's
    workers need dsm installed (``pip install 'dsm[ray]'`` in their image).
    """
    if ray.is_initialized():
        return False
    runtime_env = None
    if address is None:
        import dsm

        here = str(Path(dsm.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    try:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False,
            runtime_env=runtime_env,
        )  # fmt: skip
    except ConnectionError as exc:
        raise DsmError(f"can't reach the Ray cluster at {address}: {exc}") from None
    return True


def actor_pool(
    ray: Any, actors: int | None, cpus_per_actor: float | None = None
) -> tuple[int, dict[str, Any], int | None]:
    """Actor count (default: one per GPU, or one), each actor's resources (``num_gpus=1`` on a
    cluster with GPUs, else a share of the CPUs), and torch threads per actor (CPU actors)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = actors or max(1, gpus)
    if gpus:
        return actors, {"num_gpus": 1}, None
    cpus = cpus_per_actor or max(1.0, float(int(resources.get("CPU", 1)) // actors))
    return actors, {"num_cpus": cpus}, max(1, int(cpus))


def run_batch(opts: BatchOptions) -> BatchSummary:
    """Transcribe ``opts.inputs`` on Ray; outputs in ``opts.out_dir`` (see the module doc)."""
    ray = import_optional("ray", PURPOSE)
    import_optional("ray.data", PURPOSE)
    began = time.monotonic()
    inputs = list(opts.inputs)
    names = output_names(inputs)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(total=len(inputs))
    done = {
        i
        for i in range(len(inputs))
        if all(p.exists() for p in output_paths(out_dir, names[i], opts.formats))
    }
    pending = [i for i in range(len(inputs)) if i not in done]
    summary.skipped = len(done)
    table = ResultsTable(out_dir, opts.table)
    table.open({inputs[i] for i in pending})
    try:
        if pending:
            _run_pending(ray, opts, inputs, names, pending, table, summary)
    finally:
        table.close()
    summary.wall_seconds = time.monotonic() - began
    return summary


def _run_pending(
    ray: Any, opts: BatchOptions, inputs: list[str], names: list[str], pending: list[int],
    table: ResultsTable, summary: BatchSummary,
) -> None:  # fmt: skip
    started = connect(ray, opts.address)
    try:
        actors, resources, threads = actor_pool(ray, opts.actors, opts.cpus_per_actor)
        summary.actors = actors
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = opts.progress
        per_call = max(1, min(2 * opts.batch_size, math.ceil(len(pending) / actors)))
        # Local paths made absolute: actors may run in another folder.
        rows = [{"index": i, "input": _absolute(inputs[i])} for i in pending]
        dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_call))
        dataset = dataset.map_batches(
            Transcriber,
            fn_constructor_kwargs={
                "model": opts.model, "formats": list(opts.formats),
                "batch_size": opts.batch_size, "vad": opts.vad, "threads": threads,
            },
            batch_size=per_call, compute=ray.data.ActorPoolStrategy(size=actors),
            batch_format="numpy", **resources,
        )  # fmt: skip
        bar = _bar(len(pending), opts.progress)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for j in range(len(batch["index"])):
                    _emit({k: batch[k][j] for k in _COLUMNS}, inputs, names, opts, table, summary)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{summary.audio_seconds / 3600:.3f} h audio")
        finally:
            if bar is not None:
                bar.close()
    except Exception as exc:
        raise run_failure(exc) from None
    finally:
        if started:
            ray.shutdown()


def run_failure(exc: BaseException) -> DsmError:
    """A DsmError for a failed Ray run: the actors' own error (e.g. a checkpoint that does not
    load) without Ray's wrapping and remote traceback, or the Ray error in one line."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 10:
        if isinstance(cause, DsmError) and type(cause).__module__.startswith("dsm."):
            return DsmError(f"an actor failed: {cause}")
        inner = getattr(cause, "cause", None)  # ray.exceptions.RayTaskError
        cause = inner if isinstance(inner, BaseException) else cause.__cause__
        seen += 1
    # An actor that died in its constructor: Ray quotes the remote traceback in the message.
    quoted = re.findall(r"^dsm\.errors\.\w+: (.+)$", str(exc), re.M)
    if quoted:
        return DsmError(f"an actor failed: {quoted[-1]}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return DsmError(f"the Ray run failed: {type(exc).__name__}: {first}")


def _emit(
    row: dict[str, Any], inputs: list[str], names: list[str], opts: BatchOptions,
    table: ResultsTable, summary: BatchSummary,
) -> None:  # fmt: skip
    """Write one finished input's outputs and table row."""
    index = int(row["index"])
    error = str(row["error"]) or None
    record = json.loads(str(row["record"]))
    out = {
        "input": inputs[index], "name": names[index], "ok": error is None, "error": error,
        "text": record.get("text"), "words": record.get("words"),
        "warnings": record.get("warnings", []),
        "duration": float(row["duration"]) if error is None else None,
        "timings": json.loads(str(row["timings"])), "actor": str(row["actor"]),
    }  # fmt: skip
    if error is None:
        texts = json.loads(str(row["rendered"]))
        for path, text in zip(
            output_paths(Path(opts.out_dir), names[index], opts.formats), texts, strict=True
        ):
            write_atomic(path, text)
        summary.done += 1
        summary.audio_seconds += float(row["duration"])
    else:
        summary.failed += 1
        summary.errors.append(error)
        print(f"dsm: error: {error}", file=sys.stderr)
    table.add(out)


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="transcribed", file=sys.stderr, dynamic_ncols=True)
