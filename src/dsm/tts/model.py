"""Text-to-speech: ``dsm.load_tts(...)`` and :class:`TextToSpeech`.

::

    tts = dsm.load_tts()                                  # kyutai/tts-1.6b-en_fr
    speech = tts.synthesize("Hello world!", voice="expresso/ex03-ex01_happy_001_channel1_334s.wav")
    speech.pcm, speech.sample_rate, speech.words          # float32 24 kHz mono, timed words
    many = tts.synthesize(["One.", "Two."])               # one batch, a list of results
    dialog = tts.synthesize_dialog(["Hi!", "Hello."], voices=[voice_a, voice_b])

    with tts.stream(voice=...) as session:                # text in as it arrives
        for chunk in llm_tokens:
            for event in session.push(chunk):             # AudioChunk (80 ms) or Word
                ...
        for event in session.end():
            ...

Generation follows the reference ``TTSModel`` (model-spec §5): entries and the state machine of
:mod:`dsm.tts.entries` / :mod:`dsm.tts.state_machine`, the slot engine of :mod:`dsm.tts.engine`.

Voices: checkpoints with a speaker conditioner (tts-1.6b-en_fr) take precomputed embeddings
(:mod:`dsm.tts.voices`); checkpoints without one (tts-0.75b-en-public) take a recording of the
voice, forced as an audio prefix (:mod:`dsm.tts.prefix`)::

    tts = dsm.load_tts("kyutai/tts-0.75b-en-public")
    speech = tts.synthesize("Hello world!", voice="my_voice.wav")   # or a voice-repo .wav name
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from dsm.audio.encode import write_wav
from dsm.checkpoint import CheckpointConfig, open_checkpoint
from dsm.errors import CheckpointError, DsmError
from dsm.mimi import FRAME_RATE, SAMPLE_RATE, MimiCodec
from dsm.models.conditioners import Conditions, LUTConditioner, TensorConditioner
from dsm.models.lm import LMModel
from dsm.runtime import default_device
from dsm.stt.words import Word
from dsm.tokenizer import TextTokenizer
from dsm.tts.engine import TtsEngine
from dsm.tts.entries import Entry, EntryMaker, TextError, script_to_entries
from dsm.tts.prefix import load_voice_prefix
from dsm.tts.session import TtsSession
from dsm.tts.slot_model import Voice
from dsm.tts.state_machine import StateMachine
from dsm.tts.voices import (
    DEFAULT_VOICE,
    DEFAULT_VOICE_REPO,
    VoiceError,
    list_voices,
    load_voice_embedding,
    resolve_voice,
    voice_suffix,
)

__all__ = ["DEFAULT_TTS", "Speech", "TextToSpeech", "Voice", "load_tts", "write_wav"]

DEFAULT_TTS = "kyutai/tts-1.6b-en_fr"
SPEAKER_CONDITION = "speaker_wavs"  # tensor conditioner of the voice embeddings (cross-attended)
CFG_CONDITION = "cfg"  # LUT of CFG-distilled checkpoints: the guidance strength as "2.0"
CONTROL_CONDITION = "control"  # LUT always set to "ok" by the reference
EMBEDDING_EXT = ".safetensors"


@dataclass
class Speech:
    """One synthesized utterance.

    Attributes:
        pcm: float32 ``[S]`` mono audio at ``sample_rate`` (24 kHz), in [-1, 1].
        sample_rate: 24000.
        words: the words with ``start``/``end`` in seconds of ``pcm``.
        tokens: ``[1 + n_q, T]`` int64 generated frames (text stream first: the multiplexed fed
            token; audio ``-1`` before the audio delay), for inspection.
        truncated: generation hit the step limit before the end of the text.
    """

    pcm: np.ndarray
    sample_rate: int
    words: list[Word] = field(default_factory=list)
    tokens: np.ndarray | None = None
    truncated: bool = False

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return len(self.pcm) / self.sample_rate

    def save(self, path: str | Path) -> None:
        """Write the audio as a 16-bit wav file."""
        write_wav(path, self.pcm, self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        return {"duration": round(self.duration, 3), "words": [w.to_dict() for w in self.words]}


def load_tts(
    source: str | Path = DEFAULT_TTS,
    *,
    voice_repo: str | Path = DEFAULT_VOICE_REPO,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    n_q: int | None = None,
    revision: str | None = None,
    config: str | Path | None = None,
    lm_weights: str | Path | None = None,
    mimi_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    quantize: str | None = None,
    lora: str | Path | None = None,
) -> TextToSpeech:
    """Load a text-to-speech checkpoint (hub repo id or local directory).

    Args:
        source: e.g. ``"kyutai/tts-1.6b-en_fr"`` or a directory with its ``config.json``.
        voice_repo: where voice names are looked up: a hub repo id or a local directory.
        device: default CUDA when available, else CPU.
        dtype: LM dtype; bfloat16 on CUDA and float32 on CPU by default.
        n_q: audio codebooks to generate (default all; fewer is faster, lower quality).
        revision, config, lm_weights, mimi_weights, tokenizer, quantize, lora: as for
            :func:`dsm.load_stt`.
    """
    from dsm.lm import load_lm_from_files
    from dsm.mimi import load_mimi

    ckpt = open_checkpoint(
        source,
        revision=revision,
        config=config,
        lm_weights=lm_weights,
        mimi_weights=mimi_weights,
        tokenizer=tokenizer,
    )
    cfg = ckpt.config
    if cfg.tts is None or cfg.lm.dep_q == 0:
        raise CheckpointError(
            f"{source} is a {cfg.model_type!r} checkpoint without tts_config/depformer, not "
            f"text-to-speech; use a TTS checkpoint such as {DEFAULT_TTS}"
        )
    dev = default_device(device)
    lm = load_lm_from_files(
        cfg, ckpt.lm_file(), device=dev, dtype=dtype, quantize=quantize, lora=lora
    )
    codec = load_mimi(ckpt.mimi_file(), device=dev)
    text_tokenizer = TextTokenizer(ckpt.tokenizer_file())
    return TextToSpeech(
        lm, codec, text_tokenizer, cfg, voice_repo=voice_repo, n_q=n_q, name=str(source)
    )


class TextToSpeech:
    """A loaded TTS model: the DSM LM, Mimi, the tokenizer and the checkpoint's TTS settings.

    ``max_padding``, ``initial_padding``, ``final_padding`` and ``padding_bonus`` are the
    reference's ``TTSModel.from_checkpoint_info`` defaults (8, 2, 4, 0).
    """

    def __init__(
        self,
        lm: LMModel,
        codec: MimiCodec,
        tokenizer: TextTokenizer,
        config: CheckpointConfig,
        *,
        voice_repo: str | Path = DEFAULT_VOICE_REPO,
        n_q: int | None = None,
        name: str = "",
        max_padding: int = 8,
        initial_padding: int = 2,
        final_padding: int = 4,
        padding_bonus: float = 0.0,
    ) -> None:
        if config.tts is None:
            raise CheckpointError(f"{name or 'this checkpoint'} has no tts_config")
        self.lm = lm.eval()
        self.codec = codec
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.voice_repo = voice_repo
        self.n_q = lm.dep_q if n_q is None else n_q
        if not 0 < self.n_q <= lm.dep_q:
            raise DsmError(f"n_q must be in [1, {lm.dep_q}], got {self.n_q}")
        tts = config.tts
        # The reference's expression, float rounding included (1.28 s -> 16 steps).
        self.delay_steps = int(tts.audio_delay * FRAME_RATE)
        self.max_speakers = tts.max_speakers
        self.final_padding = final_padding
        self.padding_bonus = padding_bonus
        self.machine = StateMachine(
            card=lm.text_card + 1,
            second_stream_ahead=tts.second_stream_ahead,
            max_padding=max_padding,
            initial_padding=initial_padding,
        )
        provider = lm.condition_provider
        self._conditioners = dict(provider.conditioners.items()) if provider is not None else {}
        self.multi_speaker = SPEAKER_CONDITION in self._conditioners
        cfg_lut = self._conditioners.get(CFG_CONDITION)
        self.cfg_values: tuple[float, ...] = ()
        if isinstance(cfg_lut, LUTConditioner):
            self.cfg_values = tuple(sorted(float(v) for v in cfg_lut.possible_values))
        self.voice_suffix = voice_suffix(config.model_id) if self.multi_speaker else ""
        self._embeddings: dict[str, torch.Tensor] = {}
        self._prefixes: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- properties

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        return FRAME_RATE

    @property
    def cfg_distilled(self) -> bool:
        """The checkpoint takes the CFG strength as a condition (no doubled batch)."""
        return bool(self.cfg_values)

    @property
    def uses_prefix(self) -> bool:
        """Voices are audio prefixes (recordings), not speaker embeddings."""
        return not self.multi_speaker

    def voices(self, *, remote: bool = False) -> list[str]:
        """Voice names of the voice repo made for this checkpoint (local cache / directory;
        ``remote=True`` also asks the hub): its embeddings, or its ``.wav`` recordings for a
        checkpoint conditioned on an audio prefix."""
        if self.uses_prefix:
            names = list_voices(self.voice_repo, ".wav", remote=remote)
            return [name + ".wav" for name in names]
        return list_voices(self.voice_repo, self.voice_suffix or EMBEDDING_EXT, remote=remote)

    # ----------------------------------------------------------------------------- text

    def entries(self, turns: Sequence[str]) -> list[Entry]:
        """Entries of a script (``turns[0]`` = main speaker); raises on unspeakable text."""
        entries = script_to_entries(
            turns,
            self.tokenizer.encode,
            multi_speaker=self.multi_speaker,
            padding_between=1,
            frame_rate=FRAME_RATE,
        )
        if not any(entry.tokens for entry in entries):
            raise TextError("the text is empty: give at least one word to say")
        return entries

    def entry_maker(self) -> EntryMaker:
        return EntryMaker(self.tokenizer.encode, self.multi_speaker, 1, FRAME_RATE)

    # ----------------------------------------------------------------------------- conditions

    def check_cfg(self, cfg: float) -> float | None:
        """The guidance strength: returns the LUT value to condition on (CFG-distilled models)
        or None (direct CFG / none)."""
        cfg = float(cfg)
        if self.cfg_values:
            if cfg not in self.cfg_values:
                valid = ", ".join(f"{v:g}" for v in self.cfg_values)
                raise DsmError(
                    f"cfg {cfg:g} is not supported by this checkpoint; use one of {valid}"
                )
            return cfg
        if cfg < 1.0:
            raise DsmError(f"cfg must be >= 1 (1 disables guidance), got {cfg:g}")
        return None

    def voice_embedding(self, voice: Voice) -> torch.Tensor:
        """``[1, dim, T]`` float32 embedding of ``voice`` (checked against the checkpoint)."""
        if self.uses_prefix:
            raise VoiceError(
                f"{self.name or 'this checkpoint'} has no speaker conditioner: its voices are "
                "audio prefixes (use voice_prefix)"
            )
        if isinstance(voice, torch.Tensor):
            emb = voice.detach().float()
            if emb.dim() == 2:
                emb = emb[None]
            return emb
        local = _local_file(voice)
        explicit = isinstance(voice, Path) or str(voice).startswith("file://")
        if explicit and local is not None and local.suffix != EMBEDDING_EXT:
            raise self._not_an_embedding(local)
        try:
            path = resolve_voice(voice, repo=self.voice_repo, suffix=self.voice_suffix)
        except VoiceError:
            # Not a voice of the repo; a recording given by path gets a clearer message.
            if local is not None and local.suffix != EMBEDDING_EXT:
                raise self._not_an_embedding(local) from None
            raise
        key = str(path)
        if key not in self._embeddings:
            speaker = self._conditioners[SPEAKER_CONDITION]
            assert isinstance(speaker, TensorConditioner)
            self._embeddings[key] = load_voice_embedding(
                path, model_id=self.config.model_id, dim=int(speaker.dim)
            )
        return self._embeddings[key]

    def speaker_shape(self, voice: Voice | None = None) -> tuple[int, int, int] | None:
        """``(1, dim, T)``, the shape of ``voice``'s embedding (None: the default voice): what
        every slot of an engine conditioned like it takes. None for a checkpoint conditioned on
        an audio prefix."""
        if self.uses_prefix:
            return None
        batch, dim, frames = self.voice_embedding(DEFAULT_VOICE if voice is None else voice).shape
        return int(batch), int(dim), int(frames)

    def _not_an_embedding(self, path: Path) -> VoiceError:
        return VoiceError(
            f"{path} is not a voice embedding: {self.name or 'this checkpoint'} takes "
            f"precomputed speaker embeddings ({EMBEDDING_EXT} files, or names of the voice repo, "
            "see `dsm voices`), not recordings; a voice given as audio needs a checkpoint "
            "conditioned on an audio prefix, such as kyutai/tts-0.75b-en-public"
        )

    def voice_prefix(self, voice: Voice) -> torch.Tensor:
        """The voice prefix codes ``[n_q, P]`` (int64, on the LM's device) of a recording, for
        a checkpoint conditioned on an audio prefix (see :mod:`dsm.tts.prefix`).

        ``voice``: an audio file (path, ``file://path``, any format FFmpeg reads, resampled to
        24 kHz; channels are averaged), a ``.wav`` name of the voice repo, ``hf://owner/repo/f``,
        or prefix codes already computed by this method.
        """
        if not self.uses_prefix:
            raise VoiceError(
                f"{self.name or 'this checkpoint'} is conditioned on speaker embeddings, not on "
                "an audio prefix: give a voice name or an embedding .safetensors file"
            )
        n_q = self.lm.n_q
        if self.n_q != n_q:
            raise VoiceError(
                f"a voice prefix needs all {n_q} codebooks of the checkpoint generated, not "
                f"n_q={self.n_q} (the reference's prefixes have every codebook)"
            )
        if isinstance(voice, torch.Tensor):
            if voice.dtype.is_floating_point or voice.dim() != 2 or voice.shape[0] != n_q:
                raise VoiceError(
                    f"a voice prefix tensor must be integer codes [{n_q}, frames] (see "
                    f"voice_prefix), got {voice.dtype} {list(voice.shape)}"
                )
            return voice.to(device=self.lm.device, dtype=torch.long)
        path = _local_file(voice)
        if path is None:
            path = resolve_voice(voice, repo=self.voice_repo, suffix="")
        if path.suffix == EMBEDDING_EXT:
            raise VoiceError(
                f"{path.name} is a speaker embedding, but {self.name or 'this checkpoint'} is "
                "conditioned on an audio prefix: give a recording of the voice (e.g. a .wav "
                "file of a few seconds of speech)"
            )
        key = str(path)
        if key not in self._prefixes:
            codes = load_voice_prefix(path, self.codec, n_q)
            self._prefixes[key] = codes.to(self.lm.device)
        return self._prefixes[key]

    def slot_prefix(self, voices: Sequence[Voice | None]) -> torch.Tensor | None:
        """The audio prefix of a slot whose speakers are ``voices`` (None for checkpoints with
        speaker embeddings, or when no voice is given)."""
        if not self.uses_prefix:
            return None
        given = [v for v in voices if v is not None]
        if len(given) > 1:
            raise VoiceError(
                f"{self.name or 'this checkpoint'} takes one voice (an audio prefix), "
                f"got {len(given)}"
            )
        return self.voice_prefix(given[0]) if given else None

    def slot_conditions(self, voice: Voice | None, cfg: float) -> Conditions | None:
        """The condition rows of a slot speaking with ``voice`` (None for a checkpoint without
        conditioners); a voice given as an audio prefix is not part of them (see
        :meth:`slot_prefix`)."""
        if not self._conditioners:
            return None
        return self.conditions([voice] if self.multi_speaker else [], cfg)

    def conditions(self, voices: Sequence[Voice | None], cfg: float) -> Conditions:
        """One slot's condition rows: voices in speaker slots 0, 1, ... and the cfg value.

        With direct CFG (``cfg != 1`` on a model that is not CFG-distilled) a second, null row
        follows (every condition dropped). Checkpoints conditioned on an audio prefix take no
        voice here: see :meth:`slot_prefix`.
        """
        lut_cfg = self.check_cfg(cfg)
        if not self.multi_speaker and any(v is not None for v in voices):
            raise VoiceError(
                f"{self.name or 'this checkpoint'} has no speaker conditioner: its voice is an "
                "audio prefix, given to the engine's start_slot(prefix=tts.slot_prefix(voices))"
            )
        text: dict[str, list[str | None]] = {}
        tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        speaker_len = 0
        for name, module in self._conditioners.items():
            if isinstance(module, LUTConditioner):
                value: str | None = None
                if name == CONTROL_CONDITION:
                    value = "ok"
                elif name == CFG_CONDITION and lut_cfg is not None:
                    value = format(lut_cfg, ".1f")
                text[name] = [value]
            elif isinstance(module, TensorConditioner) and name == SPEAKER_CONDITION:
                tensor, mask = self._speaker_tensor(voices, int(module.dim))
                speaker_len = tensor.shape[1]
                tensors[name] = (tensor, mask)
            else:
                raise DsmError(f"unsupported conditioner {name!r} in this checkpoint")
        rows = self.lm.make_conditions(text, tensors, 1)
        if lut_cfg is None and float(cfg) != 1.0:
            lengths = {SPEAKER_CONDITION: speaker_len} if speaker_len else None
            rows = Conditions.cat([rows, self.lm.null_conditions(1, lengths)])
        return rows

    def _speaker_tensor(
        self, voices: Sequence[Voice | None], dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1, max_speakers * T, dim]`` and mask: each voice in its speaker slot (§5.5)."""
        wanted = list(voices) or [None]
        if wanted == [None]:
            wanted = [DEFAULT_VOICE]
        if len(wanted) > self.max_speakers:
            raise VoiceError(f"at most {self.max_speakers} voices, got {len(wanted)}")
        embs = [None if v is None else self.voice_embedding(v) for v in wanted]
        lengths = {int(e.shape[2]) for e in embs if e is not None}
        if len(lengths) != 1:
            raise VoiceError(f"voice embeddings must all have the same length, got {lengths}")
        T = lengths.pop()
        tensor = torch.zeros(1, self.max_speakers, T, dim)
        mask = torch.zeros(1, self.max_speakers, T, dtype=torch.bool)
        for index, emb in enumerate(embs):
            if emb is not None:
                if emb.shape[1] != dim:
                    raise VoiceError(f"voice embedding width {emb.shape[1]} != {dim}")
                tensor[0, index] = emb[0].transpose(0, 1)
                mask[0, index] = True
        return tensor.view(1, -1, dim), mask.view(1, -1)

    # ----------------------------------------------------------------------------- generation

    def make_engine(
        self,
        batch_size: int,
        conditions: Conditions | None,
        *,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
        record_tokens: bool = False,
    ) -> TtsEngine:
        """A slot engine (see :class:`~dsm.tts.engine.TtsEngine`) with template ``conditions``
        for ``batch_size`` slots (all conditional rows, then the null rows with direct CFG)."""
        direct = 1.0 if self.cfg_values else float(cfg)
        return TtsEngine(
            self.lm,
            self.codec,
            self.machine,
            batch_size=batch_size,
            delay_steps=self.delay_steps,
            conditions=conditions,
            n_q=self.n_q,
            cfg_coef=direct,
            final_padding=self.final_padding,
            padding_bonus=self.padding_bonus,
            temperature=temperature,
            seed=seed,
            record_tokens=record_tokens,
        )

    def batch_conditions(self, rows: list[Conditions]) -> Conditions | None:
        """Engine template conditions from per-slot rows (conditional rows first, then the
        null rows with direct CFG); None for a model without conditioners."""
        if not self._conditioners:
            return None
        if rows[0].batch_size == 2:  # direct CFG: conditional rows first, null rows after
            cond = [
                Conditions(
                    r.sum[:1] if r.sum is not None else None,
                    r.cross[:1] if r.cross is not None else None,
                )
                for r in rows
            ]
            null = [
                Conditions(
                    r.sum[1:] if r.sum is not None else None,
                    r.cross[1:] if r.cross is not None else None,
                )
                for r in rows
            ]
            return Conditions.cat(cond + null)
        return Conditions.cat(rows)

    @torch.no_grad()
    def _generate(
        self,
        scripts: list[list[str]],
        voices: list[list[Voice | None]],
        *,
        cfg: float,
        temperature: float,
        seed: int | None,
    ) -> list[Speech]:
        entries = [self.entries(script) for script in scripts]
        prefixes = [self.slot_prefix(v) for v in voices]
        rows = [self.conditions(v if self.multi_speaker else [], cfg) for v in voices]
        B = len(scripts)
        engine = self.make_engine(
            B,
            self.batch_conditions(rows),
            cfg=cfg,
            temperature=temperature,
            seed=seed,
            record_tokens=True,
        )
        pcm: list[list[np.ndarray]] = [[] for _ in range(B)]
        words: list[list[Word]] = [[] for _ in range(B)]
        frames: list[list[torch.Tensor]] = [[] for _ in range(B)]
        truncated = [False] * B
        with engine:
            for b in range(B):
                engine.start_slot(b, entries=entries[b], complete=True, prefix=prefixes[b])
            while engine.busy:
                for out in engine.step():
                    b = out.slot
                    if out.pcm is not None:
                        pcm[b].append(out.pcm)
                    words[b].extend(out.words)
                    if out.tokens is not None:
                        frames[b].append(out.tokens)
                    truncated[b] = truncated[b] or out.truncated
        results = []
        for b in range(B):
            audio = np.concatenate(pcm[b]) if pcm[b] else np.zeros(0, dtype=np.float32)
            tokens = torch.stack(frames[b], dim=1).numpy() if frames[b] else None
            results.append(Speech(audio, SAMPLE_RATE, words[b], tokens, truncated[b]))
        return results

    @overload
    def synthesize(  # type: ignore[overload-overlap]
        self,
        text: str,
        *,
        voice: Voice | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> Speech: ...

    @overload
    def synthesize(
        self,
        text: Sequence[str],
        *,
        voice: Voice | Sequence[Voice] | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> list[Speech]: ...

    def synthesize(
        self,
        text: str | Sequence[str],
        *,
        voice: Voice | Sequence[Voice] | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> Speech | list[Speech]:
        """Speak ``text`` (a :class:`Speech`), or each text of a list as one batch (a list).

        Args:
            text: the text; ``<break time="1.5s"/>`` inserts a pause.
            voice: a voice name of the voice repo, an embedding ``.safetensors`` file, or a list
                with one voice per text; default: the reference scripts' default voice. For a
                checkpoint conditioned on an audio prefix (:attr:`uses_prefix`), a recording
                of the voice (audio file or ``.wav`` name of the voice repo; default: none),
                whose audio is not part of the output.
            cfg: guidance strength; for CFG-distilled checkpoints one of :attr:`cfg_values`.
            temperature: sampling temperature of text and audio (0: greedy).
            seed: makes sampling reproducible.
        """
        single = isinstance(text, str)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise TextError("no text given")
        if isinstance(voice, (list, tuple)):
            if len(voice) != len(texts):
                raise DsmError(f"{len(voice)} voices for {len(texts)} texts")
            voice_list: list[Voice | None] = list(voice)
        else:
            voice_list = [voice] * len(texts)  # type: ignore[list-item]
        results = self._generate(
            [[t] for t in texts],
            [[v] for v in voice_list],
            cfg=cfg,
            temperature=temperature,
            seed=seed,
        )
        return results[0] if single else results

    def synthesize_dialog(
        self,
        turns: Sequence[str],
        *,
        voices: Sequence[Voice],
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> Speech:
        """A dialog: ``turns`` alternate between ``voices[0]`` (first turn) and ``voices[1]``."""
        if not self.multi_speaker:
            raise DsmError(f"{self.name or 'this checkpoint'} does not support speaker turns")
        if len(voices) != 2:
            raise VoiceError(f"a dialog takes two voices, got {len(voices)}")
        return self._generate(
            [list(turns)], [list(voices)], cfg=cfg, temperature=temperature, seed=seed
        )[0]

    def stream(
        self,
        *,
        voice: Voice | None = None,
        cfg: float = 2.0,
        temperature: float = 0.6,
        seed: int | None = None,
    ) -> TtsSession:
        """A live session: push text as it arrives, get 80 ms audio chunks and words."""

        return TtsSession(self, voice=voice, cfg=cfg, temperature=temperature, seed=seed)


def _local_file(voice: Voice) -> Path | None:
    """``voice`` as a local file: a ``Path``, ``file://...``, or a string naming an existing
    file (as the reference's ``hf_get(..., check_local_file_exists=True)``); else None."""
    if isinstance(voice, Path):
        return voice
    if not isinstance(voice, str):
        return None
    if voice.startswith("file://"):
        return Path(voice.removeprefix("file://")).expanduser()
    path = Path(voice).expanduser()
    return path if path.is_file() else None
