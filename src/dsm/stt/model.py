"""Speech-to-text: ``dsm.load_stt(...)`` and :class:`SpeechToText`.

``transcribe`` handles one input; ``transcribe_many`` runs many with continuous batching (a slot
freed by a finished input takes the next one at once); ``stream`` opens a live session that
takes pcm chunks of any length and sample rate and returns events as soon as the model emits
them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm.checkpoint import CheckpointConfig, open_checkpoint
from dsm.errors import CheckpointError, DsmError
from dsm.mimi import FRAME_SIZE, MimiCodec
from dsm.models.lm import LMModel
from dsm.runtime import default_device
from dsm.stt.align import AlignConstraint, AlignTarget, align_target
from dsm.stt.engine import SttEngine
from dsm.stt.framing import plan_feed
from dsm.stt.jobs import TranscriptionJob
from dsm.stt.prefetch import DEFAULT_CHUNK, CodeQueue
from dsm.stt.session import SttSession
from dsm.stt.transcript import Transcript, TranscriptionFailure
from dsm.stt.vad import VAD_CHECKPOINT, VadOptions
from dsm.stt.words import Word
from dsm.tokenizer import TextTokenizer

__all__ = ["AudioInput", "SpeechToText", "load_stt"]

DEFAULT_STT = "kyutai/stt-1b-en_fr"
AudioInput = str | Path | np.ndarray | torch.Tensor


def load_stt(
    source: str | Path = DEFAULT_STT,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    config: str | Path | None = None,
    lm_weights: str | Path | None = None,
    mimi_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    quantize: str | None = None,
    lora: str | Path | None = None,
) -> SpeechToText:
    """Load a speech-to-text checkpoint (hub repo id or local directory).

    ``dtype`` defaults to bfloat16 on CUDA and float32 on CPU. The other keyword arguments
    replace single files of the checkpoint (paths or ``hf://owner/repo/file``). ``quantize``
    (``int8`` or ``int4``) quantizes the LM's projections at load (see
    :func:`dsm.lm.load_lm_from_files`; a checkpoint written by ``dsm quantize`` loads quantized
    without it). ``lora``: a LoRA adapter directory (``dsm finetune stt`` output) merged into
    the LM at load.
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
    if cfg.lm.dep_q != 0 or cfg.model_type not in ("stt", "moshi"):
        raise CheckpointError(
            f"{source} is a {cfg.model_type!r} checkpoint (dep_q={cfg.lm.dep_q}), not speech-to-"
            f"text; use an STT checkpoint such as {DEFAULT_STT} or kyutai/stt-2.6b-en"
        )
    dev = default_device(device)
    lm = load_lm_from_files(
        cfg, ckpt.lm_file(), device=dev, dtype=dtype, quantize=quantize, lora=lora
    )
    codec = load_mimi(ckpt.mimi_file(), device=dev, num_codebooks=cfg.lm.n_q)
    text_tokenizer = TextTokenizer(ckpt.tokenizer_file())
    return SpeechToText(lm, codec, text_tokenizer, cfg, name=str(source))


