"""A complete tiny TTS checkpoint built by the reference, and the reference's TTS pipeline.

The checkpoint directory holds ``config.json`` (a scaled-down tts-1.6b: depformer with a
schedule, low-rank and demultiplexed embeddings, cross-attended speaker tensor, ``cfg`` and
``control`` LUTs, delays ``[0, 0, 2, ...]``, ``tts_config``, ``model_id``), the LM weights, a
random Mimi (published architecture, decoding ``n_q`` codebooks), a SentencePiece tokenizer
trained at test time and a voice repo directory with one embedding ``[1, dim, T]`` carrying the
checkpoint's ``sig``/``epoch`` metadata.

:func:`prefix_tts_config` is the same network conditioned like ``kyutai/tts-0.75b-en-public``:
no conditioner at all (no speaker tensor, no LUT), the voice being an audio prefix. Its voice
repo holds short 24 kHz wav files (:func:`write_test_wav`) instead of embeddings.

Random weights make the text head's argmax an arbitrary id, which the state machine turns into
padding: words would then only start when ``max_padding`` runs out. The NEW_WORD (0) and PAD
(3) rows of ``text_linear`` are scaled up so that greedy decoding picks between the two, as a
trained model does, and the model's own choices drive the state machine.

:func:`reference_synthesize` runs the reference ``TTSModel`` (built as
``from_checkpoint_info`` would) and decodes like ``simple_generate``.
"""

from __future__ import annotations

import copy
import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from tests.helpers.hub_layout import save_hub_safetensors
from tests.helpers.reference_lm import TTS_LIKE, make_reference_lm
from tests.helpers.reference_mimi import build_reference_mimi, save_reference_mimi
from tests.helpers.tiny_tokenizer import _TEXT as TINY_CORPUS

VOICE_NAME = "test/voice_a.wav"
OTHER_VOICE_NAME = "test/voice_b.wav"
VOICE_FRAMES = 10
TEXT_VOCAB = 64


_EXTRA_CORPUS = """It's the dog's bone, isn't it? Wait! Don't go: we'll see.
What a day. Yes, no, maybe; of course.
"""


def train_tts_tokenizer(
    directory: Path, vocab_size: int = TEXT_VOCAB, name: str = "tok.model"
) -> Path:
    """A SentencePiece model with Kyutai's special ids (0 unk, 1 bos, 2 eos, 3 pad) that also
    knows apostrophes and a few capitals."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text((TINY_CORPUS + _EXTRA_CORPUS) * 3)
    prefix = directory / Path(name).stem
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2,
    )  # fmt: skip
    model = prefix.with_suffix(".model")
    if model.name != name:
        model = model.rename(directory / name)
    return model


def tts_config(audio_delay: float = 1.28) -> dict[str, Any]:
    """TTS_LIKE with Mimi's card and a text vocabulary matching the test tokenizer."""
    config = copy.deepcopy(TTS_LIKE)
    config.update(card=2048, text_card=TEXT_VOCAB, dim=32, num_heads=2, context=24)
    config["tts_config"] = {"audio_delay": audio_delay, "second_stream_ahead": 2}
    return config


def prefix_tts_config(audio_delay: float = 1.28) -> dict[str, Any]:
    """:func:`tts_config` without conditioners or cross-attention: voices are audio prefixes
    (``conditioners: {}`` still gives the reference an empty condition provider, which its
    ``TTSModel.generate`` requires)."""
    config = tts_config(audio_delay)
    config.update(conditioners={}, cross_attention=False)
    del config["fuser"]
    config["model_id"] = {"sig": "9e570000", "epoch": 3}
    return config


