"""The page at ``/`` in headless Chromium: live STT from the (fake) microphone, TTS playback and
its WAV download, and the failures a person can meet, each checked against the library.

One browser per module; the fake microphone plays the first seconds of ``samples/bria.mp3``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

import dsm
from dsm.audio import load_audio
from dsm.audio.encode import write_wav
from dsm.frames import SAMPLE_RATE
from dsm.server import ServerConfig, SttModuleConfig, TtsModuleConfig
from tests.server.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SocketLog,
    ThreadServer,
    artifacts_dir,
    require_browser,
    thread_server,
)
from tests.server.conftest import KEY
from tests.server.tts_helpers import TEXT, SharedTts, shared_tts

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "bria.mp3"
MIC_SECONDS = 4.0
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def sample_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The first seconds of the shipped sample as the fake microphone's WAV file."""
    pcm = load_audio(SAMPLE)[: int(MIC_SECONDS * SAMPLE_RATE)]
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    write_wav(path, pcm)
    return path, load_audio(path)  # as the browser reads it (16-bit)


@pytest.fixture(scope="module")
def browser(sample_wav: tuple[Path, np.ndarray]) -> Iterator[Any]:
    api = require_browser()
    with api.sync_playwright() as p:
        args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={sample_wav[0]}"]
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedTts:
    return shared_tts(tmp_path_factory)


def _page(browser: Any, *, mic: bool = True, viewport: dict[str, int] | None = None) -> Any:
    context = browser.new_context(
        permissions=["microphone"] if mic else [], viewport=viewport or {"width": 1000, "height": 760}
    )
    context.set_default_timeout(60_000)
    return context.new_page()


def _words(page: Any, container: str) -> list[tuple[str, str]]:
    """(text, time label) of each word shown."""
    return page.eval_on_selector_all(
        f"{container} .word",
        "els => els.map(e => [e.firstChild.textContent, e.querySelector('small').textContent])",
    )


def _best_correlation(sent: np.ndarray, sample: np.ndarray) -> float:
    """Max normalized cross-correlation of ``sent`` against the (looping) sample."""
    looped = np.tile(sample, int(np.ceil(len(sent) / len(sample))) + 1)
    n = len(looped) + len(sent)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(looped, size) * np.conj(np.fft.rfft(sent, size)), size)
    lags = corr[: len(looped) - len(sent) + 1]
    energy = np.convolve(looped**2, np.ones(len(sent)), "valid")[: len(lags)]
    scores = lags / np.sqrt(np.maximum(energy, 1e-12) * np.sum(sent**2))
    return float(scores.max())


def test_live_transcription_equals_transcribe(
    browser: Any, stt: dsm.SpeechToText, sample_wav: tuple[Path, np.ndarray], shots: Path
) -> None:
    config = ServerConfig(host="127.0.0.1", port=0,
                          stt=SttModuleConfig(batch_size=1, warmup_steps=1))  # fmt: skip
    with thread_server(config, stt=stt) as server:
        page = _page(browser)
        log = SocketLog(page)
        page.goto(server.url)
        page.wait_for_selector("body[data-ready=true]")
        page.screenshot(path=str(shots / "stt-empty.png"))
        page.click("#mic-button")
        page.wait_for_function(
            "() => document.querySelector('#stt-state').textContent.startsWith('Listening')"
        )
        # About 3 s of microphone audio, then stop: the page flushes and closes.
        page.wait_for_timeout(3000)
        page.click("#mic-button")
        page.wait_for_function(
            "() => document.querySelector('#stt-state').textContent.startsWith('Done')"
        )
        page.screenshot(path=str(shots / "stt-transcript.png"), full_page=True)
        shown = _words(page, "#transcript")
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(shots / "stt-phone.png"), full_page=True)
        page.context.close()

    # The page sends the microphone, 1 s of silence (and up to a frame), the flush Marker, then
    # silence for the model's delay.
    kinds = [m["type"] for m in log.sent]
    assert kinds.count("Marker") == 1
    audio = [np.asarray(m["pcm"], np.float32) for m in log.sent if m["type"] == "Audio"]
    before = sum(m["type"] == "Audio" for m in log.sent[: kinds.index("Marker")])
    sent = np.concatenate(audio)
    marker_s = sum(a.size for a in audio[:before]) / SAMPLE_RATE
    speech = sent[: np.flatnonzero(sent)[-1] + 1]
    assert speech.size > 2 * SAMPLE_RATE and marker_s >= speech.size / SAMPLE_RATE + 1.0
    # The words shown are the library's words for exactly the audio the page sent: every word
    # that starts in the speech, and any later one shown (the page closes when the marker comes
    # back) equal to the library's.
    expected = stt.transcribe(sent, sample_rate=SAMPLE_RATE)
    words = [(w.text, f"{w.start:.2f} s") for w in expected.words]
    in_speech = sum(w.start < speech.size / SAMPLE_RATE for w in expected.words)
    print(f"page sent {speech.size / SAMPLE_RATE:.2f} s of speech; {len(shown)} words shown")
    print(f"shown: {shown}\ntranscribe: {words}")
    assert [tuple(w) for w in shown] == words[: len(shown)]
    assert in_speech <= len(shown) and in_speech >= 1
    # The audio sent is the sample (resampled by Chromium and the page's worklet): each 0.5 s
    # window matches some place of the (looping) sample.
    win = SAMPLE_RATE // 2
    scores = [_best_correlation(speech[i : i + win], sample_wav[1])
              for i in range(0, speech.size - win + 1, win)]  # fmt: skip
    print(f"correlation of the sent audio with the sample: median {np.median(scores):.4f}, "
          f"min {min(scores):.4f} over {len(scores)} windows")  # fmt: skip
    assert np.median(scores) > 0.95


def test_tts_plays_and_downloads_synthesize(
    browser: Any, shared: SharedTts, shots: Path, tmp_path: Path
) -> None:
    from tests.helpers.reference_tts import VOICE_NAME

    tts_cfg = TtsModuleConfig(batch_size=1, temperature=0.6, voice=shared.voice)
    config = ServerConfig(host="127.0.0.1", port=0, stt=SttModuleConfig(), tts=tts_cfg)
    with thread_server(config, tts=shared.tts) as server:
        page = _page(browser)
        log = SocketLog(page)
        page.goto(f"{server.url}/#tts")
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#tts-text", TEXT)
        page.select_option("#voice", VOICE_NAME)
        page.fill("#temperature", "0")
        page.click("#play-button")
        page.wait_for_selector("#wav-button:not([disabled])")
        state = page.text_content("#tts-state") or ""
        page.screenshot(path=str(shots / "tts.png"), full_page=True)
        with page.expect_download() as info:
            page.click("#wav-button")
        wav = tmp_path / "speech.wav"
        info.value.save_as(wav)
        shown = _words(page, "#spoken")
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(shots / "tts-phone.png"), full_page=True)
        page.context.close()

    frames = [m for m in log.received if m.get("type") == "Audio"]
    assert frames and "first audio in" in state and f"{len(frames)} frames" in state
    pcm = load_audio(wav)
    assert pcm.shape == shared.whole.pcm.shape
    err = float(np.abs(pcm - shared.whole.pcm).max())
    print(f"downloaded wav vs synthesize(temperature=0): max abs diff {err:.2e}")
    np.testing.assert_allclose(pcm, shared.whole.pcm, atol=1e-5)
    assert [w for w, _ in shown] == [w.text for w in shared.whole.words]