class SpeechToText:
    """A loaded STT model: Mimi, the DSM language model and the text tokenizer."""

    def __init__(
        self,
        lm: LMModel,
        codec: MimiCodec,
        tokenizer: TextTokenizer,
        config: CheckpointConfig,
        *,
        name: str = "",
    ) -> None:
        self.lm = lm.eval()
        self.codec = codec
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        stt = config.stt
        self.prefix_seconds = stt.audio_silence_prefix_seconds if stt else 1.0
        self.delay_seconds = stt.audio_delay_seconds if stt else 5.0
        self.padding_id = config.text_padding_token_id
        self.vad_heads = config.lm.extra_heads_num_heads

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def has_vad(self) -> bool:
        """Whether the checkpoint has semantic-VAD heads."""
        return self.vad_heads > 0

    def _check_vad(self, vad: bool | VadOptions | None) -> VadOptions | None:
        if vad is None or vad is False:
            return None
        if not self.has_vad:
            raise DsmError(
                f"the checkpoint {self.name or ''} has no semantic-VAD heads; use "
                f"{VAD_CHECKPOINT}, which has them"
            )
        return VadOptions() if vad is True else vad

    def _prompt(
        self, prompt_text: str | None, prompt_audio: AudioInput | None, sample_rate: int | None
    ) -> tuple[list[int], np.ndarray | None]:
        tokens = self.tokenizer.encode(prompt_text) if prompt_text else []
        audio = None
        if prompt_audio is not None:
            from dsm.audio import load_audio

            audio = load_audio(prompt_audio, sample_rate=sample_rate)
            if audio.size == 0:
                raise DsmError("the audio prompt has no samples")
        return tokens, audio

    def _job(
        self,
        item: AudioInput,
        *,
        sample_rate: int | None,
        prompt: tuple[list[int], np.ndarray | None],
        cut_prompt: bool,
        vad: VadOptions | None,
    ) -> TranscriptionJob:
        name, chunks = _open_input(item, sample_rate)
        tokens, prompt_audio = prompt
        plan = plan_feed(
            self.prefix_seconds,
            self.delay_seconds,
            0 if prompt_audio is None else int(prompt_audio.shape[0]),
        )
        return TranscriptionJob(
            name,
            chunks,
            plan,
            self.tokenizer,
            padding_id=self.padding_id,
            prompt_audio=prompt_audio,
            prompt_tokens=tokens,
            cut_prompt=cut_prompt,
            vad=vad,
            vad_heads=self.vad_heads,
        )

    def transcribe(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        vad: bool | VadOptions | None = None,
        prompt_text: str | None = None,
        prompt_audio: AudioInput | None = None,
        prompt_sample_rate: int | None = None,
        cut_prompt: bool = True,
    ) -> Transcript:
        """Transcribe one input: a file path, or a numpy array / tensor (give ``sample_rate``).

        Raises :class:`~dsm.errors.DsmError` (or ``ValueError``) if the input can't be read.
        """
        result = self.transcribe_many(
            [audio],
            sample_rate=sample_rate,
            vad=vad,
            prompt_text=prompt_text,
            prompt_audio=prompt_audio,
            prompt_sample_rate=prompt_sample_rate,
            cut_prompt=cut_prompt,
            batch_size=1,
            progress=False,
        )[0]
        if isinstance(result, TranscriptionFailure):
            if result.error is not None:
                raise result.error
            raise DsmError(str(result))
        return result

    def transcribe_many(
        self,
        inputs: Sequence[AudioInput],
        *,
        batch_size: int = 8,
        sample_rate: int | None = None,
        vad: bool | VadOptions | None = None,
        prompt_text: str | None = None,
        prompt_audio: AudioInput | None = None,
        prompt_sample_rate: int | None = None,
        cut_prompt: bool = True,
        progress: bool = True,
        on_result: Callable[[int, Transcript | TranscriptionFailure], None] | None = None,
        encode_chunk: int = DEFAULT_CHUNK,
        on_audio: Callable[[int, float], None] | None = None,
        on_word: Callable[[int, Word], None] | None = None,
    ) -> list[Transcript | TranscriptionFailure]:
        """Transcribe many inputs with continuous batching; results in input order.

        An input that can't be read gives a :class:`TranscriptionFailure` in its place and
        does not stop the others. ``on_result(index, result)`` is called as each one finishes.
        ``encode_chunk``: frames of each input encoded per Mimi call, ahead of the language
        model (:mod:`dsm.stt.prefetch`; the transcript does not depend on it).
        ``on_audio(index, seconds)`` is called after each model step of an input with the
        seconds of it heard so far (for progress bars; the last steps, for the model's delay,
        report times past the input's end). ``on_word(index, word)`` is called for each word of
        an input once its text is final: when the next word starts, or at the input's end
        (times before the transcript's final fitting).
        """
        return self._run_many(
            inputs,
            batch_size=batch_size,
            sample_rate=sample_rate,
            vad=self._check_vad(vad),
            prompt=self._prompt(prompt_text, prompt_audio, prompt_sample_rate),
            cut_prompt=cut_prompt,
            progress=progress,
            on_result=on_result,
            encode_chunk=encode_chunk,
            on_audio=on_audio,
            on_word=on_word,
        )

    def _run_many(
        self,
        inputs: Sequence[AudioInput],
        *,
        batch_size: int,
        sample_rate: int | None,
        vad: VadOptions | None,
        prompt: tuple[list[int], np.ndarray | None],
        cut_prompt: bool,
        progress: bool,
        on_result: Callable[[int, Transcript | TranscriptionFailure], None] | None,
        encode_chunk: int,
        on_audio: Callable[[int, float], None] | None = None,
        on_word: Callable[[int, Word], None] | None = None,
        targets: Sequence[AlignTarget] | None = None,
    ) -> list[Transcript | TranscriptionFailure]:
        """The continuous-batching loop of :meth:`transcribe_many`; with ``targets`` (one per
        input) each slot is forced to write its input's transcript (:mod:`dsm.stt.align`)."""
        vad_options = vad
        results: list[Transcript | TranscriptionFailure | None] = [None] * len(inputs)
        if not inputs:
            return []
        B = max(1, min(batch_size, len(inputs)))
        bar = _progress(len(inputs), progress)

        def finish(index: int, result: Transcript | TranscriptionFailure) -> None:
            results[index] = result
            if on_result is not None:
                on_result(index, result)
            if bar is not None:
                bar.update(1)

        pending: deque[int] = deque(range(len(inputs)))
        slots: list[tuple[int, TranscriptionJob] | None] = [None] * B
        constraint = None
        if targets is not None:
            constraint = AlignConstraint(
                B, max(len(t.tokens) for t in targets), padding_id=self.padding_id,
                marker_id=int(self.lm.end_of_text_padding_id),
                device=next(iter(self.lm.parameters())).device,
            )  # fmt: skip
        engine = SttEngine(
            self.codec, self.lm, B, max_prompt_tokens=len(prompt[0]), constraint=constraint
        )
        with engine:
            queue = CodeQueue(B, engine.n_q, encode_chunk, engine.device)
            failed: dict[int, BaseException] = {}
            seen: dict[int, int] = {}  # words of each input passed to on_word

            def next_frame(b: int) -> np.ndarray | None:
                entry = slots[b]
                assert entry is not None
                try:
                    return entry[1].next_frame()
                except (DsmError, ValueError, OSError, RuntimeError) as exc:
                    failed[b] = exc
                    return None

            def drop(b: int, result: Transcript | TranscriptionFailure) -> None:
                entry = slots[b]
                assert entry is not None
                finish(entry[0], result)
                slots[b] = None

            while pending or any(s is not None for s in slots):
                started = _fill_slots(self, engine, slots, pending, prompt, cut_prompt,
                                      vad_options, sample_rate, inputs, finish)  # fmt: skip
                if constraint is not None and targets is not None:
                    for b in started:
                        constraint.set(b, targets[_index(slots, b)])
                for b in started:
                    queue.clear(b)
                live = [b for b, s in enumerate(slots) if s is not None]
                if not live:
                    break
                # A slot's step 0 hears no audio; from step 1 on it takes one code per step.
                hungry = [b for b in live if _job(slots, b).step > 0]
                if queue.needs_refill(hungry):
                    feeding = [b for b in live if not _job(slots, b).fed_all]
                    queue.refill(feeding, next_frame, engine.encode_frames)
                for b, exc in failed.items():
                    drop(b, TranscriptionFailure(_job(slots, b).source, str(exc), exc))
                failed.clear()
                for b in hungry:
                    entry = slots[b]
                    if entry is not None and queue.count[b] == 0 and entry[1].check_done():
                        drop(b, entry[1].result())  # its last frame was a chunk's last
                active_slots = [b for b, s in enumerate(slots) if s is not None]
                if not active_slots:
                    continue
                active = torch.zeros(B, dtype=torch.bool)
                active[active_slots] = True
                codes = queue.take([b for b in active_slots if _job(slots, b).step > 0])
                out = engine.step_codes(codes, active)
                tokens = out.tokens.tolist()
                pauses = out.pause.tolist() if out.pause is not None else None
                forced = out.forced.tolist() if out.forced is not None else None
                for b in active_slots:
                    job = _job(slots, b)
                    job.consume(
                        int(tokens[b]),
                        pauses[b] if pauses is not None else None,
                        bool(forced[b]) if forced is not None else False,
                    )
                    index = _index(slots, b)
                    if job.done:
                        result = job.result()  # decodes the last pieces: the last word is final
                        _report(index, job, self.sample_rate, on_audio, on_word, seen, True)
                        drop(b, result)
                    else:
                        _report(index, job, self.sample_rate, on_audio, on_word, seen, False)
        if bar is not None:
            bar.close()
        return [r for r in results if r is not None]

    def align(self, audio: AudioInput, text: str, *, sample_rate: int | None = None) -> Transcript:
        """Time the words of ``text``, the known transcript of ``audio`` (forced alignment).

        The model decodes ``audio`` as in :meth:`transcribe` but may only write ``text``'s words,
        in order (:mod:`dsm.stt.align`); every word is placed. The result's ``words`` are
        ``text``'s words (split on whitespace) with start and end times by the same rules as
        :meth:`transcribe`; ``text`` is them joined by spaces.

        Raises :class:`~dsm.errors.DsmError` for unreadable audio, an empty transcript, a word
        the tokenizer cannot write, or a transcript longer than the audio can hold.
        """
        result = self.align_many([(audio, text)], sample_rate=sample_rate, batch_size=1)[0]
        if isinstance(result, TranscriptionFailure):
            if result.error is not None:
                raise result.error
            raise DsmError(str(result))
        return result

    def align_many(
        self,
        items: Sequence[tuple[AudioInput, str]],
        *,
        batch_size: int = 8,
        sample_rate: int | None = None,
        on_result: Callable[[int, Transcript | TranscriptionFailure], None] | None = None,
    ) -> list[Transcript | TranscriptionFailure]:
        """:meth:`align` for many ``(audio, text)`` pairs, batched like :meth:`transcribe_many`;
        a pair that fails gives a :class:`TranscriptionFailure` in its place. Every audio is
        decoded whole first (its length sets the deadline of its words), so the inputs of one
        call must fit in memory together."""
        from dsm.audio import load_audio

        results: list[Transcript | TranscriptionFailure | None] = [None] * len(items)
        plan = plan_feed(self.prefix_seconds, self.delay_seconds)
        ready: list[int] = []
        audios: list[np.ndarray] = []
        targets: list[AlignTarget] = []
        for index, (item, text) in enumerate(items):
            try:
                # Files carry their own rate: sample_rate applies to arrays only.
                rate = None if isinstance(item, (str, Path)) else sample_rate
                pcm = load_audio(item, sample_rate=rate)
                target = align_target(
                    self.tokenizer, text, plan, int(pcm.shape[0]), padding_id=self.padding_id
                )
            except (DsmError, ValueError, OSError, RuntimeError) as exc:
                results[index] = TranscriptionFailure(_name_of(item), str(exc), exc)
                if on_result is not None:
                    on_result(index, results[index])  # type: ignore[arg-type]
                continue
            ready.append(index)
            audios.append(pcm)
            targets.append(target)

        def finished(position: int, result: Transcript | TranscriptionFailure) -> None:
            index = ready[position]
            if isinstance(result, Transcript):
                result.source = _name_of(items[index][0])
                got = tuple(word.text for word in result.words)
                if got != targets[position].words:  # the constraint makes this impossible
                    raise AssertionError(f"aligned words {got} != {targets[position].words}")
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        if ready:
            self._run_many(
                audios, batch_size=batch_size, sample_rate=self.sample_rate, vad=None,
                prompt=([], None), cut_prompt=True, progress=False, on_result=finished,
                encode_chunk=DEFAULT_CHUNK, targets=targets,
            )  # fmt: skip
        return [r for r in results if r is not None]

    def stream(
        self,
        *,
        sample_rate: int | None = None,
        vad: bool | VadOptions | None = None,
        prompt_text: str | None = None,
    ) -> SttSession:
        """Open a live :class:`~dsm.stt.session.SttSession` (push pcm, receive events)."""
        return SttSession(
            self.codec,
            self.lm,
            self.tokenizer,
            plan_feed(self.prefix_seconds, self.delay_seconds),
            padding_id=self.padding_id,
            vad_heads=self.vad_heads,
            sample_rate=sample_rate or self.sample_rate,
            vad=self._check_vad(vad),
            prompt_tokens=self.tokenizer.encode(prompt_text) if prompt_text else [],
        )


