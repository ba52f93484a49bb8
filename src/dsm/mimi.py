"""The Mimi audio codec for users: load published weights, encode audio, decode codes, stream.

::

    codec = load_mimi("kyutai/stt-1b-en_fr")            # or a .safetensors path, hf://...
    codes = codec.encode(pcm)                           # [B, 1, S] float -> [B, 32, T] int64
    audio = codec.decode(codes)                         # [B, K, T] -> [B, 1, T * 1920]

    with codec.streaming(batch_size=4) as stream:       # encoder and decoder streams
        codes = stream.encode(chunk)                    # chunk [4, 1, n * 1920]
        audio = stream.decode(codes)                    # any number of frames per call
        stream.set_exec_mask(mask)                      # pause slots ([4] bool)
        stream.reset(mask)                              # restart slots

``codec.streaming(B, decoder=False)`` / ``codec.streaming(B2, encoder=False)`` open one path
only, so encoding and decoding can stream different slot sets at the same time.

Offline :meth:`MimiCodec.encode` right-pads the audio with zeros to a whole number of frames,
as the reference does (``T = ceil(S / 1920)``); streaming calls must bring whole frames.
Decoded audio is not clipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from dsm.errors import WeightsError
from dsm.frames import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from dsm.generate.cuda_graph import GraphedStep, cuda_graphs_allowed
from dsm.models.mimi import MimiConfig, MimiModel
from dsm.nn.streaming import StreamingControl, streaming

__all__ = [
    "CARDINALITY",
    "FRAME_RATE",
    "FRAME_SIZE",
    "NUM_CODEBOOKS",
    "SAMPLE_RATE",
    "MimiCodec",
    "MimiStream",
    "load_mimi",
]

NUM_CODEBOOKS = 32  # RVQ levels in the published checkpoint (1 semantic + 31 acoustic)
CARDINALITY = 2048  # entries per codebook: valid codes are 0..2047
MIMI_MARKER_KEY = "encoder.model.0.conv.conv.weight"  # present in every Mimi checkpoint

logger = logging.getLogger(__name__)


class MimiCodec:
    """Mimi with input validation; wraps a :class:`~dsm.models.mimi.MimiModel`.

    ``check_finite`` (default True) rejects NaN/inf audio; the check costs one device
    synchronisation per call, so a server feeding audio it has already checked may turn it off.
    ``cuda_graphs`` (default True unless ``DSM_NO_CUDA_GRAPH=1``): on CUDA, streaming steps are
    replayed from CUDA graphs (one per step shape, per streaming context).
    """

    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE
    frame_size: int = FRAME_SIZE

    def __init__(self, model: MimiModel, *, check_finite: bool = True) -> None:
        config = model.config
        if (config.sample_rate, config.frame_rate) != (SAMPLE_RATE, FRAME_RATE):
            raise ValueError(
                f"MimiCodec expects a {SAMPLE_RATE} Hz / {FRAME_RATE} Hz model, got "
                f"{config.sample_rate} Hz / {config.frame_rate} Hz"
            )
        self.model = model.eval()
        self.check_finite = check_finite
        # On CUDA, streaming steps replay CUDA graphs unless DSM_NO_CUDA_GRAPH=1.
        self.cuda_graphs = cuda_graphs_allowed()
        self._graphed_encode: GraphedStep | None = None
        self._graphed_decode: GraphedStep | None = None

    @property
    def device(self) -> torch.device:
        """Where the weights live; inputs are moved here."""
        return next(self.model.parameters()).device

    @property
    def num_codebooks(self) -> int:
        """Codebooks produced by :meth:`encode` (1..32)."""
        return self.model.num_codebooks

    @property
    def total_codebooks(self) -> int:
        """Codebooks in the checkpoint (32)."""
        return self.model.total_codebooks

    @property
    def cardinality(self) -> int:
        """Entries per codebook (2048)."""
        return self.model.cardinality

    def set_num_codebooks(self, num_codebooks: int) -> None:
        """Make :meth:`encode` produce the first ``num_codebooks`` levels (1..32)."""
        if not 1 <= num_codebooks <= self.total_codebooks:
            raise ValueError(
                f"num_codebooks must be in [1, {self.total_codebooks}], got {num_codebooks}"
            )
        self.model.set_num_codebooks(num_codebooks)

    # -- validation -------------------------------------------------------------------------

    def _check_pcm(
        self, pcm: torch.Tensor, streaming_batch: int | None, check_finite: bool | None = None
    ) -> torch.Tensor:
        if not isinstance(pcm, torch.Tensor):
            raise TypeError(f"pcm must be a torch.Tensor, got {type(pcm).__name__}")
        if pcm.dim() != 3 or pcm.shape[1] != 1:
            raise ValueError(
                f"pcm must have shape [batch, 1, samples], got {tuple(pcm.shape)}; "
                "for mono audio x of shape [samples] pass x.view(1, 1, -1)"
            )
        if not pcm.is_floating_point():
            raise ValueError(
                f"pcm must be floating point in [-1, 1], got {pcm.dtype}; "
                "for int16 audio pass pcm.float() / 32768"
            )
        if streaming_batch is not None:
            S = pcm.shape[-1]
            if S == 0 or S % FRAME_SIZE != 0:
                raise ValueError(
                    f"streaming encode takes a positive multiple of {FRAME_SIZE} samples "
                    f"(80 ms frames) per call, got {S}; buffer audio into whole frames first"
                )
            if pcm.shape[0] != streaming_batch:
                raise ValueError(
                    f"pcm has batch {pcm.shape[0]} but the stream has {streaming_batch} slots; "
                    "feed every slot each call (pause idle ones with set_exec_mask)"
                )
        pcm = pcm.to(device=self.device, dtype=torch.float32)
        check = self.check_finite if check_finite is None else check_finite
        if check and not bool(torch.isfinite(pcm).all()):
            raise ValueError("pcm contains NaN or infinite samples; clean the audio first")
        return pcm

    def _check_codes(self, codes: torch.Tensor, streaming_batch: int | None) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 3:
            raise ValueError(
                f"codes must have shape [batch, codebooks, frames], got {tuple(codes.shape)}"
            )
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        K = codes.shape[1]
        if not 1 <= K <= self.total_codebooks:
            raise ValueError(
                f"codes have {K} codebooks; Mimi decodes 1 to {self.total_codebooks} "
                "(the first K levels, semantic level first)"
            )
        if streaming_batch is not None and codes.shape[0] != streaming_batch:
            raise ValueError(
                f"codes have batch {codes.shape[0]} but the stream has {streaming_batch} slots"
            )
        codes = codes.to(device=self.device, dtype=torch.long)
        if codes.numel() > 0:
            bad = (codes < 0) | (codes >= self.cardinality)
            if bool(bad.any()):
                value = int(codes[bad][0])
                raise ValueError(
                    f"codes must be in [0, {self.cardinality}), found {value}; special tokens "
                    "(padding, ungenerated frames) must be removed before decoding"
                )
        return codes

    # -- offline or streaming calls ---------------------------------------------------------

    def _encoder_batch(self) -> int | None:
        """Slots of the open encoder stream, None offline."""
        state = self.model.downsample.conv.streaming_state
        return None if state is None else state.batch_size

    def _decoder_batch(self) -> int | None:
        """Slots of the open decoder stream, None offline."""
        state = self.model.upsample.convtr.streaming_state
        return None if state is None else state.batch_size

    @torch.no_grad()
    def encode(self, pcm: torch.Tensor, *, check_finite: bool | None = None) -> torch.Tensor:
        """``[B, 1, S]`` float audio at 24 kHz -> codes ``[B, num_codebooks, T]`` int64.

        Offline ``T = ceil(S / 1920)`` (zero right-padding); inside :meth:`streaming`, ``S`` must
        be a positive multiple of 1920 and ``T = S / 1920``. ``check_finite`` overrides
        :attr:`check_finite` for this call (False: the caller checked the audio on the host, so
        no device-to-host sync happens here).
        """
        batch = self._encoder_batch()
        pcm = self._check_pcm(pcm, batch, check_finite)
        if batch is None and pcm.shape[-1] == 0:
            return torch.zeros(pcm.shape[0], self.num_codebooks, 0, dtype=torch.long)
        if batch is not None and self._graphed_encode is not None:
            return self._graphed_encode(pcm)
        return self.model.encode(pcm)

    @torch.no_grad()
    def encode_to_latent(self, pcm: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """``[B, 1, S]`` -> continuous latent ``[B, 512, T]`` (quantized if ``quantize``)."""
        batch = self._encoder_batch()
        pcm = self._check_pcm(pcm, batch)
        if batch is None and pcm.shape[-1] == 0:
            raise ValueError("pcm is empty; encode_to_latent needs at least one sample")
        return self.model.encode_to_latent(pcm, quantize=quantize)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (``1 <= K <= 32``, values in [0, 2048)) -> ``[B, 1, T * 1920]``.

        The output is float32 and not clipped. Streaming, each call may bring any number of
        frames (T >= 1).
        """
        batch = self._decoder_batch()
        codes = self._check_codes(codes, batch)
        T = codes.shape[-1]
        if T == 0:
            if batch is not None:
                raise ValueError("streaming decode needs at least one frame per call")
            return torch.zeros(codes.shape[0], 1, 0, device=self.device)
        if batch is not None and self._graphed_decode is not None:
            return self._graphed_decode(codes)
        return self.model.decode(codes)

    @contextmanager
    def streaming(
        self, batch_size: int, *, encoder: bool = True, decoder: bool = True
    ) -> Iterator[MimiStream]:
        """Stream ``batch_size`` slots through the encoder and/or the decoder.

        Each path has its own state; a path already streaming (another open context) raises.
        Inside the context :meth:`encode` / :meth:`decode` stream too. On CUDA each step shape
        is captured in a CUDA graph after its first call (see ``cuda_graphs``).
        """
        if not (encoder or decoder):
            raise ValueError("open at least one of encoder or decoder")
        with ExitStack() as stack:
            controls: dict[str, StreamingControl | None] = {"encoder": None, "decoder": None}
            model = self.model
            for name, wanted, side, busy, step in (
                ("encoder", encoder, model.encoder_side, model.encoder_is_streaming, model.encode),
                ("decoder", decoder, model.decoder_side, model.decoder_is_streaming, model.decode),
            ):
                if not wanted:
                    continue
                if busy:
                    raise RuntimeError(
                        f"the Mimi {name} is already streaming; close the other "
                        f"streaming context first (or open it with {name}=False)"
                    )
                controls[name] = stack.enter_context(
                    streaming(side, batch_size, device=self.device)
                )
                use_graphs = self.cuda_graphs and self.device.type == "cuda"
                graphed_attr = "_graphed_encode" if name == "encoder" else "_graphed_decode"
                setattr(self, graphed_attr, GraphedStep(step) if use_graphs else None)
                stack.callback(setattr, self, graphed_attr, None)
            yield MimiStream(self, controls["encoder"], controls["decoder"])


