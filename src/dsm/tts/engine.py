"""The batched TTS step: ``B`` slots of text state machine + DSM LM + streaming Mimi decoder.

Every slot is an independent utterance on its own clock (model-spec §5.4, §5.6). Slots start
(:meth:`TtsEngine.start_slot`), receive entries in pieces (:meth:`TtsEngine.push`), are told
that the text is complete (:meth:`TtsEngine.finish`) and free themselves once their audio is
out. A slot steps only when the step cannot depend on text it has not received yet: the state
machine may pop an entry at this step only if that entry (and, for a word, the two look-ahead
words) is known, or the text is complete. So streaming the text in any chunking gives the same
frames as giving it whole.

Per step, for the slots that run (an exec mask; the others keep their state bit-identical):

* the LM steps with ``n_q - dep_q`` input streams of ``-1``; the depformer is skipped (its
  tokens replaced by ``-1``) when every running slot is still before ``delay_steps``;
* text hook: the sampled text token goes through each slot's state machine (host side; the
  only per-step host synchronisation, as in the reference);
* audio hook: codebook ``q`` is forced to ``-1`` while ``offset < delay_steps + delays[q+1]``
  (one masked fill with the per-slot offsets tensor);
* the undelayed frame of time ``t = offset - max_delay`` is decoded by streaming Mimi once
  ``t >= delay_steps``; the first :data:`CLICK_FRAMES` decoded frames are dropped and the audio
  stops at the slot's ``end_step``, as the reference's ``simple_generate`` does.

A slot may start with a voice prefix ``[n_q, P]`` (checkpoints conditioned on an audio prefix,
see :mod:`dsm.tts.prefix`): its first ``P`` steps feed ``-1`` text, its audio codes are forced
to the prefix's (delayed like generated audio), and the first ``P`` output frames are cut.

Word timings are in seconds of the output audio: the word consumed at step ``s`` starts at
``(s - CLICK_FRAMES - P) / 12.5``; it ends when the next entry (word or pause) is consumed, or
at the end of the text.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from dsm.generate.lmgen import StreamingGenerator
from dsm.mimi import FRAME_RATE, MimiCodec, MimiStream
from dsm.models.conditioners import Conditions
from dsm.models.embeddings import ZERO_TOKEN_ID
from dsm.models.lm import LMModel
from dsm.stt.words import Word
from dsm.tts.entries import Entry
from dsm.tts.prefix import PrefixTable
from dsm.tts.state_machine import MachineState, StateMachine

__all__ = ["CLICK_FRAMES", "SlotOutput", "TtsEngine"]

CLICK_FRAMES = 2  # decoded frames dropped at the start (the reference removes a click there)
DEFAULT_MAX_STEPS = 30000  # the reference's max_gen_length (40 minutes)


@dataclass
class SlotOutput:
    """What one step produced for one slot.

    ``pcm``: the next 80 ms of output audio (float32 ``[1920]``, clipped to [-1, 1]) or None;
    ``words``: words whose time span became known; ``done``: the slot finished (its audio is all
    out) and is free again; ``truncated``: it stopped at the step limit before the text's end.
    """

    slot: int
    pcm: np.ndarray | None = None
    words: list[Word] = field(default_factory=list)
    done: bool = False
    truncated: bool = False
    tokens: torch.Tensor | None = None  # [1 + n_q] frame of time offset - max_delay (recorded)


@dataclass
class _Slot:
    state: MachineState
    offset: int = 0
    complete: bool = False
    reported: int = 0  # consumed entries already turned into words
    pending: tuple[str, int] | None = None  # (word, start step) awaiting its end
    frames_out: int = 0  # output audio frames emitted
    prefix_frames: int = 0  # P: steps of voice prefix (text -1, output audio cut)


class TtsEngine:
    """Streaming TTS over ``batch_size`` slots (see the module docstring).

    Args:
        lm: the TTS language model (eval mode).
        codec: Mimi, to decode the generated codes.
        machine: the text-stream state machine of the checkpoint.
        batch_size: number of slots ``B``.
        delay_steps: audio delay of the checkpoint in steps (16 for tts-1.6b).
        n_q: codebooks generated and decoded (default: all of the LM's ``dep_q``); the others
            are input streams fed ``-1`` (the reference's ``TTSModel.n_q``).
        conditions: template conditions with ``B`` rows (``2B`` with direct CFG, the null rows
            last); a slot's own rows are given to :meth:`start_slot`.
        cfg_coef: direct classifier-free guidance (models not CFG-distilled); 1 disables it.
        final_padding: steps generated past the end of the text (reference: 4).
        padding_bonus: added to the PAD logit (positive values slow the speech).
        seed: seeds the sampling generator (reproducible runs); None uses torch's global RNG.
        record_tokens: return each slot's undelayed frame (text first, the multiplexed fed
            token; audio ``-1`` before ``delay_steps``) in :attr:`SlotOutput.tokens`.
        max_steps: per-slot step limit.
    """

    def __init__(
        self,
        lm: LMModel,
        codec: MimiCodec,
        machine: StateMachine,
        *,
        batch_size: int,
        delay_steps: int,
        conditions: Conditions | None,
        n_q: int | None = None,
        cfg_coef: float = 1.0,
        final_padding: int = 4,
        padding_bonus: float = 0.0,
        temperature: float = 0.6,
        top_k: int = 250,
        top_k_text: int = 25,
        seed: int | None = None,
        record_tokens: bool = False,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        self.lm = lm
        self.codec = codec
        self.machine = machine
        self.batch_size = B = batch_size
        self.delay_steps = delay_steps
        self.final_padding = final_padding
        self.padding_bonus = padding_bonus
        self.record_tokens = record_tokens
        self.max_steps = max_steps
        self.device = lm.device
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        self.gen = StreamingGenerator(
            lm,
            B,
            temp=temperature,
            temp_text=temperature,
            top_k=top_k,
            top_k_text=top_k_text,
            cfg_coef=cfg_coef,
            cfg_is_no_text=True,
            conditions=conditions,
            on_text_logits_hook=self._on_text_logits if padding_bonus else None,
            on_text_hook=self._on_text,
            on_audio_hook=self._on_audio,
            generator=generator,
            dep_q=n_q,
        )
        self.n_q = self.gen.dep_q
        self.max_delay = self.gen.max_delay
        self.cfg = self.gen.cfg
        self._template = conditions
        self._slots: list[_Slot | None] = [None] * B
        self._running: list[int] = []
        self._stack: ExitStack | None = None
        self.stream: MimiStream | None = None

    # ----------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> TtsEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Allocate all state; every slot starts free."""
        if self._stack is not None:
            raise RuntimeError("engine already started")
        stack = ExitStack()
        self.stream = stack.enter_context(self.codec.streaming(self.batch_size, encoder=False))
        stack.enter_context(self.gen)
        self._stack = stack
        B, dev = self.batch_size, self.device
        delays = torch.tensor(self.gen.delays_list[1 : 1 + self.n_q], device=dev)
        self._audio_start = (delays + self.delay_steps)[None]  # [1, n_q]
        self._prefixes = PrefixTable(B, self._audio_start[0])
        self._inputs = torch.full((B, max(self.gen.n_in, 0), 1), ZERO_TOKEN_ID, device=dev)
        self._no_audio = torch.full((B, self.n_q, 1), ZERO_TOKEN_ID, device=dev)
        self._exec = torch.zeros(B, dtype=torch.bool)
        self._decode = torch.zeros(B, dtype=torch.bool)
        self.gen.set_exec_mask(self._exec.to(dev))
        self.stream.set_exec_mask(self._decode)

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
            self.stream = None

    # ----------------------------------------------------------------------------- slots

    @property
    def free_slots(self) -> list[int]:
        return [b for b, slot in enumerate(self._slots) if slot is None]

    @property
    def busy(self) -> bool:
        return any(slot is not None for slot in self._slots)

    def start_slot(
        self,
        slot: int,
        conditions: Conditions | None = None,
        *,
        temperature: float | None = None,
        entries: list[Entry] | None = None,
        complete: bool = False,
        prefix: torch.Tensor | None = None,
    ) -> None:
        """(Re)start ``slot`` as a fresh utterance.

        ``conditions``: this slot's rows (1 row, 2 with direct CFG: conditional then null), or
        None to keep the slot's current rows. ``entries`` / ``complete``: text known already.
        ``prefix``: the voice as audio-prefix codes ``[n_q, P]`` (see :mod:`dsm.tts.prefix`,
        ``TextToSpeech.voice_prefix``); it needs every codebook of the LM generated.
        """
        if self._stack is None:
            raise RuntimeError("start the engine first")
        if prefix is not None and self.n_q != self.gen.n_q:
            raise ValueError(
                f"a voice prefix needs all {self.gen.n_q} codebooks generated, this engine "
                f"generates {self.n_q} (as in the reference, whose prefixes have every codebook)"
            )
        B, dev = self.batch_size, self.device
        mask = torch.zeros(B, dtype=torch.bool)
        mask[slot] = True
        full = None
        if conditions is not None:
            full = self._expand(slot, conditions)
        self.gen.reset(mask.to(dev), conditions=full)
        if temperature is not None:
            self.gen.set_sampling(mask.to(dev), temp=temperature, temp_text=temperature)
        prefix_frames = self._prefixes.set(slot, prefix)
        if self.cfg:
            # The reference's cfg_is_no_prefix: the null branch does not hear the prefix.
            until = prefix_frames + self.delay_steps if prefix_frames else None
            self.gen.set_cfg_masked_until(mask.to(dev), until)
        assert self.stream is not None
        self.stream.reset(mask)
        self._slots[slot] = _Slot(
            self.machine.new_state(entries), complete=complete, prefix_frames=prefix_frames
        )

    def _expand(self, slot: int, rows: Conditions) -> Conditions:
        """Template conditions with ``slot``'s rows replaced by ``rows``."""
        template = self._template
        if template is None:
            raise ValueError("this engine was built without conditions")
        index = [slot, slot + self.batch_size] if self.cfg else [slot]
        out = Conditions()
        for name in ("sum", "cross"):
            base, new = getattr(template, name), getattr(rows, name)
            if base is None:
                continue
            if new is None or new.shape[0] != len(index) or new.shape[1:] != base.shape[1:]:
                raise ValueError(
                    f"slot conditions.{name} must have shape {[len(index), *base.shape[1:]]}"
                )
            full = base.clone()
            full[index] = new.to(device=full.device, dtype=full.dtype)
            setattr(out, name, full)
        return out

    def push(self, slot: int, entries: list[Entry]) -> None:
        """Append entries to ``slot``'s text."""
        state = self._slot(slot)
        if state.complete:
            raise RuntimeError(f"slot {slot}'s text was already finished")
        state.state.entries.extend(entries)

    def finish(self, slot: int) -> None:
        """No more text for ``slot``: it runs to the end of its audio."""
        self._slot(slot).complete = True

    def release(self, slot: int) -> None:
        """Free ``slot`` now (e.g. the client went away)."""
        self._slots[slot] = None

    def _slot(self, slot: int) -> _Slot:
        state = self._slots[slot]
        if state is None:
            raise RuntimeError(f"slot {slot} is not started")
        return state

    def can_step(self, slot: int) -> bool:
        """Whether ``slot`` has what its next step needs (it never waits once complete)."""
        state = self._slots[slot]
        if state is None:
            return False
        machine = self.machine
        return (
            state.complete
            or state.offset < state.prefix_frames  # the prefix needs no text
            or not machine.may_need_entry(state.state)
            or machine.has_enough_entries(state.state)
        )

    # ----------------------------------------------------------------------------- hooks

    def _on_text_logits(self, logits: torch.Tensor) -> None:
        from dsm.tts.entries import PAD_TOKEN

        logits[..., PAD_TOKEN] += self.padding_bonus

    def _on_text(self, token: torch.Tensor) -> None:
        values = token.tolist()
        machine = self.machine
        for b in self._running:
            slot = self._slots[b]
            assert slot is not None
            if slot.offset < slot.prefix_frames:
                values[b] = ZERO_TOKEN_ID
            else:
                values[b] = machine.process(slot.offset, slot.state, values[b])
        token.copy_(torch.tensor(values, dtype=token.dtype))

    def _on_audio(self, audio: torch.Tensor) -> None:
        offsets = self.gen.offsets
        early = offsets[:, None] < self._audio_start  # [B, n_q]
        audio.masked_fill_(early, ZERO_TOKEN_ID)
        self._prefixes.overlay(audio, offsets)

    # ----------------------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self) -> list[SlotOutput]:
        """One step of every slot that can run; returns their outputs (empty if none ran)."""
        if self._stack is None or self.stream is None:
            raise RuntimeError("start the engine first")
        running = [b for b in range(self.batch_size) if self.can_step(b)]
        self._running = running
        if not running:
            return []
        exec_mask = torch.zeros(self.batch_size, dtype=torch.bool)
        exec_mask[running] = True
        if not torch.equal(exec_mask, self._exec):
            self._exec = exec_mask
            self.gen.set_exec_mask(exec_mask.to(self.device))
        slots = [self._slots[b] for b in running]
        text_only = all(s is not None and s.offset < self.delay_steps for s in slots)
        out = self.gen.step(
            self._inputs if self.gen.n_in > 0 else None,
            depformer_replace_tokens=self._no_audio if text_only else None,
        )

        audio_times = {}
        for b, slot in zip(running, slots, strict=True):
            assert slot is not None
            t = slot.offset - self.max_delay
            if t >= self.delay_steps:
                audio_times[b] = t
        pcm_host = None
        if audio_times:
            decode = torch.zeros(self.batch_size, dtype=torch.bool)
            decode[list(audio_times)] = True
            if not torch.equal(decode, self._decode):
                self._decode = decode
                self.stream.set_exec_mask(decode)
            codes = out.tokens[:, 1:, None].clamp(min=0)
            pcm = self.stream.decode(codes.to(self.codec.device))
            pcm_host = pcm[:, 0].clamp(-1.0, 1.0).float().cpu().numpy()
        tokens_host = out.tokens.cpu() if self.record_tokens else None

        outputs = []
        for b, slot in zip(running, slots, strict=True):
            assert slot is not None
            result = SlotOutput(b)
            if tokens_host is not None and slot.offset >= self.max_delay:
                result.tokens = tokens_host[b]
            slot.offset += 1
            state = slot.state
            if b in audio_times and pcm_host is not None:
                j = audio_times[b] - self.delay_steps - CLICK_FRAMES
                if j >= slot.prefix_frames and (state.end_step is None or j < state.end_step):
                    result.pcm = pcm_host[b].copy()
                    slot.frames_out += 1
            result.words = self._new_words(slot)
            end = state.end_step
            if end is not None:
                tail = max(self.final_padding, CLICK_FRAMES + self.max_delay)
                result.done = slot.offset >= end + self.delay_steps + tail
            if not result.done and slot.offset >= self.max_steps:
                result.done = result.truncated = True
                if slot.pending is not None:
                    result.words.append(self._word(slot, slot.pending, slot.offset))
                    slot.pending = None
            if result.done:
                self._slots[b] = None
            outputs.append(result)
        return outputs

    def _word(self, slot: _Slot, pending: tuple[str, int], end_step: int) -> Word:
        text, start = pending
        first = CLICK_FRAMES + slot.prefix_frames  # the step of the first output frame
        return Word(
            text,
            max(0.0, (start - first) / FRAME_RATE),
            max(0.0, (end_step - first) / FRAME_RATE),
        )

    def _new_words(self, slot: _Slot) -> list[Word]:
        words = []
        consumed = slot.state.consumed
        while slot.reported < len(consumed):
            entry, step = consumed[slot.reported]
            slot.reported += 1
            if slot.pending is not None:
                words.append(self._word(slot, slot.pending, step))
                slot.pending = None
            if entry.tokens:
                slot.pending = (entry.text, step)
        end = slot.state.end_step
        if end is not None and slot.pending is not None:
            words.append(self._word(slot, slot.pending, end))
            slot.pending = None
        return words
