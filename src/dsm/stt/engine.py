"""The batched STT step: ``B`` slots of Mimi encoder + DSM language model, each on its own clock.

Alignment follows training (model-spec §2.4): a slot's step 0 sees only the initial tokens and
audio frame ``k`` reaches the model at the slot's step ``k + 1``. The engine keeps a one-frame
buffer of codes per slot: the codes encoded at a step are fed to the language model at the
slot's next step. The text token of step 0 is produced before any audio was seen; callers drop
it, as the reference ``run_inference`` does.

Slots start (``start_slot``), pause (``active`` False) and stop independently; everything is a
mask on preallocated state. The host reads one ``[B]`` token tensor (and the pause
probabilities) per step, outside the model step.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dsm.generate.lmgen import StreamingGenerator
from dsm.mimi import FRAME_SIZE, MimiCodec, MimiStream
from dsm.models.lm import LMModel
from dsm.stt.prompt import PromptForcer

if TYPE_CHECKING:
    from dsm.stt.align import AlignConstraint

__all__ = ["EngineStep", "SttEngine"]


@dataclass
class EngineStep:
    """What one engine step produced (host tensors)."""

    tokens: torch.Tensor  # [B] long: the text token of this step for every slot
    pause: torch.Tensor | None  # [B, n_heads] float32: pause probability per VAD head
    forced: torch.Tensor | None  # [B] bool: the token was a forced prompt token


class SttEngine:
    """Streaming speech-to-text over ``batch_size`` independent slots."""

    def __init__(
        self,
        codec: MimiCodec,
        lm: LMModel,
        batch_size: int,
        *,
        max_prompt_tokens: int = 0,
        padding_ids: tuple[int, ...] | None = None,
        constraint: AlignConstraint | None = None,
    ) -> None:
        self.codec = codec
        self.lm = lm
        self.batch_size = batch_size
        self.device = next(iter(lm.parameters())).device
        self.n_q = int(lm.n_q)
        self.prompt: PromptForcer | None = None
        if padding_ids is None:  # the ids a forced prompt lets through between its tokens
            padding_ids = (lm.end_of_text_padding_id, lm.text_padding_token_id)
        if max_prompt_tokens > 0:
            self.prompt = PromptForcer(batch_size, max_prompt_tokens, padding_ids, self.device)
        # Forced alignment (dsm.stt.align): a second mask on the same greedy text choice.
        self.constraint = constraint
        hooked = self.prompt is not None or constraint is not None
        self.generator = StreamingGenerator(
            lm,
            batch_size,
            temp=0.0,
            temp_text=0.0,
            on_text_logits_hook=self._on_logits if hooked else None,
            on_text_hook=self._on_text if hooked else None,
        )
        self._stack: ExitStack | None = None
        self.stream: MimiStream | None = None

    def _on_logits(self, logits: torch.Tensor) -> None:
        if self.prompt is not None:
            self.prompt.on_logits(logits)
        if self.constraint is not None:
            self.constraint.on_logits(logits, self.generator.offsets)

    def _on_text(self, token: torch.Tensor) -> None:
        if self.prompt is not None:
            self.prompt.on_token(token, self.generator.exec_mask)
        if self.constraint is not None:
            self.constraint.on_token(token, self.generator.exec_mask)

    def __enter__(self) -> SttEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Allocate all state; every slot starts idle (call :meth:`start_slot`)."""
        if self._stack is not None:
            raise RuntimeError("engine already started")
        stack = ExitStack()
        self.stream = stack.enter_context(self.codec.streaming(self.batch_size, decoder=False))
        stack.enter_context(self.generator)
        self._stack = stack
        B, dev = self.batch_size, self.device
        self.prev_codes = torch.zeros(B, self.n_q, dtype=torch.long, device=dev)
        self.pcm = torch.zeros(B, 1, FRAME_SIZE, dtype=torch.float32, device=self.codec.device)

    def close(self) -> None:
        """Release the streaming state."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None
            self.stream = None

    def start_slot(self, slots: list[int], prompts: list[list[int]] | None = None) -> None:
        """Restart ``slots`` as fresh streams (optionally forcing a text prompt in each)."""
        assert self.stream is not None, "start the engine first"
        mask = torch.zeros(self.batch_size, dtype=torch.bool)
        mask[slots] = True
        self.stream.reset(mask.to(self.codec.device))
        self.generator.reset(mask.to(self.device))
        self.prev_codes[mask.to(self.device)] = 0
        if self.prompt is not None:
            for i, slot in enumerate(slots):
                self.prompt.set(slot, prompts[i] if prompts else [])
        elif prompts and any(prompts):
            raise ValueError("this engine was built without prompt support (max_prompt_tokens=0)")

    @torch.no_grad()
    def step(self, pcm: torch.Tensor, active: torch.Tensor, feed: torch.Tensor) -> EngineStep:
        """One step for every slot, encoding one frame per fed slot (live streams).

        Args:
            pcm: ``[B, 1920]`` float32 audio frame per slot (ignored where ``feed`` is False).
            active: ``[B]`` bool, slots that advance (the others keep their state).
            feed: ``[B]`` bool, slots whose frame is real audio to encode; an active slot that
                is not fed still advances its model by one step (to consume its last frame).
        """
        B = self.batch_size
        if pcm.shape != (B, FRAME_SIZE):
            raise ValueError(f"pcm must have shape [{B}, {FRAME_SIZE}], got {tuple(pcm.shape)}")
        encode_mask = active & feed
        codes = self.encode_frames(pcm, encode_mask)[:, :, 0]  # [B, K]
        out = self.step_codes(self.prev_codes, active)
        fed = encode_mask.to(self.device)
        self.prev_codes.copy_(torch.where(fed[:, None], codes, self.prev_codes))
        return out

    @torch.no_grad()
    def encode_frames(self, pcm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode ``n`` frames ahead for the slots in ``mask``: ``pcm [B, n * 1920]`` ->
        codes ``[B, K, n]`` on the LM's device (rows outside ``mask`` are meaningless and their
        encoder state is unchanged). Offline inputs encode many frames per call, which is much
        cheaper per frame; feed the codes to :meth:`step_codes` one frame per step."""
        assert self.stream is not None, "start the engine first"
        B = self.batch_size
        if pcm.dim() != 2 or pcm.shape[0] != B or pcm.shape[1] % FRAME_SIZE or not pcm.shape[1]:
            raise ValueError(f"pcm must have shape [{B}, n * {FRAME_SIZE}], got {tuple(pcm.shape)}")
        n = pcm.shape[1] // FRAME_SIZE
        if self.pcm.shape[-1] != pcm.shape[1]:
            self.pcm = torch.zeros(B, 1, pcm.shape[1], dtype=torch.float32, device=self.pcm.device)
        self.pcm[:, 0].copy_(pcm)
        self.stream.set_exec_mask(mask.to(self.codec.device))
        # The audio was checked on the host (dsm.audio); no device sync for a NaN check here.
        codes = self.stream.encode(self.pcm, check_finite=False)
        assert codes.shape[-1] == n
        return codes.to(self.device)

    @torch.no_grad()
    def step_codes(self, codes: torch.Tensor, active: torch.Tensor) -> EngineStep:
        """One language-model step of the ``active`` slots, fed ``codes [B, K]`` (the audio
        frame each slot's model hears at this step: frame ``k`` at the slot's step ``k + 1``;
        any value at step 0)."""
        assert self.stream is not None, "start the engine first"
        self.generator.set_exec_mask(active.to(self.device))
        out = self.generator.step(codes.to(self.device)[:, :, None])
        pause = None
        if out.extra_heads is not None:
            pause = out.extra_heads[:, :, 0].float().cpu()
        forced = None
        if self.prompt is not None:
            forced = self.prompt.last_forced.cpu()
        return EngineStep(tokens=out.sampled[:, 0].cpu(), pause=pause, forced=forced)