class MimiStream:
    """Handle of :meth:`MimiCodec.streaming`: per-path controls plus encode/decode."""

    def __init__(
        self,
        codec: MimiCodec,
        encoder: StreamingControl | None,
        decoder: StreamingControl | None,
    ) -> None:
        self.codec = codec
        self.encoder = encoder  # None when the encoder path is not streamed here
        self.decoder = decoder

    @property
    def _controls(self) -> list[StreamingControl]:
        return [c for c in (self.encoder, self.decoder) if c is not None]

    def encode(self, pcm: torch.Tensor, *, check_finite: bool | None = None) -> torch.Tensor:
        """One streaming step: ``[B, 1, n * 1920]`` -> codes ``[B, K, n]`` (``check_finite``:
        see :meth:`MimiCodec.encode`)."""
        if self.encoder is None:
            raise RuntimeError("this stream was opened with encoder=False")
        return self.codec.encode(pcm, check_finite=check_finite)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """One streaming step: codes ``[B, K, T]`` (T >= 1) -> ``[B, 1, T * 1920]``."""
        if self.decoder is None:
            raise RuntimeError("this stream was opened with decoder=False")
        return self.codec.decode(codes)

    def set_exec_mask(self, mask: torch.Tensor) -> None:
        """Only slots where ``mask`` ([B] bool) is True advance (both paths)."""
        for control in self._controls:
            control.set_exec_mask(mask.to(control.exec_mask.device))

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Restart the slots where ``mask`` is True (all when None) on both paths."""
        for control in self._controls:
            control.reset(None if mask is None else mask.to(control.exec_mask.device))


def check_mimi_state(model: MimiModel, state: dict[str, torch.Tensor], origin: str) -> None:
    """Raise :class:`~dsm.errors.WeightsError` listing every key that does not fit ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if MIMI_MARKER_KEY not in state:
        sample = ", ".join(sorted(state)[:3]) or "no tensors"
        raise WeightsError(
            f"{origin} is not a Mimi checkpoint (it has no {MIMI_MARKER_KEY!r}; first keys: "
            f"{sample}). Pass the codec file, e.g. tokenizer-e351c8d8-checkpoint125.safetensors, "
            "not the language model weights"
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} != model {expected[k]}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or misshaped:
        lines = [f"{origin} does not match the Mimi architecture:"]
        for title, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + "; ".join(keys))
        lines.append(
            "Use a published Mimi checkpoint (318 float32 tensors) or one the reference saved "
            "(its model.state_dict())."
        )
        raise WeightsError("\n".join(lines))


def load_mimi(
    source: str | Path,
    *,
    device: torch.device | str | None = None,
    num_codebooks: int = NUM_CODEBOOKS,
    revision: str | None = None,
    config: MimiConfig | None = None,
) -> MimiCodec:
    """Load a Mimi codec.

    ``source``: a Mimi ``.safetensors`` file, ``hf://owner/repo/file``, a local checkpoint
    directory or a hub repo id (its ``config.json`` names the Mimi file). ``device``: where to
    run (default CPU). ``num_codebooks``: levels produced by ``encode`` (1..32; STT uses 32).
    ``config``: the architecture, default the published one (tests vary the context).
    """
    from dsm.checkpoint import resolve_mimi_file
    from dsm.checkpoint.weights import fuse_split_projections, read_safetensors

    path = Path(resolve_mimi_file(source, revision=revision))
    target = torch.device(device if device is not None else "cpu")
    # The published (fused) layout, or the reference's own state_dict() (split projections).
    state = fuse_split_projections(read_safetensors(path))
    model = MimiModel(config or MimiConfig())
    check_mimi_state(model, state, str(path))
    model.to(target)
    model.load_state_dict(state, strict=True)
    codec = MimiCodec(model)
    codec.set_num_codebooks(num_codebooks)
    return codec
