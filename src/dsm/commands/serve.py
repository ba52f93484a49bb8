"""``dsm serve``: the production server (Kyutai WebSocket protocol + OpenAI-compatible HTTP).

Settings come from ``--config server.toml`` (see ``configs/``); flags override the file.
Without any API key the server is open. SIGINT/SIGTERM start a graceful shutdown: no new
sessions, active ones get ``shutdown_grace_s`` to finish, then receive an ``Error`` and close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from dsm.commands.model_args import QUANT_CHOICES
from dsm.errors import DsmError
from dsm.extras import require

__all__ = ["add_parser", "apply_overrides", "build_parser_for_tests", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``serve`` on the CLI."""
    parser = subparsers.add_parser(
        "serve",
        help="serve STT (and TTS) over Kyutai's WebSocket protocol and an OpenAI-compatible API",
        description="Run the dsm server. Kyutai's clients (the delayed-streams-modeling "
        "scripts, Unmute) connect unchanged; OpenAI clients use /v1/audio/transcriptions.",
    )
    parser.add_argument("--config", default=None, help="server TOML file (see configs/)")
    parser.add_argument("--stt-model", default=None, help="STT checkpoint: hub repo id or dir")
    parser.add_argument("--tts-model", default=None, help="TTS checkpoint: hub repo id or dir")
    parser.add_argument("--host", default=None, help="bind address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8080)")
    parser.add_argument("--batch-size", type=int, default=None, help="slots per module")
    parser.add_argument(
        "--api-key", action="append", default=None, metavar="K",
        help="accepted key (kyutai-api-key header, auth_id query or Bearer); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if any)"
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="model dtype"
    )
    parser.add_argument(
        "--quantize", choices=QUANT_CHOICES, default=None,
        help="quantize the LMs' projections at load (int8 or int4)",
    )  # fmt: skip
    parser.add_argument(
        "--stt-lora", default=None, metavar="DIR",
        help="merge this LoRA adapter (dsm finetune output) into the STT model at load",
    )  # fmt: skip
    parser.add_argument(
        "--tts-lora", default=None, metavar="DIR",
        help="merge this LoRA adapter (dsm finetune output) into the TTS model at load",
    )  # fmt: skip
    parser.add_argument(
        "--no-ui", action="store_true", default=False,
        help="don't serve the browser playground at / (live transcription, TTS)",
    )  # fmt: skip
    parser.add_argument(
        "--wyoming-uri", default=None, metavar="URI",
        help="also serve Home Assistant's Wyoming protocol here, on the same slots: "
        "tcp://0.0.0.0:10300 or unix:///path (needs pip install 'dsm[wyoming]')",
    )  # fmt: skip
    parser.add_argument(
        "--wyoming-zeroconf", default=None, metavar="NAME",
        help="announce the Wyoming endpoint over mDNS under NAME (Home Assistant discovers it)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.set_defaults(func=run)


def build_parser_for_tests() -> argparse.ArgumentParser:
    """A stand-alone ``serve`` parser (for tests and embedding)."""
    parser = argparse.ArgumentParser(prog="dsm serve")
    sub = parser.add_subparsers()
    add_parser(sub)
    return sub.choices["serve"]


def apply_overrides(config: Any, args: argparse.Namespace) -> Any:
    """Command-line flags over the file's settings."""
    if args.host is not None:
        config.host = args.host
    if args.port is not None:
        config.port = args.port
    if args.api_key:
        config.authorized_ids = list(args.api_key)
    if getattr(args, "no_ui", False):
        config.ui = False
    if getattr(args, "wyoming_uri", None) is not None:
        config.wyoming.uri = args.wyoming_uri
    if getattr(args, "wyoming_zeroconf", None) is not None:
        config.wyoming.zeroconf = args.wyoming_zeroconf
    if args.stt_model is not None:
        config.stt.model = args.stt_model
    if args.tts_model is not None:
        config.tts.model = args.tts_model
    if getattr(args, "stt_lora", None) is not None:
        config.stt.lora = args.stt_lora
    if getattr(args, "tts_lora", None) is not None:
        config.tts.lora = args.tts_lora
    for module in (config.stt, config.tts):
        if args.batch_size is not None:
            if args.batch_size < 1:
                raise DsmError("--batch-size must be at least 1")
            module.batch_size = args.batch_size
        if args.device is not None:
            module.device = args.device
        if args.dtype is not None:
            module.dtype = args.dtype
        if getattr(args, "quantize", None) is not None:
            module.quantize = args.quantize
    return config


def _load_stt(config: Any) -> Any:
    import torch

    from dsm.stt.model import load_stt

    dtype = getattr(torch, config.stt.dtype) if config.stt.dtype else None
    return load_stt(
        config.stt.model,
        device=config.stt.device,
        dtype=dtype,
        quantize=config.stt.quantize,
        lora=config.stt.lora,
    )


def _load_tts(config: Any) -> Any:
    import torch

    from dsm.tts.model import load_tts

    dtype = getattr(torch, config.tts.dtype) if config.tts.dtype else None
    kwargs: dict[str, Any] = {
        "device": config.tts.device,
        "dtype": dtype,
        "quantize": config.tts.quantize,
        "lora": config.tts.lora,
    }
    if config.tts.voices:
        kwargs["voice_repo"] = config.tts.voices
    return load_tts(config.tts.model, **kwargs)


async def _serve(config: Any, stt: Any, tts: Any) -> None:
    from dsm.server import start_server

    running = await start_server(config, stt=stt, tts=tts, ready=False)
    log = logging.getLogger("dsm.server")
    log.info("listening on %s (%s)", running.http_url, "open" if config.open else "API keys")
    if config.ui:
        log.info("browser playground at %s/ (--no-ui turns it off)", running.http_url)
    if running.wyoming is not None:
        log.info("Wyoming (Home Assistant) endpoint at %s", running.wyoming.uri)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: waiting up to %.0f s for active sessions", config.shutdown_grace_s)
    await running.stop()


def run(args: argparse.Namespace) -> int:
    """Load the models and serve until interrupted."""
    require("dsm serve", "aiohttp", "msgpack", "prometheus_client")
    from dsm.server.config import load_server_config

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = apply_overrides(load_server_config(args.config), args)
    if config.stt.model is None and config.tts.model is None:
        raise DsmError("nothing to serve: give --stt-model and/or --tts-model, or a --config")
    if config.wyoming.uri:
        from dsm.server.wyoming import parse_uri

        parse_uri(config.wyoming.uri)  # a bad URI fails before the models load
        require("the Wyoming endpoint (--wyoming-uri)", "wyoming")
        if config.wyoming.zeroconf:
            require("the Wyoming zeroconf announcement", "zeroconf")
    stt = _load_stt(config) if config.stt.model else None
    tts = _load_tts(config) if config.tts.model else None
    asyncio.run(_serve(config, stt, tts))
    return 0
