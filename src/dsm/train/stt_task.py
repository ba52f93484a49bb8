"""Fine-tuning speech-to-text: the :class:`~dsm.train.loop.TrainTask` of ``dsm finetune stt``.

Items are prepared once before training: each utterance's fed signal is encoded by Mimi (cached
on disk, :mod:`dsm.train.codes_cache`) and its words become the text stream
(:mod:`dsm.train.stt_target`). A batch stacks items padded to the longest (padding weighs 0);
the loss is the text stream's weighted cross-entropy through the LM's teacher-forced forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dsm.stt.model import SpeechToText
from dsm.train.codes_cache import CodesCache
from dsm.train.loop import LossSum
from dsm.train.manifest import Utterance
from dsm.train.stt_target import DEFAULT_PAD_WEIGHT, SttLayout, text_target, text_weights

__all__ = ["SttBatch", "SttItem", "SttTask", "align_missing", "layout_of", "prepare_items"]


@dataclass(frozen=True)
class SttItem:
    """One prepared utterance: audio codes ``[n_q, T]`` and text stream ``[T]``."""

    codes: torch.Tensor
    text: torch.Tensor
    seconds: float


@dataclass(frozen=True)
class SttBatch:
    """Codes ``[B, 1 + n_q, T]`` (text first), loss weights ``[B, T]`` and seconds of audio."""

    codes: torch.Tensor
    weights: torch.Tensor
    seconds: float


def layout_of(stt: SpeechToText) -> SttLayout:
    """The target layout of a loaded STT checkpoint (delay, prefix, special ids)."""
    return SttLayout(
        prefix_seconds=stt.prefix_seconds,
        delay_seconds=stt.delay_seconds,
        padding_id=stt.padding_id,
        end_of_padding_id=stt.lm.end_of_text_padding_id,
    )


def align_missing(stt: SpeechToText, utterances: Sequence[Utterance]) -> list[Utterance]:
    """Word times for the utterances that have none, by forced alignment with ``stt``
    (``SpeechToText.align_many``, the engine of ``dsm align``); the others are returned
    unchanged. This is the one place training calls the aligner."""
    from dsm.stt.transcript import TranscriptionFailure
    from dsm.train.manifest import ManifestError

    out = list(utterances)
    missing = [i for i, u in enumerate(out) if u.words is None]
    if not missing:
        return out
    align_many = getattr(stt, "align_many", None)
    if align_many is None:
        raise ManifestError(
            f"{out[missing[0]].where}: this line has no word times and this dsm has no forced "
            'aligner; give "words" with start and end times for every line'
        )
    results = align_many([(str(out[i].audio), out[i].text) for i in missing])
    for i, result in zip(missing, results, strict=True):
        if isinstance(result, TranscriptionFailure):
            raise ManifestError(f"{out[i].where}: forced alignment failed: {result.message}")
        out[i] = out[i].with_words(result.words)
    return out


def _pieces(encode: Callable[[str], list[int]], padding_id: int) -> Callable[[str], list[int]]:
    # Ids up to the padding id are the markers (and SentencePiece's unknown piece, 0): a word's
    # text never uses them, or it would read as a word boundary.
    def pieces(text: str) -> list[int]:
        return [t for t in encode(text) if t > padding_id]

    return pieces


def prepare_items(
    stt: SpeechToText, utterances: Sequence[Utterance], cache: CodesCache
) -> list[SttItem]:
    """Codes and text streams of aligned ``utterances`` (see the module docstring)."""
    layout = layout_of(stt)
    plan = layout.plan
    encode = _pieces(stt.tokenizer.encode, layout.padding_id)
    items = []
    for u in utterances:
        assert u.words is not None, "align the utterances first (align_missing)"
        codes = cache.codes(u.audio, plan.left_samples, plan.right_samples)
        text = text_target(list(u.words), encode, codes.shape[-1], layout)
        items.append(SttItem(codes, text, u.duration))
    return items


class SttTask:
    """Fine-tune ``stt.lm`` on ``items``; validate WER on ``val``; save with ``save``."""

    def __init__(
        self,
        stt: SpeechToText,
        items: Sequence[SttItem],
        *,
        save: Callable[[Path], list[Path]],
        val: Sequence[Utterance] = (),
        normalizer: str = "english",
        pad_weight: float = DEFAULT_PAD_WEIGHT,
    ) -> None:
        self.stt = stt
        self.model: nn.Module = stt.lm
        self.items = list(items)
        self.val = list(val)
        self.normalizer = normalizer
        self.pad_weight = pad_weight
        self.layout = layout_of(stt)
        self._save = save

    def __len__(self) -> int:
        return len(self.items)

    def collate(self, indices: Sequence[int]) -> SttBatch:
        """Stack the items (padded to the longest with zero weight)."""
        chosen = [self.items[i] for i in indices]
        T = max(item.codes.shape[-1] for item in chosen)
        n_q = chosen[0].codes.shape[0]
        codes = torch.zeros(len(chosen), 1 + n_q, T, dtype=torch.long)
        weights = torch.zeros(len(chosen), T)
        for b, item in enumerate(chosen):
            length = item.codes.shape[-1]
            codes[b, 0].fill_(self.layout.padding_id)
            codes[b, 0, :length] = item.text
            codes[b, 1:, :length] = item.codes
            weights[b] = text_weights(codes[b, 0], length, self.layout, self.pad_weight)
        device = next(self.model.parameters()).device
        seconds = sum(item.seconds for item in chosen)
        return SttBatch(codes.to(device), weights.to(device), seconds)

    def loss(self, model: nn.Module, batch: SttBatch) -> LossSum:
        """Weighted cross-entropy of the text stream (summed; the loop divides)."""
        out = model(batch.codes)
        logits = out.text_logits[:, 0]  # [B, T, C]
        B, T, C = logits.shape
        target = batch.codes[:, 0]
        ce = F.cross_entropy(
            logits.float().reshape(B * T, C), target.reshape(B * T), reduction="none"
        )
        weights = batch.weights.reshape(B * T)
        total = (torch.nan_to_num(ce) * weights).sum()
        return LossSum(total, float(weights.sum()), batch.seconds)

    def validate(self) -> dict[str, float]:
        """Corpus and mean WER of the validation set (``dsm eval``'s scoring)."""
        if not self.val:
            return {}
        from dsm.eval.metrics import aggregate, get_normalizer, is_scorable, score_utterance
        from dsm.stt.transcript import TranscriptionFailure

        normalize = get_normalizer(self.normalizer)
        results = self.stt.transcribe_many(
            [str(u.audio) for u in self.val], batch_size=min(8, len(self.val)), progress=False
        )
        scores = [
            score_utterance(
                u.text, "" if isinstance(r, TranscriptionFailure) else r.text, normalize
            )
            for u, r in zip(self.val, results, strict=True)
            if is_scorable(u.text, normalize)
        ]
        total = aggregate(scores)
        return {"wer": total.corpus_wer, "mean_wer": total.mean_wer}

    def save(self, directory: Path) -> list[Path]:
        return self._save(directory)
