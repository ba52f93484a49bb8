"""Batched streaming generation with the DSM language model, every slot on its own clock.

:class:`StreamingGenerator` is dsm's counterpart of the reference ``LMGen`` (model-spec §2.4,
§2.6, §2.7). The batch dimension is a table of ``B`` slots. Each slot has its own offset, so a
slot restarted with :meth:`StreamingGenerator.reset` behaves exactly like a fresh reference
``LMGen`` started at that step, and a slot paused with :meth:`StreamingGenerator.set_exec_mask`
keeps its state (delay ring, offset, transformer caches) bit-identical until it resumes.

Everything is allocated in :meth:`StreamingGenerator.start`; :meth:`StreamingGenerator.step` only
updates tensors in place and never synchronises with the host, so on CUDA its phases are
captured as CUDA graphs (:mod:`dsm.generate.cuda_graph`). Hooks run between the phases and
mutate the tensors they are given in place (text logits, text token, audio tokens); they may
read :attr:`StreamingGenerator.offsets` (each slot's offset before the step).

One step (o = a slot's offset before the step, ``CT = max_delay + 2`` ring columns):

1. input-only audio streams ``k > dep_q`` are written at column ``(o + delay_k) % CT``;
2. column ``o % CT`` is read; streams with ``o <= delay_k`` (and paused slots) get their initial
   token; with CFG the null branch is appended as slots ``[B:2B]``;
3. ``forward_text``; CFG mix of the text logits; text-logits hook; text sampling; text hook;
4. depformer (a fresh KV cache per frame) or the caller's replacement tokens; audio hook;
5. text and generated audio are written at column ``(o + 1) % CT``; the offset advances;
6. the undelayed frame for time ``o - max_delay`` is gathered; slots with ``o + 1 <= max_delay``
   (or paused) get ``-2`` and ``valid = False``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol

import torch

from dsm.generate.cuda_graph import GraphedPhase, cuda_graphs_enabled
from dsm.generate.delay_ring import DelayRing
from dsm.generate.depformer_frame import DepformerFrame
from dsm.generate.sampling import SlotSampler, resolve_max_top_k
from dsm.models.embeddings import ZERO_TOKEN_ID
from dsm.models.lm import LMModel
from dsm.nn.streaming import StreamingControl, streaming

__all__ = ["ConditionsLike", "Hook", "StepOutput", "StreamingGenerator"]


Hook = Callable[[torch.Tensor], None]


class ConditionsLike(Protocol):
    """What the generator needs from ``dsm.models.lm.Conditions``."""

    @property
    def sum(self) -> torch.Tensor | None: ...  # [B, 1, D]

    @property
    def cross(self) -> torch.Tensor | None: ...  # [B, S, D]


@dataclass
class StepOutput:
    """Result of one :meth:`StreamingGenerator.step`.

    ``tokens``, ``valid`` and ``sampled`` are fresh tensors. ``text_logits`` and ``extra_heads``
    are the generator's buffers: they are overwritten by the next step (clone them to keep them).
    """

    tokens: torch.Tensor  # [B, 1 + dep_q] undelayed frame for time o - max_delay; -2 if invalid
    valid: torch.Tensor  # [B] bool: the frame is real (slot past max_delay and executing)
    sampled: torch.Tensor  # [B, 1 + dep_q] text and audio tokens of this step (after hooks)
    text_logits: (
        torch.Tensor | None
    )  # [B, text_out_card] model dtype, what the text was sampled from
    extra_heads: torch.Tensor | None  # [B, n_heads, dim] softmax of the extra heads


def _slot_tensor(value: float | int | torch.Tensor, B: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.shape != (B,):
            raise ValueError(f"per-slot values must have shape ({B},), got {tuple(value.shape)}")
        return value.detach().to(device="cpu", dtype=dtype).clone()
    return torch.full((B,), value, dtype=dtype)


def _int_list(value: int | torch.Tensor) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.tolist()]
    return [int(value)]


class StreamingGenerator:
    """Per-slot streaming generation on a DSM ``LMModel`` (see the module docstring).

    Args:
        lm: the language model (``dsm.models.lm.LMModel``), in eval mode.
        batch_size: number of slots ``B``.
        temp, top_k: audio (depformer) sampling; ``temp <= 0`` is greedy. Python numbers or
            ``[B]`` tensors (per slot).
        temp_text, top_k_text: text sampling, likewise.
        max_top_k, max_top_k_text: static top-k bounds, so that :meth:`set_sampling` can later
            raise a slot's ``k`` up to them (default: the largest ``k`` given here).
        cfg_coef: classifier-free guidance strength; ``!= 1`` doubles the internal batch, slots
            ``[B:2B]`` being the null branch (the conditions must then have ``2B`` rows).
        cfg_is_no_text: the null branch gets ``-1`` text (and the text logits are not mixed).
        cfg_is_masked_until: per-slot offset (int or ``[B]``) until which the null branch's
            inputs are ``-1`` (plus each stream's delay); ``None`` never masks. Change it per slot
            with :meth:`set_cfg_masked_until` (e.g. a TTS voice prefix of a new stream).
        dep_q: audio codebooks generated by the depformer, ``1 <= dep_q <= lm.dep_q`` (default
            ``lm.dep_q``). With fewer, codebooks ``dep_q..n_q-1`` become input-only streams that
            :meth:`step` reads from ``input_tokens`` (TTS feeds them ``-1``); this is the
            reference ``TTSModel``'s ``n_q``, which sets ``lm.dep_q = n_q`` before generating.
        conditions: ``Conditions(sum [B', 1, D] | None, cross [B', S, D] | None)``.
        on_text_logits_hook, on_text_hook, on_audio_hook: called with the ``[B, N]`` text logits
            (model dtype, after CFG), the ``[B]`` text token and the ``[B, dep_q]`` audio tokens;
            they mutate them in place.
        generator: optional seeded ``torch.Generator`` for sampling.
        cuda_graph: capture the step's phases (default: on for CUDA unless
            ``DSM_NO_CUDA_GRAPH=1``).
    """

    def __init__(
        self,
        lm: LMModel,
        batch_size: int,
        *,
        temp: float | torch.Tensor = 0.8,
        temp_text: float | torch.Tensor = 0.7,
        top_k: int | torch.Tensor = 250,
        top_k_text: int | torch.Tensor = 25,
        max_top_k: int | None = None,
        max_top_k_text: int | None = None,
        cfg_coef: float = 1.0,
        cfg_is_no_text: bool = False,
        cfg_is_masked_until: int | torch.Tensor | None = None,
        dep_q: int | None = None,
        conditions: ConditionsLike | None = None,
        on_text_logits_hook: Hook | None = None,
        on_text_hook: Hook | None = None,
        on_audio_hook: Hook | None = None,
        generator: torch.Generator | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        if lm.training:
            raise ValueError("generation needs the LM in eval mode: call lm.eval() first")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        B = batch_size
        self.lm = lm
        self.batch_size = B
        self.cfg = cfg_coef != 1.0
        self.cfg_coef = float(cfg_coef)
        self.cfg_is_no_text = cfg_is_no_text
        self.B_lm = 2 * B if self.cfg else B
        self.n_q: int = lm.n_q
        self.dep_q: int = lm.dep_q if dep_q is None else int(dep_q)
        if dep_q is not None and not 0 < self.dep_q <= lm.dep_q:
            raise ValueError(f"dep_q must be in [1, {lm.dep_q}] for this model, got {dep_q}")
        self.K: int = lm.num_codebooks
        self.delays_list: list[int] = [int(d) for d in lm.delays]
        if len(self.delays_list) != self.K:
            raise ValueError(f"LM has {len(self.delays_list)} delays for {self.K} streams")
        self.max_delay = max(self.delays_list)
        self.n_in = self.K - 1 - self.dep_q  # input-only audio streams
        self.has_depformer = self.dep_q > 0 and getattr(lm, "depformer", None) is not None
        self.on_text_logits_hook = on_text_logits_hook
        self.on_text_hook = on_text_hook
        self.on_audio_hook = on_audio_hook
        self.generator = generator
        self.device: torch.device = lm.device
        self.use_cuda_graph = (
            cuda_graphs_enabled(self.device) if cuda_graph is None else cuda_graph
        ) and self.device.type == "cuda"

        self.text_card = text_card = int(lm.text_out_card)
        self.max_top_k_text = (
            resolve_max_top_k(_int_list(top_k_text), text_card)
            if max_top_k_text is None
            else max_top_k_text
        )
        self.max_top_k = (
            resolve_max_top_k(_int_list(top_k), int(lm.card)) if max_top_k is None else max_top_k
        )
        # Host-side copies of the per-slot settings; moved to the device in start().
        self._temp = _slot_tensor(temp, B, torch.float32)
        self._temp_text = _slot_tensor(temp_text, B, torch.float32)
        self._top_k = _slot_tensor(top_k, B, torch.long)
        self._top_k_text = _slot_tensor(top_k_text, B, torch.long)
        # "Never masked": offsets >= 0 are always above delay_k + this.
        self._never_masked = -(self.max_delay + 1)
        self._cfg_masked_until = _slot_tensor(
            self._never_masked if cfg_is_masked_until is None else cfg_is_masked_until,
            B,
            torch.long,
        )
        self._conditions = conditions
        self._stack: ExitStack | None = None

    # ----------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> StreamingGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_started(self) -> bool:
        return self._stack is not None

    def start(self) -> None:
        """Allocate every buffer and open the LM's streaming state; all slots start fresh."""
        if self._stack is not None:
            raise RuntimeError("this generator is already started; call close() first")
        lm, B, dev = self.lm, self.batch_size, self.device
        stack = ExitStack()
        self.lm_ctl: StreamingControl = stack.enter_context(streaming(lm, self.B_lm, dev))
        self.dep_ctl: StreamingControl | None = None
        self._dep_frame: DepformerFrame | None = None
        if self.has_depformer:
            assert lm.depformer is not None
            self.dep_ctl = stack.enter_context(streaming(lm.depformer, self.B_lm, dev))
            if DepformerFrame.supports(lm):  # the flat loop, bitwise the module path's numbers
                self._dep_frame = DepformerFrame(lm, self.B_lm, self.dep_q)
        self._stack = stack

        initial = [int(lm.text_initial_token_id)] + [int(lm.initial_token_id)] * self.n_q
        self.ring = DelayRing(B, self.delays_list, initial, 1 + self.dep_q, dev)
        self.exec_mask = torch.ones(B, dtype=torch.bool, device=dev)
        self.text_sampler = SlotSampler(
            self._temp_text.to(dev),
            self._top_k_text.to(dev),
            max_top_k=self.max_top_k_text,
            cardinality=self.text_card,
            generator=self.generator,
        )
        self.audio_sampler = SlotSampler(
            self._temp.to(dev),
            self._top_k.to(dev),
            max_top_k=self.max_top_k,
            cardinality=int(lm.card),
            generator=self.generator,
        )
        self.cfg_masked_until = self._cfg_masked_until.to(dev)
        self.cfg_coef_t = torch.full((B, 1), self.cfg_coef, device=dev)
        self._all_slots = torch.ones(self.B_lm, dtype=torch.bool, device=dev)

        self.cond_sum: torch.Tensor | None = None
        self.cond_cross: torch.Tensor | None = None
        conditions = self._conditions
        if conditions is not None:
            dtype = lm.dtype
            for name in ("sum", "cross"):
                value = getattr(conditions, name)
                if value is None:
                    continue
                if value.shape[0] != self.B_lm:
                    raise ValueError(
                        f"conditions.{name} has {value.shape[0]} rows, expected {self.B_lm}"
                        + (" (CFG needs the null conditions as rows B:2B)" if self.cfg else "")
                    )
                setattr(self, f"cond_{name}", value.to(device=dev, dtype=dtype).clone())

        if self.cond_cross is not None:
            # The transformer caches the cross K/V; set them now for every slot so that a later
            # reset can replace some slots' rows in place.
            lm.transformer.set_cross_source(self.cond_cross)

        # Per-step buffers, written in place by the phases.
        self.input_tokens = torch.zeros(B, max(self.n_in, 0), dtype=torch.long, device=dev)
        self.text_token = torch.zeros(B, dtype=torch.long, device=dev)
        self.audio_tokens = torch.zeros(B, self.dep_q, dtype=torch.long, device=dev)
        self.out_tokens = torch.zeros(B, 1 + self.dep_q, dtype=torch.long, device=dev)
        self.out_valid = torch.zeros(B, dtype=torch.bool, device=dev)
        self.text_logits: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None
        self.extra_heads: torch.Tensor | None = None
        self._has_extra_heads = len(lm.extra_heads) > 0

        pool = torch.cuda.graph_pool_handle() if self.use_cuda_graph else None
        gens = (self.generator,) if self.generator is not None else ()

        def phase(fn: Callable[[], None], rng: bool = False) -> GraphedPhase:
            return GraphedPhase(
                fn, enabled=self.use_cuda_graph, pool=pool, generators=gens if rng else ()
            )

        self._phase_main = phase(self._main)
        self._phase_text = phase(self._sample_text, rng=True)
        self._phase_depformer = phase(self._depformer, rng=True)
        self._phase_commit = phase(self._commit)

    def close(self) -> None:
        """Release the streaming state (the generator can be started again)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # ----------------------------------------------------------------------------- slot control

    @property
    def offsets(self) -> torch.Tensor:
        """``[B]`` steps since each slot's reset; inside hooks, the value before the step."""
        return self.ring.offsets

    @property
    def cache(self) -> torch.Tensor:
        """``[B, K, max_delay + 2]`` token ring (see :mod:`dsm.generate.delay_ring`)."""
        return self.ring.tokens

    def _require_started(self) -> None:
        if self._stack is None:
            raise RuntimeError("start the generator first: `with gen:` or gen.start()")

    def _slot_mask(self, mask: torch.Tensor | None, what: str) -> torch.Tensor:
        if mask is None:
            return torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if mask.shape != (self.batch_size,):
            raise ValueError(
                f"{what} mask must have shape ({self.batch_size},), got {tuple(mask.shape)}"
            )
        return mask.to(device=self.device, dtype=torch.bool)

    def _lm_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.repeat(2) if self.cfg else mask

    def set_exec_mask(self, mask: torch.Tensor) -> None:
        """Only slots where ``mask`` ([B] bool) is True advance; the others keep their state."""
        self._require_started()
        mask = self._slot_mask(mask, "exec")
        self.exec_mask.copy_(mask)
        self.lm_ctl.set_exec_mask(self._lm_mask(mask))

    def reset(
        self, mask: torch.Tensor | None = None, conditions: ConditionsLike | None = None
    ) -> None:
        """Restart the slots where ``mask`` is True (all when None) as fresh streams.

        ``conditions`` (rows for every slot, ``2B`` with CFG) replaces the conditions of the
        reset slots (summed condition and cross-attention K/V). The exec mask is not changed
        (the reference's reset also turns the slots on; call :meth:`set_exec_mask` for that).
        """
        self._require_started()
        mask = self._slot_mask(mask, "reset")
        self.ring.reset(mask)
        lm_mask = self._lm_mask(mask)
        if conditions is not None:
            for name in ("sum", "cross"):
                value = getattr(conditions, name)
                target = getattr(self, f"cond_{name}")
                if value is None or target is None:
                    if value is not target:
                        raise ValueError(f"conditions.{name} must be given iff it was at start")
                    continue
                if value.shape != target.shape:
                    raise ValueError(
                        f"conditions.{name} must have shape {tuple(target.shape)}, "
                        f"got {tuple(value.shape)}"
                    )
                value = value.to(device=target.device, dtype=target.dtype)
                target.copy_(torch.where(lm_mask.view(-1, 1, 1), value, target))
        self.lm_ctl.reset(lm_mask)
        if conditions is not None and self.cond_cross is not None:
            self.lm.transformer.set_cross_source(self.cond_cross, lm_mask)

    def set_cfg_masked_until(self, mask: torch.Tensor | None, until: int | None) -> None:
        """Set ``cfg_is_masked_until`` of the slots in ``mask`` ([B] bool, None: all) to
        ``until`` (None: never masked). It takes effect at the next step; no phase is captured
        again (the value is read from a device tensor)."""
        self._require_started()
        mask = self._slot_mask(mask, "cfg")
        self.cfg_masked_until.masked_fill_(mask, self._never_masked if until is None else until)

    def set_sampling(
        self,
        mask: torch.Tensor | None = None,
        *,
        temp: float | None = None,
        temp_text: float | None = None,
        top_k: int | None = None,
        top_k_text: int | None = None,
        cfg_is_masked_until: int | None = None,
    ) -> None:
        """Change per-slot settings of the slots in ``mask`` (top-k within the static bounds)."""
        self._require_started()
        mask = self._slot_mask(mask, "sampling")
        if top_k is not None and top_k > self.max_top_k > 0:
            raise ValueError(f"top_k {top_k} exceeds max_top_k {self.max_top_k} fixed at build")
        if top_k_text is not None and top_k_text > self.max_top_k_text > 0:
            raise ValueError(
                f"top_k_text {top_k_text} exceeds max_top_k_text {self.max_top_k_text}"
            )
        for target, value in (
            (self.audio_sampler.temperature, temp),
            (self.text_sampler.temperature, temp_text),
            (self.audio_sampler.top_k, top_k),
            (self.text_sampler.top_k, top_k_text),
            (self.cfg_masked_until, cfg_is_masked_until),
        ):
            if value is not None:
                target.masked_fill_(mask, value)
        # The samplers choose their kernels from host-side flags, which may have changed: the
        # phases that sample are captured again.
        self.text_sampler.update()
        self.audio_sampler.update()
        self._phase_text.reset()
        self._phase_depformer.reset()

    # ----------------------------------------------------------------------------- the step

    @torch.no_grad()
    def step(
        self,
        input_tokens: torch.Tensor | None = None,
        depformer_replace_tokens: torch.Tensor | None = None,
    ) -> StepOutput:
        """Advance every executing slot by one frame.

        Args:
            input_tokens: ``[B, Ki(, 1)]`` with ``Ki >= n_q - dep_q`` input-only audio tokens
                (extra streams are ignored); may be None when there are none.
            depformer_replace_tokens: ``[B, dep_q(, 1)]`` tokens used instead of running the
                depformer (e.g. ``-1`` before TTS audio starts).
        """
        self._require_started()
        B = self.batch_size
        if self.n_in > 0:
            if input_tokens is None:
                raise ValueError(f"this model needs {self.n_in} input audio streams per step")
            if input_tokens.dim() == 3:
                input_tokens = input_tokens[..., 0]
            if input_tokens.shape[0] != B or input_tokens.shape[1] < self.n_in:
                raise ValueError(
                    f"input_tokens must have shape [{B}, >={self.n_in}, 1], "
                    f"got {tuple(input_tokens.shape)}"
                )
            self.input_tokens.copy_(input_tokens[:, : self.n_in])

        self._phase_main()
        assert self.text_logits is not None
        if self.on_text_logits_hook is not None:
            self.on_text_logits_hook(self.text_logits)
        self._phase_text()
        if self.on_text_hook is not None:
            self.on_text_hook(self.text_token)
        if self.dep_q > 0:
            if depformer_replace_tokens is not None:
                if depformer_replace_tokens.dim() == 3:
                    depformer_replace_tokens = depformer_replace_tokens[..., 0]
                self.audio_tokens.copy_(depformer_replace_tokens)
            elif self.has_depformer:
                self._phase_depformer()
            if self.on_audio_hook is not None:
                self.on_audio_hook(self.audio_tokens)
        self._phase_commit()

        sampled = torch.cat([self.text_token[:, None], self.audio_tokens], dim=1)
        return StepOutput(
            tokens=self.out_tokens.clone(),
            valid=self.out_valid.clone(),
            sampled=sampled,
            text_logits=self.text_logits,
            extra_heads=self.extra_heads,
        )

    def _main(self) -> None:
        """Delay ring in, ``forward_text``, CFG mix -> ``text_logits [B, N]``, ``hidden``."""
        B, ring, exec_mask = self.batch_size, self.ring, self.exec_mask
        ring.write_inputs(self.input_tokens, exec_mask)
        tokens, is_init = ring.read(exec_mask)  # [B, K]
        if self.cfg:
            limit = ring.delays[None] + self.cfg_masked_until[:, None]
            zeroed = (ring.offsets[:, None] <= limit) & ~is_init
            null = torch.where(zeroed, ZERO_TOKEN_ID, tokens)
            if self.cfg_is_no_text:
                null_text = torch.where(is_init[:, :1], null[:, :1], ZERO_TOKEN_ID)
                null = torch.cat([null_text, null[:, 1:]], dim=1)
            tokens = torch.cat([tokens, null], dim=0)
        text_logits, hidden = self.lm.forward_text(
            tokens[..., None], sum_condition=self.cond_sum, cross_src=self.cond_cross
        )
        logits = text_logits[:, 0]  # [B_lm, N]
        if self.cfg:
            cond, null_logits = logits[:B], logits[B:]
            if self.cfg_is_no_text:
                logits = cond
            else:
                logits = null_logits + (cond - null_logits) * self.cfg_coef_t.to(logits.dtype)
        # Kept in the model dtype: the reference's logits hook (e.g. the TTS padding bonus)
        # also edits them before the float32 cast done by sampling.
        self.text_logits = logits
        self.hidden = hidden
        if self._has_extra_heads:
            self.extra_heads = self.lm.extra_heads_probs(hidden[:B])[:, 0]  # [B, n_heads, dim]

    def _sample_text(self) -> None:
        assert self.text_logits is not None
        token = self.text_sampler(self.text_logits)
        self.text_token.copy_(token)

    def _depformer(self) -> None:
        """One depformer frame: ``dep_q`` codebooks from a fresh KV cache."""
        assert self.dep_ctl is not None and self.hidden is not None
        B = self.batch_size
        self.dep_ctl.reset(self._all_slots)
        hidden = self.hidden[:, 0]  # [B_lm, D]
        prev = self.text_token
        inputs = self.lm.depformer_inputs(hidden, self.dep_q)  # one projection per weight set
        frame = self._dep_frame
        for cb in range(self.dep_q):
            step_prev = prev.repeat(2) if self.cfg else prev
            if frame is not None:
                logits = frame.logits(cb, inputs[cb], step_prev)
            else:
                logits = self.lm.depformer_step(cb, hidden, step_prev, projected=inputs[cb])
            if self.cfg:
                cond, null = logits[:B], logits[B:]
                logits = null + (cond - null) * self.cfg_coef_t.to(logits.dtype)
            prev = self.audio_sampler(logits)
            self.audio_tokens[:, cb].copy_(prev)

    def _commit(self) -> None:
        """Write this step's tokens into the ring and gather the undelayed output frame."""
        generated = torch.cat([self.text_token[:, None], self.audio_tokens], dim=1)
        frame, valid = self.ring.commit(generated, self.exec_mask)
        self.out_tokens.copy_(frame)
        self.out_valid.copy_(valid)
