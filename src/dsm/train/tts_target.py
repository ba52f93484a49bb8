"""The TTS training target and its teacher-forced loss (model-spec §2.4, §5.3, §5.4).

A TTS checkpoint generates with the text stream leading: at step ``s`` the state machine feeds
the (multiplexed) text token of step ``s`` while the audio of time ``s - delay_steps`` comes out
(``delay_steps = int(audio_delay * 12.5)``, 16 for tts-1.6b), each codebook further delayed by
the checkpoint's ``delays``. The frames of a generation, undelayed, are exactly the ``codes
[1 + n_q, T]`` that :meth:`dsm.models.lm.LMModel.forward` takes for teacher forcing: text first
(the fed token), then audio codebook ``q`` at column ``delay_steps + j`` for Mimi frame ``j``
and ``-1`` (no input, no target) before. :func:`build_target` makes the same tensor from a
recording's Mimi codes and its timed words, by running the state machine of inference
(:class:`dsm.tts.state_machine.StateMachine`) with the model's choices replaced by the words'
start steps: a word said at ``t`` seconds is consumed at step ``round(t * 12.5)`` (the
reference's transcripts time a word at its consumption step / 12.5).

Targets:

* audio: every codebook the depformer generates, masked where the code is ``-1``;
* text: what the model samples on its text stream is an action, NEW_WORD (0) or PAD (3; the
  machine reads any other id as PAD); the machine overrides it while a word's tokens are fed,
  while padding is forced, once ``max_padding`` pads were used and after the end. The text
  target is the action taken at the steps where the model's choice is the one used, the rest
  is not a target (``IGNORE``). Its loss is the negative log-likelihood of that action: of id 0
  for NEW_WORD, of every other id together for PAD.

The loss (:func:`tts_loss`) is weighted as moshi-finetune's: the text loss, where PAD
weighs ``text_padding_weight`` (0.5), plus cross-entropy on the audio codebooks where the first
(semantic) codebook weighs ``semantic_weight`` (100, its example config's
``first_codebook_weight_multiplier``), each a weighted mean over its valid positions.

Conditions (:func:`training_conditions`): the speaker embedding in speaker slot 0 (as
``dsm synthesize`` places one voice), ``control = "ok"`` and, for a CFG-distilled checkpoint,
the ``cfg`` LUT value (default 1.0: recorded speech is the plain conditional distribution). The
speaker tensor keeps its autograd graph, so a voice can be learnt through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from dsm.errors import DsmError
from dsm.frames import FRAME_RATE
from dsm.models.conditioners import Conditions, LUTConditioner, TensorConditioner
from dsm.stt.words import Word
from dsm.tts.entries import NEW_WORD_TOKEN, PAD_TOKEN, Entry
from dsm.tts.model import CFG_CONDITION, CONTROL_CONDITION, SPEAKER_CONDITION, TextToSpeech
from dsm.tts.state_machine import NO_TOKEN, MachineState

__all__ = [
    "IGNORE",
    "SEMANTIC_WEIGHT",
    "TEXT_PADDING_WEIGHT",
    "TtsLoss",
    "TtsTarget",
    "build_target",
    "collate",
    "freeze",
    "target_from_generation",
    "training_conditions",
    "tts_loss",
    "word_start_steps",
]

SEMANTIC_WEIGHT = 100.0  # moshi-finetune's example first_codebook_weight_multiplier
TEXT_PADDING_WEIGHT = 0.5  # moshi-finetune's text_padding_weight
IGNORE = -100  # text target of the steps where the model's choice is not used


class TargetError(DsmError, ValueError):
    """Words and audio that cannot make a TTS training example."""


@dataclass
class TtsTarget:
    """One teacher-forcing example.

    Attributes:
        codes: ``[1 + n_q, T]`` int64: the fed text stream, then the audio codebooks shifted by
            ``delay_steps`` (``-1`` before them and for codebooks the audio lacks).
        text_target: ``[T]`` int64 action (NEW_WORD / PAD) where the model's choice counts,
            else ``IGNORE``.
        words: the words consumed, with the step at which each was.
    """

    codes: torch.Tensor
    text_target: torch.Tensor
    words: list[tuple[str, int]]

    @property
    def steps(self) -> int:
        return int(self.codes.shape[-1])


def word_start_steps(words: Sequence[Word]) -> list[int]:
    """The step at which each word should be consumed (``round(start * 12.5)``)."""
    return [round(w.start * FRAME_RATE) for w in words]


def _run_machine(
    tts: TextToSpeech, entries: list[Entry], steps: int, wants: Callable[[int, MachineState], bool]
) -> tuple[list[int], list[int], list[tuple[str, int]]]:
    """Fed tokens, text targets and consumed words of ``steps`` steps where the model asks for
    a new word when ``wants(step, state)``."""
    machine = tts.machine
    state = machine.new_state(entries)
    fed: list[int] = []
    target: list[int] = []
    for step in range(steps):
        free = (
            not state.queued
            and state.forced_padding <= 0
            and state.remaining_padding > 0
            and state.end_step is None
        )
        action = NEW_WORD_TOKEN if wants(step, state) else PAD_TOKEN
        fed.append(machine.process(step, state, action))
        target.append(action if free else IGNORE)
    return fed, target, state.transcript


def _audio_columns(tts: TextToSpeech, audio: torch.Tensor, steps: int) -> torch.Tensor:
    """``[n_q, steps]``: ``audio [Q, F]`` placed at ``delay_steps``, ``-1`` elsewhere."""
    n_q = tts.lm.n_q
    if audio.dim() != 2 or audio.shape[0] > n_q or audio.dtype.is_floating_point:
        raise TargetError(
            f"audio codes must be integer [codebooks <= {n_q}, frames], got "
            f"{audio.dtype} {list(audio.shape)}"
        )
    columns = torch.full((n_q, steps), NO_TOKEN, dtype=torch.long)
    frames = min(audio.shape[1], steps - tts.delay_steps)
    if frames > 0:
        columns[: audio.shape[0], tts.delay_steps : tts.delay_steps + frames] = audio[:, :frames]
    return columns


def build_target(
    tts: TextToSpeech, audio: torch.Tensor, words: Sequence[Word], *, end: float | None = None
) -> TtsTarget:
    """The example of a recording: its Mimi codes ``audio [Q, F]`` (``Q <= n_q``) and its timed
    words (seconds from the start of the audio).

    The model is made to ask for each word at its start step and for the end at ``end``
    seconds (default the last word's end); the state machine does the rest as at inference (a
    word it cannot start yet, because the previous one's tokens or padding are still being fed,
    starts later; one that comes after ``max_padding`` pads starts earlier).
    """
    if not words:
        raise TargetError("no words: a TTS example needs its transcript")
    steps = int(audio.shape[-1]) + tts.delay_steps
    entries = tts.entries([" ".join(w.text for w in words)])
    spoken = [e for e in entries if e.tokens]
    if len(spoken) != len(words):
        raise TargetError(
            f"the transcript splits into {len(spoken)} words, the timings give {len(words)}"
        )
    starts = word_start_steps(words)
    end_step = round((words[-1].end if end is None else end) * FRAME_RATE)

    def wants(step: int, state: MachineState) -> bool:
        # From its due step on, the next word (then the end) is asked for until taken.
        taken = len(state.consumed)
        due = starts[taken] if taken < len(starts) else end_step
        return state.end_step is None and step >= due

    fed, target, consumed = _run_machine(tts, entries, steps, wants)
    codes = torch.cat([torch.tensor(fed)[None], _audio_columns(tts, audio, steps)])
    return TtsTarget(codes, torch.tensor(target), consumed)


def target_from_generation(tts: TextToSpeech, text: str, frames: torch.Tensor) -> TtsTarget:
    """The example of a generation: ``frames [1 + dep_q, T]`` as recorded by the engine (text
    fed, audio ``-1`` before the delay) for the script ``text``.

    The model's NEW_WORD choices are read back from the fed text stream (a word start, or the
    end marker); the machine is re-run with them and must feed the same stream, which checks
    that the target is built as generation runs.
    """
    card = tts.machine.card
    text_stream = frames[0].tolist()
    if tts.machine.second_stream_ahead:
        wants_at = [tok // card - 1 == NEW_WORD_TOKEN for tok in text_stream]
    else:
        wants_at = [tok == NEW_WORD_TOKEN for tok in text_stream]
    entries = tts.entries([text])
    fed, target, consumed = _run_machine(
        tts, entries, len(text_stream), lambda step, _: wants_at[step]
    )
    if fed != text_stream:
        raise TargetError("the state machine does not reproduce the generated text stream")
    audio = frames[1:, tts.delay_steps :]
    steps = len(text_stream)
    codes = torch.cat([torch.tensor(fed)[None], _audio_columns(tts, audio, steps)])
    return TtsTarget(codes, torch.tensor(target), consumed)


def collate(targets: Sequence[TtsTarget]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch ``(codes [B, K, T], text_target [B, T])``, right-padded with ``-1`` / ignored
    (the model is causal: padding after an example changes nothing before it)."""
    length = max(t.steps for t in targets)
    K = targets[0].codes.shape[0]
    codes = torch.full((len(targets), K, length), NO_TOKEN, dtype=torch.long)
    codes[:, 0] = PAD_TOKEN
    text = torch.full((len(targets), length), IGNORE, dtype=torch.long)
    for b, t in enumerate(targets):
        codes[b, :, : t.steps] = t.codes
        text[b, : t.steps] = t.text_target
    return codes, text