def _fill_slots(
    stt: SpeechToText,
    engine: SttEngine,
    slots: list[tuple[int, TranscriptionJob] | None],
    pending: deque[int],
    prompt: tuple[list[int], np.ndarray | None],
    cut_prompt: bool,
    vad: VadOptions | None,
    sample_rate: int | None,
    inputs: Sequence[AudioInput],
    finish: Callable[[int, Transcript | TranscriptionFailure], None],
) -> list[int]:
    """Give every free slot the next input that opens (failures are reported, not raised);
    returns the slots started."""
    started: list[int] = []
    for b in range(len(slots)):
        while slots[b] is None and pending:
            index = pending.popleft()
            try:
                job = stt._job(
                    inputs[index], sample_rate=sample_rate, prompt=prompt,
                    cut_prompt=cut_prompt, vad=vad,
                )  # fmt: skip
            except (DsmError, ValueError, OSError, RuntimeError) as exc:
                finish(index, TranscriptionFailure(_name_of(inputs[index]), str(exc), exc))
                continue
            slots[b] = (index, job)
            started.append(b)
    if started:
        engine.start_slot(started, [prompt[0]] * len(started) if prompt[0] else None)
    return started


def _job(slots: list[tuple[int, TranscriptionJob] | None], b: int) -> TranscriptionJob:
    entry = slots[b]
    assert entry is not None
    return entry[1]


