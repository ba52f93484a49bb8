"""A complete tiny STT checkpoint built by the reference, and the reference's STT pipeline.

The checkpoint directory holds ``config.json``, the LM weights, a random Mimi (published
architecture) and a SentencePiece tokenizer trained at test time, laid out like the hub repo.
The pipeline mirrors ``moshi.run_inference`` for STT (model-spec §4.2): silence prefix,
``audio_delay_seconds + 1 s`` of right padding, full frames only, the first frame fed twice and
the first output dropped, greedy decoding, ids above the padding id decoded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm.checkpoint.config import TEXT_PADDING_ID
from tests.helpers.hub_layout import save_hub_safetensors
from tests.helpers.reference_lm import STT_LIKE, make_reference_lm_dir
from tests.helpers.reference_mimi import build_reference_mimi, save_reference_mimi
from tests.helpers.tiny_tokenizer import train_tiny_tokenizer


def stt_config(context: int = 12, delay: float = 0.5, prefix: float = 0.0) -> dict[str, Any]:
    """An STT-like config whose audio side matches Mimi (card 2048, 32 codebooks)."""
    config = copy.deepcopy(STT_LIKE)
    config.update(
        card=2048, text_card=64, dim=32, num_heads=2, context=context,
        stt_config={"audio_delay_seconds": delay, "audio_silence_prefix_seconds": prefix},
    )  # fmt: skip
    return config


@dataclass
class ReferenceStt:
    """The reference models of a checkpoint directory and the directory itself."""

    lm: Any
    mimi: Any
    tokenizer: Any
    directory: Path
    config: dict[str, Any]


def make_reference_stt_dir(tmp_path: Path, config: dict[str, Any], seed: int = 0) -> ReferenceStt:
    """Build and save the checkpoint (see the module docstring)."""
    import sentencepiece

    lm, directory = make_reference_lm_dir(tmp_path, config, seed=seed, name="stt")
    # A random model never predicts padding, so words would only close at the end of a stream.
    # Swap two frequent text classes with PAD (3) and end-of-padding (0) in the saved weights:
    # still one deterministic model for dsm and the reference, now with word boundaries.
    with torch.no_grad():
        weight = lm.text_linear.weight
        for special, frequent in ((3, 20), (0, 15)):
            row = weight[special].clone()
            weight[special] = weight[frequent]
            weight[frequent] = row
    save_hub_safetensors(lm.state_dict(), directory / config.get("moshi_name", "model.safetensors"))
    with torch.no_grad():
        mimi = build_reference_mimi(seed=seed)
    save_reference_mimi(mimi, directory / config["mimi_name"])
    tok_path = train_tiny_tokenizer(tmp_path / "tok", vocab_size=64, name=config["tokenizer_name"])
    (directory / config["tokenizer_name"]).write_bytes(tok_path.read_bytes())
    tokenizer = sentencepiece.SentencePieceProcessor()
    tokenizer.Load(str(directory / config["tokenizer_name"]))
    return ReferenceStt(lm, mimi, tokenizer, directory, config)


class _PromptOracle:
    """The reference prompt script's rule (model-spec §4.7): while prompt tokens remain, only
    the padding ids and the next prompt token may be emitted."""

    def __init__(self, tokens: list[int], padding: tuple[int, ...] = (0, 3)) -> None:
        self.left = list(tokens)
        self.padding = padding

    def on_logits(self, logits: torch.Tensor) -> None:
        if self.left:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep[..., [*self.padding, self.left[0]]] = True
            logits[:] = torch.where(keep, logits, float("-inf"))

    def on_token(self, token: torch.Tensor) -> None:
        if self.left and int(token.item()) == self.left[0]:
            self.left.pop(0)


@torch.no_grad()
def reference_transcribe(
    ref: ReferenceStt, pcm: np.ndarray, prompt_text: str | None = None
) -> tuple[str, list[int]]:
    """The reference pipeline on 24 kHz mono ``pcm``: (text, output tokens).

    The text is the reference's greedy transcript: its tokenizer's decode of every text token
    above the padding id (as ``moshi.run_inference`` and the upstream scripts print it), split
    on whitespace and joined by single spaces. Nothing of dsm's word assembly is used."""
    from moshi.models.lm import LMGen

    stt = ref.config["stt_config"]
    x = torch.from_numpy(np.asarray(pcm, dtype=np.float32))[None, None]
    left = int(stt["audio_silence_prefix_seconds"] * 24000)
    right = int((stt["audio_delay_seconds"] + 1.0) * 24000)
    x = torch.nn.functional.pad(x, (left, right))
    chunks = [c for c in x.split(1920, dim=2) if c.shape[-1] == 1920]
    hooks = {}
    if prompt_text:
        oracle = _PromptOracle(ref.tokenizer.encode(prompt_text))
        hooks = {"on_text_logits_hook": oracle.on_logits, "on_text_hook": oracle.on_token}
    gen = LMGen(ref.lm, temp=0.0, temp_text=0.0, **hooks)
    tokens: list[int] = []
    with ref.mimi.streaming(1), gen.streaming(1):
        for i, chunk in enumerate(chunks):
            codes = ref.mimi.encode(chunk)
            if i == 0:
                gen.step(codes)
            out = gen.step(codes)
            tokens.append(int(out[0, 0, 0]))
    pad = TEXT_PADDING_ID
    return " ".join(ref.tokenizer.decode([t for t in tokens if t > pad]).split()), tokens
