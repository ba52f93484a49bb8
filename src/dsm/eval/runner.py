"""Run a transcriber over evaluation items; write per-utterance results and a summary.

The transcriber is any ``transcribe_batch(list of 24 kHz float32 [S] arrays) -> list of str``,
so the runner knows nothing of models. The next batch's audio is decoded on a helper thread
while the current one is transcribed; RTF counts only time inside ``transcribe_batch`` (as the
reference evaluation does), in audio seconds per wall second (higher is faster).

Output in ``out_dir``: ``results.jsonl`` (one line per utterance, flushed per batch so an
interrupted run keeps what it did) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from dsm.audio import SAMPLE_RATE
from dsm.errors import DsmError
from dsm.eval.datasets import EvalItem, load_items
from dsm.eval.metrics import Normalizer, aggregate, get_normalizer, is_scorable, score_utterance
from dsm.progress import AudioProgress

__all__ = [
    "Summary",
    "TranscribeBatch",
    "UtteranceResult",
    "add_eval_arguments",
    "evaluate",
    "run_eval_cli",
]

TranscribeBatch = Callable[[list[np.ndarray]], list[str]]

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class UtteranceResult:
    """One line of ``results.jsonl``."""

    id: str
    ref: str
    hyp: str
    wer: float
    cer: float
    duration: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int


@dataclass(frozen=True)
class Summary:
    """Totals of an evaluation run (``summary.json``)."""

    n_utterances: int
    n_skipped: int  # empty reference after normalization
    n_unreadable: int  # audio that could not be read: skipped, each reported on stderr
    mean_wer: float
    mean_cer: float
    corpus_wer: float
    corpus_cer: float
    audio_seconds: float
    transcribe_seconds: float
    rtf: float | None  # audio seconds per transcription second; None if nothing was timed

    @property
    def audio_hours(self) -> float:
        """Total scored audio in hours."""
        return self.audio_seconds / 3600.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus ``audio_hours``; NaN becomes None."""
        data = {**asdict(self), "audio_hours": self.audio_hours}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in data.items()}

    def format_table(self) -> str:
        """A small human-readable table of the results."""

        def pct(x: float) -> str:
            return "n/a" if math.isnan(x) else f"{100 * x:.2f} %"

        rtf = "n/a" if self.rtf is None else f"{self.rtf:.1f}x real time"
        rows = [
            ("utterances", f"{self.n_utterances} ({self.n_skipped} skipped: empty reference)"),
            ("unreadable", f"{self.n_unreadable} (skipped: audio could not be read)"),
            ("mean WER", pct(self.mean_wer)),
            ("mean CER", pct(self.mean_cer)),
            ("corpus WER", pct(self.corpus_wer)),
            ("audio", f"{self.audio_hours:.3f} h"),
            ("transcription", f"{self.transcribe_seconds:.1f} s"),
            ("RTF", rtf),
        ]
        return "\n".join(f"{name:<14}{value}" for name, value in rows)


def _batches(
    items: Iterable[EvalItem],
    batch_size: int,
    normalizer: Normalizer,
    limit: int | None,
    skipped: list[int],
) -> Iterator[list[EvalItem]]:
    batch: list[EvalItem] = []
    taken = 0
    for item in items:
        if limit is not None and taken >= limit:
            break
        if not is_scorable(item.text, normalizer):
            skipped[0] += 1
            continue
        taken += 1
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load(batch: list[EvalItem]) -> list[np.ndarray | Exception]:
    """Each item's audio, or the error that kept it from being read."""
    audios: list[np.ndarray | Exception] = []
    for item in batch:
        try:
            audios.append(item.load())
        except (DsmError, ValueError, OSError, RuntimeError) as exc:
            audios.append(exc)
    return audios


