"""Evaluation of speech-to-text: WER/CER/RTF over hub datasets or local manifests.

Needs ``pip install 'dsm[eval]'`` (jiwer, whisper-normalizer, datasets). Typical use::

    from dsm.eval import evaluate, read_manifest

    summary = evaluate(read_manifest("test.jsonl"), transcribe_batch, out_dir="eval-out")
"""

from __future__ import annotations

from dsm.eval.datasets import (
    DATASETS,
    TRANSCRIPT_COLUMNS,
    EvalItem,
    HubDataset,
    iter_hub_dataset,
    load_hub_dataset,
    load_items,
    read_manifest,
    resolve_dataset,
    transcript_column,
)
from dsm.eval.metrics import (
    IGNORE_SEGMENT,
    CorpusScore,
    UtteranceScore,
    aggregate,
    get_normalizer,
    is_scorable,
    score_utterance,
)
from dsm.eval.runner import (
    Summary,
    TranscribeBatch,
    UtteranceResult,
    add_eval_arguments,
    evaluate,
    run_eval_cli,
)

__all__ = [
    "DATASETS",
    "IGNORE_SEGMENT",
    "TRANSCRIPT_COLUMNS",
    "CorpusScore",
    "EvalItem",
    "HubDataset",
    "Summary",
    "TranscribeBatch",
    "UtteranceResult",
    "UtteranceScore",
    "add_eval_arguments",
    "aggregate",
    "evaluate",
    "get_normalizer",
    "is_scorable",
    "iter_hub_dataset",
    "load_hub_dataset",
    "load_items",
    "read_manifest",
    "resolve_dataset",
    "run_eval_cli",
    "score_utterance",
    "transcript_column",
]