def _name_of(item: AudioInput) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"<{type(item).__name__} {tuple(getattr(item, 'shape', ()))}>"


def _open_input(item: AudioInput, sample_rate: int | None) -> tuple[str, Iterator[np.ndarray]]:
    """A name and the input's 24 kHz mono chunks (files are decoded incrementally)."""
    from dsm.audio import load_audio, stream_audio

    if isinstance(item, (str, Path)):
        path = Path(item)  # files carry their own rate: sample_rate applies to arrays only
        return str(path), iter(stream_audio(path, chunk_samples=FRAME_SIZE * 25))
    audio = load_audio(item, sample_rate=sample_rate)
    return _name_of(item), iter([audio])


def _report(
    index: int,
    job: TranscriptionJob,
    sample_rate: int,
    on_audio: Callable[[int, float], None] | None,
    on_word: Callable[[int, Word], None] | None,
    seen: dict[int, int],
    finished: bool,
) -> None:
    """Progress callbacks of ``transcribe_many`` after a step of input ``index``: a word is
    passed to ``on_word`` once its text is final (a later word started, or the input is
    ``finished``), since a piece without a word-start marker may still extend it."""
    if on_audio is not None:
        heard = job.step * FRAME_SIZE / sample_rate
        on_audio(index, max(0.0, heard - job.plan.input_offset_seconds))
    if on_word is not None:
        words, count = job.stream.words.words, seen.get(index, 0)
        final = len(words) if finished else len(words) - 1
        while count < final:
            on_word(index, words[count])
            count += 1
        seen[index] = count


def _index(slots: list[tuple[int, TranscriptionJob] | None], b: int) -> int:
    entry = slots[b]
    assert entry is not None
    return entry[0]


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="transcribing")