def training_conditions(
    tts: TextToSpeech, voice: torch.Tensor | None, batch_size: int, cfg: float | None = None
) -> Conditions | None:
    """Condition rows for ``batch_size`` examples spoken by ``voice [1, dim, frames]`` (kept in
    the autograd graph), with ``control = "ok"`` and the CFG-distilled checkpoint's ``cfg``
    value (default 1.0). None for a checkpoint without conditioners."""
    conditioners = tts._conditioners
    if not conditioners:
        return None
    text: dict[str, list[str | None]] = {}
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in conditioners.items():
        if isinstance(module, LUTConditioner):
            value: str | None = None
            if name == CONTROL_CONDITION:
                value = "ok"
            elif name == CFG_CONDITION and tts.cfg_distilled:
                lut = tts.check_cfg(1.0 if cfg is None else cfg)
                value = None if lut is None else format(lut, ".1f")
            text[name] = [value] * batch_size
        elif isinstance(module, TensorConditioner) and name == SPEAKER_CONDITION:
            if voice is None:
                raise TargetError("this checkpoint is conditioned on a speaker embedding")
            dim = int(module.dim)
            if voice.dim() != 3 or voice.shape[:2] != (1, dim):
                raise TargetError(f"a voice is [1, {dim}, frames], got {list(voice.shape)}")
            frames = voice.shape[2]
            first = voice[0].transpose(0, 1).float()  # [frames, dim]
            rest = first.new_zeros((tts.max_speakers - 1) * frames, dim)
            tensor = torch.cat([first, rest]).expand(batch_size, -1, -1)
            mask = torch.zeros(batch_size, tts.max_speakers * frames, dtype=torch.bool)
            mask[:, :frames] = True
            tensors[name] = (tensor, mask.to(tensor.device))
        else:
            raise DsmError(f"unsupported conditioner {name!r} in this checkpoint")
    return tts.lm.make_conditions(text, tensors, batch_size)


