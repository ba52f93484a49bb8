"""Voices given as an audio prefix, for checkpoints without a speaker conditioner (§5.4).

``kyutai/tts-0.75b-en-public`` has no ``speaker_wavs`` conditioner: its voice is a short
recording whose Mimi codes are forced as the first audio frames of the stream, so that the
model continues in that voice. As in the reference ``TTSModel`` (``get_prefix`` and the
``prefixes=`` argument of ``generate``):

* the recording is read as 24 kHz mono and encoded by the checkpoint's Mimi with all ``n_q``
  codebooks of the LM; the last :data:`PREFIX_TRIM_FRAMES` frames are dropped. The prefix is
  ``P`` frames long;
* for the first ``P`` steps the text stream is fed ``-1`` (embedded as zero) instead of the
  state machine's output, which starts at step ``P``;
* audio codebook ``q`` of step ``o`` is replaced by ``prefix[q, o - delay_steps - delays[q+1]]``
  where that index is in ``[0, P)``: the prefix is delayed like generated audio;
* with direct CFG the null branch's inputs are ``-1`` until step ``P + delay_steps`` (plus each
  stream's delay): it does not hear the prefix;
* the output audio of the prefix's ``P`` frames is cut, and word times count from the cut.

:class:`PrefixTable` keeps the prefixes of all slots in one device buffer and overlays them on
a step's audio tokens with one gather.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dsm.audio import AudioError, load_audio
from dsm.mimi import FRAME_RATE, MimiCodec
from dsm.tts.voices import VoiceError

__all__ = ["PREFIX_TRIM_FRAMES", "PrefixTable", "encode_voice_prefix", "load_voice_prefix"]

# The reference drops the last two encoded frames of a voice recording (``get_prefix``): they
# are encoded from the zero padding of the last, partial frame and the convolutions' look-ahead.
PREFIX_TRIM_FRAMES = 2


@torch.no_grad()
def encode_voice_prefix(codec: MimiCodec, pcm: np.ndarray, n_q: int) -> torch.Tensor:
    """``[n_q, P]`` int64 prefix codes (on the codec's device) of 24 kHz mono ``pcm [S]``."""
    if n_q > codec.total_codebooks:
        raise VoiceError(f"the codec has {codec.total_codebooks} codebooks, {n_q} are needed")
    wav = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).view(1, 1, -1)
    # Residual quantization: the first n_q levels of a deeper encoding are the n_q-level one.
    shared = codec.num_codebooks
    if shared < n_q:
        codec.set_num_codebooks(n_q)
    try:
        codes = codec.encode(wav.to(codec.device))
    finally:
        if shared < n_q:
            codec.set_num_codebooks(shared)
    P = codes.shape[-1] - PREFIX_TRIM_FRAMES
    if P <= 0:
        seconds = (PREFIX_TRIM_FRAMES + 1) / FRAME_RATE
        raise VoiceError(
            f"the voice recording is too short ({len(pcm) / codec.sample_rate:.2f} s): an audio "
            f"prefix needs more than {seconds:.2f} s; a few seconds of clean speech work best"
        )
    return codes[0, :n_q, :P].contiguous()


def load_voice_prefix(path: Path, codec: MimiCodec, n_q: int) -> torch.Tensor:
    """Read an audio file (any format :func:`dsm.audio.load_audio` reads, resampled to 24 kHz,
    channels averaged) and encode it as a voice prefix ``[n_q, P]``."""
    if not path.is_file():
        raise VoiceError(f"voice audio file not found: {path}")
    try:
        pcm = load_audio(path)
    except (AudioError, OSError) as exc:
        raise VoiceError(f"voice {path} could not be read as audio: {exc}") from exc
    return encode_voice_prefix(codec, pcm, n_q)


class PrefixTable:
    """The audio prefixes of ``B`` slots (see the module docstring).

    Args:
        batch_size: slots ``B``.
        audio_start: ``[n_q]`` long, ``delay_steps + delays[q+1]``: the step at which codebook
            ``q`` takes the prefix's first frame.
    """

    def __init__(self, batch_size: int, audio_start: torch.Tensor) -> None:
        self.batch_size = batch_size
        self.n_q = int(audio_start.shape[0])
        self.audio_start = audio_start.view(1, -1)  # [1, n_q]
        self.device = audio_start.device
        self.codes: torch.Tensor | None = None  # [B, n_q, P_max], grown on demand
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.frames = [0] * batch_size  # host copy of lengths

    def set(self, slot: int, codes: torch.Tensor | None) -> int:
        """Give ``slot`` the prefix ``codes [n_q, P]`` (None: no prefix); returns ``P``."""
        if codes is None:
            self.lengths[slot] = 0
            self.frames[slot] = 0
            return 0
        if codes.dim() != 2 or codes.shape[0] != self.n_q or codes.shape[1] == 0:
            raise VoiceError(
                f"a voice prefix must be int64 codes [{self.n_q}, frames], got {list(codes.shape)}"
            )
        P = int(codes.shape[1])
        current = 0 if self.codes is None else int(self.codes.shape[2])
        if current < P:
            grown = torch.zeros(self.batch_size, self.n_q, P, dtype=torch.long, device=self.device)
            if self.codes is not None:
                grown[:, :, :current] = self.codes
            self.codes = grown
        assert self.codes is not None
        self.codes[slot, :, :P] = codes.to(device=self.device, dtype=torch.long)
        self.lengths[slot] = P
        self.frames[slot] = P
        return P

    def overlay(self, audio: torch.Tensor, offsets: torch.Tensor) -> None:
        """Force the prefix codes into ``audio [B, n_q]`` (in place) for the slots whose step
        ``offsets [B]`` falls in their delayed prefix."""
        if self.codes is None or not any(self.frames):
            return
        index = offsets[:, None] - self.audio_start  # [B, n_q] prefix frame of each codebook
        inside = (index >= 0) & (index < self.lengths[:, None])
        last = self.codes.shape[2] - 1
        forced = self.codes.gather(2, index.clamp(0, last)[..., None])[..., 0]
        audio.copy_(torch.where(inside, forced, audio))
