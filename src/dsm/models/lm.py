"""The DSM language model: embeddings, main transformer, text head, depformer (model-spec §2).

:class:`LMModel` is a pure network. Sampling, delays at inference, CFG and per-slot policy live in
:mod:`dsm.generate`, which drives the model through four methods:

* :meth:`LMModel.forward_text`: one (or more) main steps -> text logits and the normalized
  hidden state; streaming when called inside ``dsm.nn.streaming(lm, B)``;
* :meth:`LMModel.depformer_step`: one codebook step of the depformer, inside
  ``dsm.nn.streaming(lm.depformer, B)`` reset at every frame;
* :meth:`LMModel.extra_heads_probs`: the semantic-VAD heads;
* :meth:`LMModel.make_conditions` / :meth:`LMModel.null_conditions`: conditioning tensors.

Calling the model (:meth:`LMModel.forward`) is the teacher-forced pass of the reference's
``LMModel.forward``: delays applied, logits re-aligned with the input codes.

Attribute names are the checkpoint keys (§2.8), so the published weights load strictly with no
key map: ``emb.{k}``, ``text_emb``, ``transformer``, ``out_norm``, ``text_linear``,
``depformer_in.{i}``, ``depformer_emb.{k}``, ``depformer_text_emb``, ``depformer``,
``depformer_norms``, ``linears.{k}``, ``extra_heads.{i}``, ``condition_provider``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from dsm.checkpoint.config import LMConfig
from dsm.errors import ConfigError
from dsm.models.conditioners import (
    ConditionProvider,
    Conditions,
    LUTConditioner,
    TensorConditioner,
    TensorInputs,
    TextInputs,
    fuse_conditions,
)
from dsm.models.embeddings import ZERO_TOKEN_ID, TokenEmbedding, sinusoidal_embedding
from dsm.nn.kv_cache import RingPositions, StepPositions
from dsm.nn.linear import Linear
from dsm.nn.norms import make_norm
from dsm.nn.transformer import StreamingTransformer, TransformerState

__all__ = ["UNGENERATED_TOKEN_ID", "ZERO_TOKEN_ID", "LMModel", "LMOutput"]

# Token id meaning "still to be sampled" in generation caches and prompts; never embedded.
UNGENERATED_TOKEN_ID = -2
# Offset of the first audio stream in a [B, K, T] token tensor (stream 0 is text).
AUDIO_OFFSET = 1


@dataclass
class LMOutput:
    """Teacher-forced outputs, aligned with the input codes (no extra shift needed for a loss).

    Attributes:
        text_logits: ``[B, 1, T, text_out_card]``; NaN where ``text_mask`` is False.
        audio_logits: ``[B, dep_q, T, card]`` (NaN where masked), or None without a depformer.
        text_mask: ``[B, 1, T]`` bool, valid text predictions.
        audio_mask: ``[B, dep_q, T]`` bool, or None without a depformer.
    """

    text_logits: torch.Tensor
    audio_logits: torch.Tensor | None
    text_mask: torch.Tensor
    audio_mask: torch.Tensor | None


def _positional_kind(name: str) -> tuple[str, bool]:
    """Map a config ``positional_embedding`` to (transformer kind, add sinusoids ourselves)."""
    if name == "sin":
        return "none", True
    if name in ("rope", "none"):
        return name, False
    raise ConfigError(f"unsupported positional embedding {name!r} (supported: rope, sin, none)")


class LMModel(nn.Module):
    """DSM language model over ``K = n_q + 1`` streams (text first, then audio codebooks).

    Args:
        config: the parsed LM part of ``config.json``.
        device: where to allocate the parameters (``"meta"`` to load weights with assign).
        dtype: floating dtype of every parameter except the conditioners (always float32).
    """

    def __init__(
        self,
        config: LMConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        ctx = torch.device(device) if device is not None else contextlib.nullcontext()
        with ctx:
            self._build(config)
            if dtype is not None:
                self.to(dtype=dtype)
            # Built after the cast: the reference keeps conditioners in float32.
            self.condition_provider: ConditionProvider | None = None
            if config.conditioners:
                self.condition_provider = ConditionProvider(config.conditioners, config.dim)

    def _build(self, c: LMConfig) -> None:
        D = c.dim
        self.emb = nn.ModuleList(
            [TokenEmbedding(c.card + 1, D, norm=c.norm_emb) for _ in range(c.n_q)]
        )
        self.text_emb = TokenEmbedding(
            c.text_card + 1, D, demux=c.demux_second_stream, norm=c.norm_emb
        )
        main_pos, self._main_sin = _positional_kind(c.positional_embedding)
        self.transformer = StreamingTransformer(
            d_model=D,
            num_heads=c.num_heads,
            num_layers=c.num_layers,
            dim_feedforward=c.dim_feedforward,
            causal=c.causal,
            context=c.context,
            positional_embedding=main_pos,
            max_period=c.max_period,
            gating=c.gating,
            norm=c.norm,
            layer_scale=c.layer_scale,
            cross_attention=c.cross_attention,
            kv_repeat=c.kv_repeat,
        )
        self.out_norm = make_norm(c.norm, D)
        self.text_linear = Linear(D, c.text_out_card, bias=c.bias_proj)

        ddim = c.depformer_dim
        schedule = c.depformer_weights_per_step_schedule
        num_in = 1
        if c.depformer_multi_linear:
            num_in = max(schedule) + 1 if schedule else c.dep_q
        # Built even without a depformer (dep_q = 0): the reference does, so checkpoints have it.
        self.depformer_in = nn.ModuleList([Linear(D, ddim, bias=False) for _ in range(num_in)])
        self.depformer_emb = nn.ModuleList()
        self.depformer_text_emb: TokenEmbedding | None = None
        self.depformer_norms = nn.ModuleList()
        self.depformer: StreamingTransformer | None = None
        self._dep_sin = False
        self._dep_max_period = c.max_period
        if c.dep_q > 0:
            rank = c.depformer_low_rank_embeddings
            # The last codebook is never a depformer input: dep_q - 1 audio tables.
            self.depformer_emb = nn.ModuleList(
                [
                    TokenEmbedding(c.card + 1, ddim, low_rank=rank, norm=c.norm_emb)
                    for _ in range(c.dep_q - 1)
                ]
            )
            self.depformer_text_emb = TokenEmbedding(
                c.text_card + 1, ddim, low_rank=rank, demux=c.demux_second_stream, norm=c.norm_emb
            )
            self.depformer_norms = nn.ModuleList(
                [
                    nn.Identity() if c.depformer_norm is None else make_norm(c.depformer_norm, ddim)
                    for _ in range(c.dep_q)
                ]
            )
            dep_pos, self._dep_sin = _positional_kind(c.depformer_pos_emb)
            self._dep_max_period = _first(c.depformer_max_period, c.max_period)
            dim_ff = c.depformer_dim_feedforward
            if dim_ff is None:
                dim_ff = int(c.hidden_scale * ddim)
            # Without per-step weights: one shared set, stepped like the per-step case.
            dep_schedule = schedule if c.depformer_weights_per_step else (0,) * c.dep_q
            self.depformer = StreamingTransformer(
                d_model=ddim,
                num_heads=c.depformer_num_heads or c.num_heads,
                num_layers=c.depformer_num_layers or c.num_layers,
                dim_feedforward=dim_ff,
                causal=c.causal,
                context=None,
                positional_embedding=dep_pos,
                max_period=self._dep_max_period,
                gating=c.depformer_gating or c.gating,
                norm=c.norm,
                layer_scale=_first_opt(c.depformer_layer_scale, c.layer_scale),
                cross_attention=False,
                weights_per_step=c.dep_q,
                weights_per_step_schedule=dep_schedule,
                kv_repeat=c.depformer_kv_repeat or c.kv_repeat,
            )
            # The depformer runs its own stream inside each frame.
            self.depformer.streaming_detached = True
        self.extra_heads = nn.ModuleList(
            [Linear(D, c.extra_heads_dim, bias=False) for _ in range(c.extra_heads_num_heads)]
        )
        self.linears = nn.ModuleList(
            [Linear(ddim, c.card, bias=c.bias_proj) for _ in range(c.dep_q)]
        )

    # -- ids and sizes ------------------------------------------------------------------------

    @property
    def n_q(self) -> int:
        """Audio codebooks given as input (streams 1..n_q)."""
        return self.config.n_q

    @property
    def dep_q(self) -> int:
        """Audio codebooks generated by the depformer (streams 1..dep_q; 0 for STT)."""
        return self.config.dep_q

    @property
    def card(self) -> int:
        """Audio codebook size (ids 0..card-1; ``card`` is the initial token)."""
        return self.config.card

    @property
    def text_card(self) -> int:
        """Text vocabulary size of the input tables (``text_card`` is the initial token)."""
        return self.config.text_card

    @property
    def text_out_card(self) -> int:
        """Width of the text logits."""
        return self.config.text_out_card

    @property
    def dim(self) -> int:
        """Main transformer width ``D``."""
        return self.config.dim

    @property
    def delays(self) -> tuple[int, ...]:
        """Per-stream delays in steps, ``[text, audio_0, ..., audio_{n_q-1}]``."""
        return self.config.delays

    @property
    def max_delay(self) -> int:
        """Largest delay."""
        return max(self.config.delays)

    @property
    def num_codebooks(self) -> int:
        """Streams per step, ``K = n_q + 1``."""
        return self.config.n_q + 1

    @property
    def audio_offset(self) -> int:
        """Index of the first audio stream (1)."""
        return AUDIO_OFFSET

    @property
    def initial_token_id(self) -> int:
        """Audio token fed before a stream's delay has elapsed (= ``card``)."""
        return self.config.card

    @property
    def text_initial_token_id(self) -> int:
        """Text token fed at the first step (= ``text_card``)."""
        return self.config.text_card

    @property
    def zero_token_id(self) -> int:
        """Token whose embedding is exactly zero (-1)."""
        return ZERO_TOKEN_ID

    @property
    def ungenerated_token_id(self) -> int:
        """Placeholder for a token still to be sampled (-2); must never be embedded."""
        return UNGENERATED_TOKEN_ID

    @property
    def text_padding_token_id(self) -> int:
        """Text PAD id (``existing_text_padding_id``)."""
        return self.config.existing_text_padding_id

    @property
    def end_of_text_padding_id(self) -> int:
        """The "end of padding" id: a word starts next (``existing_text_end_padding_id``)."""
        return self.config.existing_text_end_padding_id

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.text_emb.table_device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the network (the conditioners stay float32)."""
        return self.text_emb.table_dtype

    # -- main transformer ---------------------------------------------------------------------

    def embed(
        self, tokens: torch.Tensor, sum_condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Input embedding ``[B, T, D]`` of ``tokens [B, K, T]`` (K = n_q + 1, stream 0 = text).

        Sum order as the reference (it matters in bfloat16): audio 0..n_q-1, then text, then
        ``sum_condition [B, 1, D]`` cast to the model dtype. Token -1 contributes exactly 0.
        """
        if tokens.shape[1] != self.num_codebooks:
            raise ValueError(
                f"expected {self.num_codebooks} streams (text + n_q audio), got {tokens.shape[1]}"
            )
        if self.config.norm_emb:
            x = self.emb[0](tokens[:, AUDIO_OFFSET])
            for k in range(1, self.n_q):
                x = x + self.emb[k](tokens[:, AUDIO_OFFSET + k])
        else:
            # Same numbers as calling each table, with the -1 test and clamp done once for all
            # streams and the sum accumulated in place (fewer kernels per step).
            is_zero = (tokens == ZERO_TOKEN_ID).unsqueeze(-1)  # [B, K, T, 1]
            safe = tokens.clamp(min=0)
            x = self._audio_lookup(0, safe, is_zero)
            for k in range(1, self.n_q):
                x.add_(self._audio_lookup(k, safe, is_zero))
        x = x + self.text_emb(tokens[:, 0])
        if sum_condition is not None:
            x = x + sum_condition.to(x.dtype)
        return x

    def _audio_lookup(self, k: int, safe: torch.Tensor, is_zero: torch.Tensor) -> torch.Tensor:
        table = self.emb[k]
        assert isinstance(table, TokenEmbedding)
        i = AUDIO_OFFSET + k
        return table.lookup(safe[:, i]).masked_fill_(is_zero[:, i], 0.0)

    def forward_text(
        self,
        tokens: torch.Tensor,
        *,
        sum_condition: torch.Tensor | None = None,
        cross_src: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Main transformer on ``tokens [B, K, T]``: ``(text_logits [B, T, text_out_card],
        hidden [B, T, D])``, both in the model dtype.

        ``hidden`` is the **normalized** output (after ``out_norm``): the input of the
        depformer and of the extra heads. Inside ``dsm.nn.streaming(lm, B)`` the call advances
        the main transformer's stream by ``T`` steps (the reference steps with ``T = 1``);
        outside, it is a fresh stream. ``sum_condition [B, 1, D]`` and ``cross_src [B, S, D]``
        come from :class:`Conditions`; while streaming, ``cross_src`` is only read on the first
        call (the transformer caches its K/V; use ``lm.transformer.set_cross_source`` to
        replace it for some slots).
        """
        x = self.embed(tokens, sum_condition)
        if self._main_sin:
            x = x + self._sin(self.transformer, x, self.config.max_period)
        h = self.transformer(x, cross_src=cross_src)
        h = self.out_norm(h)
        return self.text_linear(h), h

    def extra_heads_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Softmax of every extra head: ``hidden [B, T, D]`` -> ``[B, T, n_heads, dim]``.

        Computed in the dtype of ``hidden`` (the model dtype), as the reference does; cast the
        input to float32 first for float32 probabilities.
        """
        if not len(self.extra_heads):
            raise RuntimeError("this model has no extra heads (extra_heads_num_heads = 0)")
        logits = torch.stack([head(hidden) for head in self.extra_heads], dim=-2)
        return torch.softmax(logits, dim=-1)

    # -- depformer ----------------------------------------------------------------------------

    def _depformer_in_index(self, step: int) -> int:
        if len(self.depformer_in) == 1:
            return 0
        schedule = self.config.depformer_weights_per_step_schedule
        return schedule[step] if schedule else step

    def _depformer_token_emb(self, step: int, tokens: torch.Tensor) -> torch.Tensor:
        if step == 0:
            assert self.depformer_text_emb is not None
            return self.depformer_text_emb(tokens)
        return self.depformer_emb[step - 1](tokens)

    def depformer_inputs(
        self, hidden: torch.Tensor, steps: int | None = None
    ) -> list[torch.Tensor]:
        """The depformer's input projections ``[B, ddim]`` of ``hidden [B, D]`` for the first
        ``steps`` steps (default ``dep_q``), each weight set of the schedule computed once:
        steps that share a set get the same tensor. Pass ``inputs[step]`` as
        ``depformer_step(..., projected=)``."""
        done: dict[int, torch.Tensor] = {}
        inputs = []
        for step in range(self.dep_q if steps is None else steps):
            index = self._depformer_in_index(step)
            if index not in done:
                done[index] = self.depformer_in[index](hidden)
            inputs.append(done[index])
        return inputs

    def depformer_step(
        self,
        step: int,
        hidden: torch.Tensor,
        prev_token: torch.Tensor,
        projected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, card]`` of codebook ``step`` (0..dep_q-1) for one frame.

        Args:
            step: codebook index; steps must be called in order 0, 1, ... within a frame.
            hidden: ``[B, D]`` normalized hidden state of this frame (from :meth:`forward_text`).
            prev_token: ``[B]`` long: the (multiplexed, for TTS) text token at step 0, else the
                token sampled for codebook ``step - 1``.
            projected: this step's input projection of ``hidden``, from
                :meth:`depformer_inputs` (computed here when None).

        Must run inside ``dsm.nn.streaming(lm.depformer, B)``; the caller resets that stream
        (``ctl.reset()``) at the start of every frame, since the depformer's KV cache covers one
        frame only.
        """
        dep = self.depformer
        if dep is None:
            raise RuntimeError("this model has no depformer (dep_q = 0)")
        state = dep.streaming_state
        if not isinstance(state, TransformerState) or not isinstance(
            state.positions, StepPositions
        ):
            raise RuntimeError("depformer_step needs dsm.nn.streaming(lm.depformer, B)")
        if state.positions.step != step:
            raise RuntimeError(
                f"depformer stream is at step {state.positions.step} but step {step} was "
                "requested; reset the depformer stream at every frame and call steps in order"
            )
        if projected is None:
            projected = self.depformer_in[self._depformer_in_index(step)](hidden)
        x = (projected + self._depformer_token_emb(step, prev_token)).unsqueeze(1)  # [B, 1, ddim]
        if self._dep_sin:
            x = x + self._sin(dep, x, self._dep_max_period)
        y = dep(x)
        return self.linears[step](self.depformer_norms[step](y[:, 0]))

    def forward_depformer_training(
        self, tokens: torch.Tensor, hidden: torch.Tensor, steps: int | None = None
    ) -> torch.Tensor:
        """All depformer steps in parallel: ``tokens [B, K, T]`` (the targets' inputs, delayed),
        ``hidden [B, T, D]`` -> audio logits ``[B, steps, T, card]``.

        Step ``c`` reads the text token (c = 0) or audio codebook ``c - 1`` of the same frame.
        ``steps``: only the first codebooks (default all ``dep_q``); the depformer is causal
        over codebooks, so their logits are the same.
        """
        dep = self.depformer
        if dep is None:
            raise RuntimeError("this model has no depformer (dep_q = 0)")
        B, _, T = tokens.shape
        n = self.dep_q if steps is None else steps
        if not 0 < n <= self.dep_q:
            raise ValueError(f"steps must be in [1, {self.dep_q}], got {n}")
        inputs = []
        projected: dict[int, torch.Tensor] = {}
        for c in range(n):
            i = self._depformer_in_index(c)
            if i not in projected:
                projected[i] = self.depformer_in[i](hidden)
            tok = tokens[:, 0] if c == 0 else tokens[:, AUDIO_OFFSET + c - 1]
            inputs.append(self._depformer_token_emb(c, tok) + projected[i])
        x = torch.stack(inputs, dim=2).view(B * T, n, -1)  # [B*T, n, ddim]
        if self._dep_sin:
            x = x + self._sin(dep, x, self._dep_max_period)
        y = dep(x)
        logits = [
            self.linears[c](self.depformer_norms[c](y[:, c])).view(B, T, -1) for c in range(n)
        ]
        return torch.stack(logits, dim=1)

    # -- positional embedding of "sin" transformers -------------------------------------------

    @staticmethod
    def _sin(transformer: StreamingTransformer, x: torch.Tensor, max_period: float) -> torch.Tensor:
        """Sinusoidal input embedding ``[B or 1, T, D]`` at the transformer's next positions."""
        T = x.shape[1]
        state = transformer.streaming_state
        positions = torch.arange(T, device=x.device).unsqueeze(0)
        if isinstance(state, TransformerState):
            if isinstance(state.positions, RingPositions):
                positions = positions + state.positions.offsets.unsqueeze(1)
            else:
                positions = positions + state.positions.step
        return sinusoidal_embedding(positions, x.shape[-1], max_period=max_period, dtype=x.dtype)

    # -- conditioning -------------------------------------------------------------------------

    def make_conditions(
        self,
        text: TextInputs | None,
        tensors: TensorInputs | None,
        batch_size: int,
    ) -> Conditions:
        """Run the conditioners and the fuser: :class:`Conditions` (float32).

        Args:
            text: ``{name: [value or None] * B}`` for every LUT conditioner (None: padding).
            tensors: ``{name: (tensor [B, T, dim], mask [B, T] bool)}`` for every tensor
                conditioner (False: padding).
            batch_size: ``B``.

        A model without conditioners returns empty :class:`Conditions`.
        """
        provider = self.condition_provider
        fuser = self.config.fuser
        if provider is None or fuser is None:
            if text or tensors:
                raise ValueError("this model takes no conditions")
            return Conditions()
        return fuse_conditions(fuser, provider.provide(text, tensors, batch_size))

    def null_conditions(
        self, batch_size: int, tensor_lengths: dict[str, int] | None = None
    ) -> Conditions:
        """The "all conditions dropped" rows used for CFG: every text None, every tensor zero
        with an all-False mask (so every position is learnt padding).

        ``tensor_lengths[name]`` gives the length ``T`` of each tensor condition (it must equal
        the conditional rows' length to batch them together).
        """
        provider = self.condition_provider
        if provider is None or self.config.fuser is None:
            return Conditions()
        text: TextInputs = {}
        tensors: TensorInputs = {}
        lengths = tensor_lengths or {}
        device = next(provider.parameters()).device
        for name, module in provider.conditioners.items():
            if isinstance(module, LUTConditioner):
                text[name] = [None] * batch_size
            elif isinstance(module, TensorConditioner):
                if name not in lengths:
                    raise ValueError(
                        f"null_conditions needs the length of tensor condition {name!r}"
                    )
                dim = int(module.dim)
                T = lengths[name]
                tensors[name] = (
                    torch.zeros(batch_size, T, dim, device=device),
                    torch.zeros(batch_size, T, dtype=torch.bool, device=device),
                )
        return self.make_conditions(text, tensors, batch_size)

    # -- teacher forcing ----------------------------------------------------------------------

    def _initial_tokens(self, B: int, device: torch.device) -> torch.Tensor:
        """``[B, K, 1]``: text initial token then audio initial tokens."""
        initial = torch.full((B, self.num_codebooks, 1), self.initial_token_id, device=device)
        initial[:, 0] = self.text_initial_token_id
        return initial

    def forward(
        self,
        codes: torch.Tensor,
        conditions: Conditions | None = None,
        depformer_steps: int | None = None,
    ) -> LMOutput:
        """Teacher-forced logits for ``codes [B, K, T]``, aligned with the codes.

        Stream ``k`` is delayed by ``delays[k]`` (initial tokens fill the gap), an initial
        column is prepended and the last dropped, so step ``s`` predicts the delayed column
        ``s``. Logits are then shifted back; positions beyond the end are NaN and masked, as
        are targets equal to -1. Works without a depformer (``audio_logits`` is then None).
        ``depformer_steps``: audio logits of the first codebooks only (default all).
        """
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"expected {self.num_codebooks} streams (text + n_q audio), got {codes.shape[1]}"
            )
        B, K, T = codes.shape
        if conditions is None and self.config.fuser is not None:
            raise ValueError("this model is conditioned: pass conditions (see make_conditions)")
        device = codes.device
        initial = self._initial_tokens(B, device)
        delays = torch.tensor(self.delays, device=device)
        src = torch.arange(T, device=device).unsqueeze(0) - delays.unsqueeze(1)  # [K, T]
        gathered = codes.gather(2, src.clamp(min=0).unsqueeze(0).expand(B, K, T))
        delayed = torch.where(src.unsqueeze(0) >= 0, gathered, initial)  # [B, K, T]
        inputs = torch.cat([initial, delayed[:, :, :-1]], dim=2)

        sum_condition = cross = None
        if conditions is not None:
            sum_condition, cross = conditions.sum, conditions.cross
        text_logits, hidden = self.forward_text(
            inputs, sum_condition=sum_condition, cross_src=cross
        )
        text_logits, text_mask = _undelay(text_logits.unsqueeze(1), self.delays[:1])
        text_mask = text_mask & (codes[:, :1] != ZERO_TOKEN_ID)
        audio_logits = audio_mask = None
        if self.depformer is not None:
            logits = self.forward_depformer_training(delayed, hidden, depformer_steps)
            n = logits.shape[1]
            audio_delays = self.delays[AUDIO_OFFSET : AUDIO_OFFSET + n]
            audio_logits, audio_mask = _undelay(logits, audio_delays)
            targets = codes[:, AUDIO_OFFSET : AUDIO_OFFSET + n]
            audio_mask = audio_mask & (targets != ZERO_TOKEN_ID)
        return LMOutput(text_logits, audio_logits, text_mask, audio_mask)


def _first(value: float | None, default: float) -> float:
    return default if value is None else value


def _first_opt(value: float | None, default: float | None) -> float | None:
    return default if value is None else value


def _undelay(logits: torch.Tensor, delays: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift ``logits [B, K, T, C]`` back by ``delays``: ``out[:, k, t] = logits[:, k, t + d_k]``.

    Returns the shifted logits (NaN past the end) and the ``[B, K, T]`` validity mask.
    """
    B, K, T, _ = logits.shape
    device = logits.device
    src = torch.arange(T, device=device).unsqueeze(0) + torch.tensor(delays, device=device)[:, None]
    valid = src < T  # [K, T]
    index = src.clamp(max=T - 1).view(1, K, T, 1).expand_as(logits)
    shifted = logits.gather(2, index).masked_fill(~valid.view(1, K, T, 1), float("nan"))
    return shifted, valid.unsqueeze(0).expand(B, K, T).clone()