def write_test_wav(
    path: Path, seconds: float = 2.0, sample_rate: int = 24000, seed: int = 0
) -> Path:
    """A mono 16-bit wav: a few gliding tones and some noise, so that a random Mimi gives
    varied codes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = np.zeros_like(t)
    for f0 in rng.uniform(120.0, 900.0, size=3):
        signal += np.sin(2 * np.pi * (f0 * t + 40.0 * t**2))
    signal = 0.25 * signal / 3 + 0.05 * rng.standard_normal(t.shape)
    ints = np.round(np.clip(signal, -1, 1) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(ints.tobytes())
    return path


@dataclass
class ReferenceTts:
    """The reference models of a checkpoint directory, the directory and its voice repo."""

    lm: Any
    mimi: Any
    tokenizer: Any
    directory: Path
    voice_dir: Path
    config: dict[str, Any]

    @property
    def multi_speaker(self) -> bool:
        return "speaker_wavs" in self.config["conditioners"]

    @property
    def suffix(self) -> str:
        """Voice file suffix: the embeddings' ``.{sig}@{epoch}.safetensors``, or nothing for a
        prefix-conditioned checkpoint (whose voices are the wav files themselves)."""
        if not self.multi_speaker:
            return ""
        model_id = self.config["model_id"]
        return f".{model_id['sig']}@{model_id['epoch']}.safetensors"

    def voice_path(self, name: str = VOICE_NAME) -> Path:
        return self.voice_dir / (name + self.suffix)


def save_voice(path: Path, emb: torch.Tensor, sig: str, epoch: int | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"speaker_wavs": emb.contiguous()}, str(path), metadata={"sig": sig, "epoch": str(epoch)}
    )
    return path


def make_reference_tts_dir(
    tmp_path: Path, config: dict[str, Any] | None = None, seed: int = 0
) -> ReferenceTts:
    import sentencepiece

    config = config or tts_config()
    lm = make_reference_lm(config, seed)
    with torch.no_grad():
        weight = lm.text_linear.weight
        weight[0] *= 6.0
        weight[3] *= 6.0
        weight[3] += 0.4 * weight[0].abs().mean()
    directory = Path(tmp_path) / "tts"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_hub_safetensors(lm.state_dict(), directory / config["moshi_name"])
    with torch.no_grad():
        mimi = build_reference_mimi(seed=seed)
    save_reference_mimi(mimi, directory / config["mimi_name"])
    mimi.set_num_codebooks(config["n_q"])
    tok_path = train_tts_tokenizer(
        Path(tmp_path) / "tok", vocab_size=TEXT_VOCAB, name=config["tokenizer_name"]
    )
    (directory / config["tokenizer_name"]).write_bytes(tok_path.read_bytes())
    tokenizer = sentencepiece.SentencePieceProcessor()
    tokenizer.Load(str(directory / config["tokenizer_name"]))

    voice_dir = Path(tmp_path) / "voices"
    model_id = config["model_id"]
    ref = ReferenceTts(lm, mimi, tokenizer, directory, voice_dir, config)
    if not ref.multi_speaker:
        for index, name in enumerate((VOICE_NAME, OTHER_VOICE_NAME)):
            write_test_wav(ref.voice_path(name), seconds=2.0 - 0.5 * index, seed=seed + index)
        return ref
    dim = config["conditioners"]["speaker_wavs"]["tensor"]["dim"]
    gen = torch.Generator().manual_seed(seed + 7)
    for name in (VOICE_NAME, OTHER_VOICE_NAME):
        emb = torch.randn(1, dim, VOICE_FRAMES, generator=gen)
        save_voice(ref.voice_path(name), emb, model_id["sig"], model_id["epoch"])
    return ref


def reference_model(ref: ReferenceTts, temp: float = 0.0, n_q: int | None = None) -> Any:
    """The reference ``TTSModel`` as ``from_checkpoint_info`` builds it (max 8 / initial 2).

    ``n_q``: codebooks to generate (default the config's); the reference then sets
    ``lm.dep_q = n_q`` when generating: restore ``ref.lm.dep_q`` afterwards.
    """
    from moshi.models.tts import StateMachine, TokenIds, TTSModel

    config = ref.config
    machine = StateMachine(
        token_ids=TokenIds(ref.lm.text_card + 1),
        second_stream_ahead=config["tts_config"].get("second_stream_ahead", 0),
        max_padding=8,
        initial_padding=2,
    )
    return TTSModel(
        lm=ref.lm,
        mimi=ref.mimi,
        tokenizer=ref.tokenizer,
        voice_suffix=ref.suffix,
        voice_repo=str(ref.voice_dir),
        machine=machine,
        delay_steps=int(config["tts_config"]["audio_delay"] * ref.mimi.frame_rate),
        n_q=config["n_q"] if n_q is None else n_q,
        temp=temp,
    )


@dataclass
class ReferenceResult:
    frames: list[torch.Tensor]  # per item [1 + n_q, T]
    pcm: list[np.ndarray]  # per item, simple_generate's cut
    transcripts: list[list[tuple[str, int]]]
    end_steps: list[int | None]
    prefix_frames: list[int]  # per item, the audio prefix's length (0 without one)


@torch.no_grad()
def reference_synthesize(
    ref: ReferenceTts,
    scripts: list[list[str]],
    voices: list[list[Path]],
    cfg: float = 2.0,
    temp: float = 0.0,
    n_q: int | None = None,
) -> ReferenceResult:
    """``TTSModel.generate`` on a batch, decoded and cut as ``simple_generate`` does.

    For a multi-speaker checkpoint ``voices[b]`` are embedding files and ``cfg`` is the
    distilled-CFG condition; otherwise ``voices[b]`` is one wav file (``get_prefix``, audio
    prefix) and ``cfg`` the direct CFG coefficient, as ``simple_generate`` uses them.
    """
    model = reference_model(ref, temp, n_q)
    dep_q = ref.lm.dep_q
    entries = [model.prepare_script(script, padding_between=1) for script in scripts]
    prefixes = None
    if model.multi_speaker:
        attributes = [model.make_condition_attributes(list(v), cfg_coef=cfg) for v in voices]
    else:
        attributes = []
        model.cfg_coef = cfg
        prefixes = [model.get_prefix(v[0]) for v in voices]
    try:
        result = model.generate(entries, attributes, prefixes=prefixes)
    finally:
        ref.lm.dep_q = dep_q
    prefix_frames = [0] * len(scripts) if prefixes is None else [p.shape[-1] for p in prefixes]
    stacked = torch.cat(result.frames, dim=2)  # [B, 1 + n_q, T]
    with model.mimi.streaming(len(scripts)):
        pcms = [
            torch.clip(model.mimi.decode(frame[:, 1:, :]), -1, 1)
            for frame in result.frames[model.delay_steps :]
        ]
    pcms = pcms[2:]
    out = [
        torch.cat([p[i, 0] for p in pcms[prefix_frames[i] : result.end_steps[i]]]).numpy()
        for i in range(len(scripts))
    ]
    return ReferenceResult(
        [stacked[i] for i in range(len(scripts))],
        out,
        result.all_transcripts,
        result.end_steps,
        prefix_frames,
    )