@dataclass
class TtsLoss:
    """The loss and its parts (``text`` and ``audio`` weighted means; ``total`` their sum)."""

    total: torch.Tensor
    text: torch.Tensor
    audio: torch.Tensor


def tts_loss(
    tts: TextToSpeech,
    codes: torch.Tensor,
    text_target: torch.Tensor,
    conditions: Conditions | None,
    *,
    semantic_weight: float = SEMANTIC_WEIGHT,
    text_padding_weight: float = TEXT_PADDING_WEIGHT,
    model: Callable[..., Any] | None = None,
    codebooks: int | None = None,
) -> TtsLoss:
    """Teacher-forced loss of ``codes [B, K, T]`` with text targets ``[B, T]`` (see module).

    ``model``: what to call for the forward (default ``tts.lm``; a training loop passes its
    wrapper of it, e.g. DDP). ``codebooks``: the audio loss on the first codebooks only
    (default all that the depformer generates); the depformer then runs only those steps,
    which is most of a step's time on tts-1.6b (see ``benchmarks/bench_voice.py``)."""
    lm = tts.lm
    forward = lm if model is None else model
    if codebooks is None:
        out = forward(codes.to(lm.device), conditions)
    else:
        out = forward(codes.to(lm.device), conditions, codebooks)
    device = lm.device
    # Text: the likelihood of the action taken; any id but NEW_WORD is read as PAD.
    logits = torch.nan_to_num(out.text_logits[:, 0].float())  # [B, T, C]
    target = text_target.to(device)
    valid = (target != IGNORE) & out.text_mask[:, 0]
    log_norm = logits.logsumexp(-1)
    log_new = logits[..., NEW_WORD_TOKEN] - log_norm
    rest = torch.cat([logits[..., :NEW_WORD_TOKEN], logits[..., NEW_WORD_TOKEN + 1 :]], dim=-1)
    log_pad = rest.logsumexp(-1) - log_norm
    nll = -torch.where(target == NEW_WORD_TOKEN, log_new, log_pad)
    weights = torch.where(target == PAD_TOKEN, text_padding_weight, 1.0) * valid
    text_loss = (nll * weights).sum() / weights.sum().clamp(min=1e-8)
    # Audio: the depformer's codebooks.
    if out.audio_logits is None or out.audio_mask is None:
        raise DsmError("this checkpoint has no depformer: it does not generate audio")
    audio_logits = out.audio_logits.float()  # [B, dep_q, T, card]
    n = audio_logits.shape[1]
    audio_target = codes[:, 1 : 1 + n].to(device)
    mask = out.audio_mask
    cb_weight = torch.ones(n, device=device)
    cb_weight[0] = semantic_weight
    weights_a = mask * cb_weight.view(1, -1, 1)
    ce_a = F.cross_entropy(
        torch.nan_to_num(audio_logits).permute(0, 3, 1, 2),
        audio_target.clamp(min=0),
        reduction="none",
    )
    audio_loss = (ce_a * weights_a).sum() / weights_a.sum().clamp(min=1e-8)
    return TtsLoss(text_loss + audio_loss, text_loss, audio_loss)


def freeze(tts: TextToSpeech) -> TextToSpeech:
    """Make ``tts``'s LM trainable-through but frozen: plain (unpacked) CPU weights, so autograd
    runs through every projection, and no parameter requiring a gradient."""
    from dsm.nn import set_cpu_kernels

    set_cpu_kernels(tts.lm, pack=False)
    tts.lm.requires_grad_(False)
    tts.lm.eval()
    return tts