def evaluate(
    items: Iterable[EvalItem],
    transcribe_batch: TranscribeBatch,
    *,
    batch_size: int = 32,
    out_dir: str | Path | None = None,
    normalizer: str | Normalizer = "english",
    limit: int | None = None,
    progress: bool = False,
    log: TextIO | None = None,
    quiet: bool = False,
) -> Summary:
    """Transcribe ``items`` in batches and score them; returns the :class:`Summary`.

    Items whose reference normalizes to nothing (or to the "ignore time segment in scoring"
    marker) are skipped and counted; so are items whose audio cannot be read, each reported
    with a warning on stderr. ``limit`` stops after that many scored utterances. With
    ``out_dir``, writes ``results.jsonl`` and ``summary.json`` there. The summary table is
    printed to ``log`` (default: standard output) unless ``quiet``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    normalize = get_normalizer(normalizer) if isinstance(normalizer, str) else normalizer
    out = Path(out_dir) if out_dir is not None else None
    results_file: TextIO | None = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        results_file = (out / RESULTS_FILE).open("w", encoding="utf-8")

    skipped = [0]
    scores = []
    audio_seconds = 0.0
    transcribe_seconds = 0.0
    unreadable = 0
    bar = AudioProgress(["eval"], [None], enabled=progress, desc="eval")
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsm-eval-load") as pool:
            batches = _batches(items, batch_size, normalize, limit, skipped)
            pending: tuple[list[EvalItem], Future[list[np.ndarray | Exception]]] | None = None
            first = next(batches, None)
            if first is not None:
                pending = (first, pool.submit(_load, first))
            while pending is not None:
                batch, loading = pending
                loaded = loading.result()
                following = next(batches, None)
                pending = None if following is None else (following, pool.submit(_load, following))
                for item, audio in zip(batch, loaded, strict=True):
                    if isinstance(audio, Exception):
                        unreadable += 1
                        print(f"dsm: warning: skipped {item.id}: {audio}", file=sys.stderr)
                batch = [i for i, a in zip(batch, loaded, strict=True) if isinstance(a, np.ndarray)]
                audios = [a for a in loaded if isinstance(a, np.ndarray)]
                if not audios:
                    continue
                start = time.perf_counter()
                hyps = transcribe_batch(audios)
                transcribe_seconds += time.perf_counter() - start
                if not isinstance(hyps, list) or len(hyps) != len(audios):
                    got = len(hyps) if isinstance(hyps, list) else type(hyps).__name__
                    raise RuntimeError(
                        f"transcribe_batch returned {got} for a batch of {len(audios)}; "
                        "it must return one string per input array"
                    )
                for item, audio, hyp in zip(batch, audios, hyps, strict=True):
                    score = score_utterance(item.text, str(hyp), normalize)
                    scores.append(score)
                    duration = audio.shape[0] / SAMPLE_RATE
                    audio_seconds += duration
                    if results_file is not None:
                        result = UtteranceResult(
                            id=item.id,
                            ref=item.text,
                            hyp=str(hyp),
                            wer=score.wer,
                            cer=score.cer,
                            duration=round(duration, 3),
                            substitutions=score.substitutions,
                            deletions=score.deletions,
                            insertions=score.insertions,
                            hits=score.hits,
                        )
                        results_file.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
                if results_file is not None:
                    results_file.flush()
                bar.advance(0, audio_seconds)
    finally:
        bar.close()
        if results_file is not None:
            results_file.close()

    corpus = aggregate(scores)
    summary = Summary(
        n_utterances=corpus.n_utterances,
        n_skipped=skipped[0],
        n_unreadable=unreadable,
        mean_wer=corpus.mean_wer,
        mean_cer=corpus.mean_cer,
        corpus_wer=corpus.corpus_wer,
        corpus_cer=corpus.corpus_cer,
        audio_seconds=audio_seconds,
        transcribe_seconds=transcribe_seconds,
        rtf=audio_seconds / transcribe_seconds if transcribe_seconds > 0 else None,
    )
    if out is not None:
        (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if not quiet:
        print(summary.format_table(), file=log if log is not None else sys.stdout)
    return summary


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dataset/output options of ``dsm eval`` to ``parser`` (model options are not here)."""
    parser.add_argument(
        "dataset",
        help="a local .jsonl manifest (audio + text per line), a dataset alias "
        "(librispeech.clean, meanwhile, ...) or a hub dataset 'owner/name[:config[:split]]'",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="utterances per batch (32)")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="write results.jsonl and summary.json here"
    )
    parser.add_argument("--limit", type=int, default=None, help="stop after this many utterances")
    parser.add_argument(
        "--normalizer",
        choices=("english", "basic", "none"),
        default="english",
        help="text normalizer applied to references and hypotheses (english)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (none anyway off a terminal)"
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="stream a hub dataset instead of downloading it first",
    )


def run_eval_cli(
    args: argparse.Namespace, transcriber_factory: Callable[[argparse.Namespace], TranscribeBatch]
) -> int:
    """``dsm eval``: build the transcriber with ``transcriber_factory(args)`` and evaluate."""
    items = load_items(args.dataset, streaming=args.streaming)
    transcribe = transcriber_factory(args)
    evaluate(
        items,
        transcribe,
        batch_size=args.batch_size,
        out_dir=args.out_dir,
        normalizer=args.normalizer,
        limit=args.limit,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    return 0
