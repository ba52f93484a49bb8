"""Random reference LMs (built by ``moshi``) and the dsm LMs loaded from the same checkpoint.

Configs (scaled-down published layouts, :mod:`tests.helpers.reference_lm`):

* ``stt``: STT-like (32 input codebooks, extra heads) with non-zero delays on the text and input
  streams, so the delay ring is exercised (the published STT models have all delays 0);
* ``stt0``: STT-like with the published all-zero delays;
* ``tts``: TTS-like (depformer with schedule, low-rank + demux embeddings, cross-attention and
  summed LUT conditions), with per-slot conditions;
* ``tiny``: the reference's own unit-test model (layer norms, ungated FFN, context 4).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from dsm.checkpoint.config import load_config
from dsm.lm import load_lm_from_files
from dsm.models.conditioners import Conditions
from tests.helpers.reference_lm import (
    STT_LIKE,
    TINY,
    TTS_LIKE,
    make_reference_lm_dir,
    reference_condition_tensors,
)

SPEAKER_FRAMES = 10

_RAW: dict[str, dict[str, Any]] = {
    "stt": {**STT_LIKE, "delays": [1] + [k % 4 for k in range(32)]},
    "stt0": STT_LIKE,
    "tts": TTS_LIKE,
    "tiny": TINY,
}


@dataclass
class ModelPair:
    """A reference LM and the dsm LM with the same weights, plus per-row conditions."""

    name: str
    ref: Any
    dsm: Any
    n_in: int
    card: int
    conditioned: bool = False
    rows: int = 0  # condition rows available (one per possible slot)
    _text: dict[str, list[str | None]] = field(default_factory=dict)
    _tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def _select(self, rows: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
        text = {k: [v[r] for r in rows] for k, v in self._text.items()}
        tensors = {k: (t[rows], m[rows]) for k, (t, m) in self._tensors.items()}
        return text, tensors

    def ref_conditions(self, rows: list[int], cfg: bool = False) -> Any:
        if not self.conditioned:
            return None
        text, tensors = self._select(rows)
        if cfg:
            n = len(rows)
            text = {k: v + [None] * n for k, v in text.items()}
            tensors = {
                k: (torch.cat([t, torch.zeros_like(t)]), torch.cat([m, torch.zeros_like(m)]))
                for k, (t, m) in tensors.items()
            }
            return reference_condition_tensors(self.ref, text, tensors, 2 * n)
        return reference_condition_tensors(self.ref, text, tensors, len(rows))

    def dsm_conditions(self, rows: list[int], cfg: bool = False) -> Conditions | None:
        if not self.conditioned:
            return None
        text, tensors = self._select(rows)
        with torch.no_grad():
            cond = self.dsm.make_conditions(text, tensors, len(rows))
            if cfg:
                lengths = {k: t.shape[1] for k, (t, _) in tensors.items()}
                null = self.dsm.null_conditions(len(rows), lengths)
                cond = Conditions.cat([cond, null])
        return cond

    def ref_kwargs(self, rows: list[int], cfg: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(temp=0.0, temp_text=0.0)
        if self.conditioned:
            kwargs["condition_tensors"] = self.ref_conditions(rows, cfg)
        return kwargs

    def gen_kwargs(self, rows: list[int], cfg: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(temp=0.0, temp_text=0.0)
        if self.conditioned:
            kwargs["conditions"] = self.dsm_conditions(rows, cfg)
        return kwargs


@cache
def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="dsm-generate-"))


@cache
def build_pair(name: str) -> ModelPair:
    raw = _RAW[name]
    ref, directory = make_reference_lm_dir(_tmp(), raw, seed=len(name), name=name)
    config = load_config(directory / "config.json")
    lm = load_lm_from_files(config, directory / config.moshi_name)
    pair = ModelPair(name, ref, lm, lm.n_q - lm.dep_q, lm.card)
    if raw.get("conditioners"):
        rows = 4
        gen = torch.Generator().manual_seed(11)
        pair.conditioned, pair.rows = True, rows
        pair._text = {"cfg": ["1.5", "2.0", None, "4.0"], "control": ["ok", None, "ok", "ok"]}
        speaker = torch.randn(rows, SPEAKER_FRAMES, 16, generator=gen)
        mask = torch.ones(rows, SPEAKER_FRAMES, dtype=torch.bool)
        mask[1, 6:] = False
        mask[2] = False
        pair._tensors = {"speaker_wavs": (speaker, mask)}
    return pair
