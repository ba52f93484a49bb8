"""Word and character error rates as the reference evaluation computes them (spec §6).

Both reference and hypothesis go through the same text normalizer (Whisper's English normalizer
by default) and are scored with jiwer. Per-utterance WER and CER are averaged over utterances;
corpus WER pools the edit counts: ``Σ(S + D + I) / Σ(S + D + hits)``.

``jiwer`` and ``whisper-normalizer`` are optional: ``pip install 'dsm[eval]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "IGNORE_SEGMENT",
    "CorpusScore",
    "Normalizer",
    "UtteranceScore",
    "aggregate",
    "get_normalizer",
    "is_scorable",
    "score_utterance",
]

# Reference transcripts equal to this (after normalization) mark unscorable segments in the
# long-form datasets; the reference evaluation drops them.
IGNORE_SEGMENT = "ignore time segment in scoring"
Normalizer = Callable[[str], str]


def _import(module: str, what: str) -> Any:
    from dsm.extras import import_optional

    return import_optional(module, what)


_NORMALIZERS: dict[str, Normalizer] = {}


def get_normalizer(name: str = "english") -> Normalizer:
    """A text normalizer by name (cached).

    * ``english``: Whisper's ``EnglishTextNormalizer`` (spelling, numbers, contractions), as the
      reference evaluation uses;
    * ``basic``: Whisper's ``BasicTextNormalizer`` (lower case, no punctuation), for other
      languages;
    * ``none``: the text unchanged apart from collapsed whitespace.
    """
    if name in _NORMALIZERS:
        return _NORMALIZERS[name]
    normalizer: Normalizer
    if name == "english":
        english = _import("whisper_normalizer.english", "the English text normalizer")
        normalizer = english.EnglishTextNormalizer()
    elif name == "basic":
        basic = _import("whisper_normalizer.basic", "the basic text normalizer")
        normalizer = basic.BasicTextNormalizer()
    elif name == "none":

        def normalizer(text: str) -> str:
            return " ".join(text.split())

    else:
        raise ValueError(f"unknown normalizer {name!r}; choose 'english', 'basic' or 'none'")
    _NORMALIZERS[name] = normalizer
    return normalizer


def is_scorable(reference: str, normalizer: Normalizer | None = None) -> bool:
    """False when the normalized reference is empty or is the "ignore time segment" marker."""
    norm = (normalizer or get_normalizer())(reference).strip()
    return bool(norm) and norm != IGNORE_SEGMENT


@dataclass(frozen=True)
class UtteranceScore:
    """Scores of one hypothesis against its reference, on normalized text."""

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    char_errors: int
    ref_chars: int
    ref_norm: str
    hyp_norm: str

    @property
    def ref_words(self) -> int:
        """Words in the normalized reference (S + D + hits)."""
        return self.substitutions + self.deletions + self.hits

    @property
    def word_errors(self) -> int:
        """S + D + I."""
        return self.substitutions + self.deletions + self.insertions


def score_utterance(
    reference: str, hypothesis: str, normalizer: Normalizer | None = None
) -> UtteranceScore:
    """WER/CER of ``hypothesis`` against ``reference`` after normalizing both.

    Raises ``ValueError`` if the reference normalizes to nothing (filter with :func:`is_scorable`).
    An empty hypothesis scores WER 1.0 (all deletions).
    """
    jiwer = _import("jiwer", "WER scoring")
    normalize = normalizer or get_normalizer()
    ref = " ".join(normalize(reference).split())
    hyp = " ".join(normalize(hypothesis).split())
    if not ref:
        raise ValueError(
            f"reference {reference!r} is empty after normalization; skip it (see is_scorable)"
        )
    if hyp:
        words = jiwer.process_words(ref, hyp)
        chars = jiwer.process_characters(ref, hyp)
        s, d, i, h = words.substitutions, words.deletions, words.insertions, words.hits
        char_errors = chars.substitutions + chars.deletions + chars.insertions
    else:  # jiwer rejects empty strings; everything in the reference is deleted
        s, d, i, h = 0, len(ref.split()), 0, 0
        char_errors = len(ref)
    return UtteranceScore(
        wer=(s + d + i) / (s + d + h),
        cer=char_errors / len(ref),
        substitutions=s,
        deletions=d,
        insertions=i,
        hits=h,
        char_errors=char_errors,
        ref_chars=len(ref),
        ref_norm=ref,
        hyp_norm=hyp,
    )


@dataclass(frozen=True)
class CorpusScore:
    """Scores over a set of utterances."""

    n_utterances: int
    mean_wer: float
    mean_cer: float
    corpus_wer: float
    corpus_cer: float


def aggregate(scores: Iterable[UtteranceScore]) -> CorpusScore:
    """Mean per-utterance WER/CER and pooled corpus WER/CER (NaN when there are no scores)."""
    items = list(scores)
    n = len(items)
    if n == 0:
        nan = float("nan")
        return CorpusScore(0, nan, nan, nan, nan)
    ref_words = sum(s.ref_words for s in items)
    ref_chars = sum(s.ref_chars for s in items)
    return CorpusScore(
        n_utterances=n,
        mean_wer=sum(s.wer for s in items) / n,
        mean_cer=sum(s.cer for s in items) / n,
        corpus_wer=sum(s.word_errors for s in items) / ref_words,
        corpus_cer=sum(s.char_errors for s in items) / ref_chars,
    )
