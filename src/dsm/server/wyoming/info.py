"""The ``info`` answer to ``describe``: one asr program and one tts program for the server's
loaded modules, with their models, languages and voices (Home Assistant lists these)."""

from __future__ import annotations

import re

from wyoming.info import AsrModel, AsrProgram, Attribution, Info, TtsProgram, TtsVoice

from dsm import __version__
from dsm.server.state import DsmServer

__all__ = ["PROGRAM_NAME", "build_info", "model_languages"]

PROGRAM_NAME = "dsm"
# The method's home; a model's own attribution is its hub page (see _model_attribution).
_DSM = Attribution(
    name="dsm (Kyutai's Delayed Streams Modeling)",
    url="https://github.com/kyutai-labs/delayed-streams-modeling",
)
# A checkpoint name's language part: ``stt-1b-en_fr`` -> en, fr; ``stt-2.6b-en`` -> en.
_LANGUAGES = re.compile(r"-([a-z]{2}(?:_[a-z]{2})*)(?=$|[-@])")


def model_languages(model_id: str, configured: list[str]) -> list[str]:
    """The languages to list for ``model_id``: the configured ones, else those its name says,
    else English."""
    if configured:
        return list(configured)
    found = _LANGUAGES.findall(model_id.rsplit("/", 1)[-1])
    return found[-1].split("_") if found else ["en"]


def _model_attribution(model_id: str) -> Attribution:
    """Kyutai's hub page for a hub id (``owner/name``), no address for a local checkpoint."""
    if "/" in model_id:
        repo = model_id.split("@", 1)[0]
        return Attribution(name=repo.split("/", 1)[0], url=f"https://huggingface.co/{repo}")
    return Attribution(name="local checkpoint", url="")


def build_info(server: DsmServer) -> Info:
    """``info`` for this server now (voices appear once the TTS module has warmed up)."""
    configured = server.config.wyoming.languages
    asr: list[AsrProgram] = []
    tts: list[TtsProgram] = []
    if server.stt is not None:
        model_id = server.stt.model_id
        model = AsrModel(
            name=model_id,
            attribution=_model_attribution(model_id),
            installed=True,
            description=f"Kyutai streaming speech-to-text ({model_id})",
            version=None,
            languages=model_languages(model_id, configured),
        )
        asr.append(
            AsrProgram(
                name=PROGRAM_NAME,
                attribution=_DSM,
                installed=True,
                description="dsm streaming speech-to-text",
                version=__version__,
                models=[model],
                supports_transcript_streaming=True,
            )
        )
    if server.tts is not None:
        model_id = server.tts.model_id
        languages = model_languages(model_id, configured)
        catalog = server.tts.catalog
        voices = [
            TtsVoice(
                name=name,
                attribution=_model_attribution(model_id),
                installed=True,
                description=None,
                version=None,
                languages=languages,
            )
            for name in (catalog.names() if catalog is not None else [])
        ]
        tts.append(
            TtsProgram(
                name=PROGRAM_NAME,
                attribution=_DSM,
                installed=True,
                description=f"dsm streaming text-to-speech ({model_id})",
                version=__version__,
                voices=voices,
                supports_synthesize_streaming=True,
            )
        )
    return Info(asr=asr, tts=tts)
