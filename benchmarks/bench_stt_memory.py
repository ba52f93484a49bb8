"""Peak memory of ``dsm transcribe`` on a long input: it must stay flat as the audio grows.

Writes an ``--minutes`` long mp3 (synthetic speech-like audio, encoded in blocks so the
writer never holds it all), then transcribes it with a tiny random STT checkpoint (built with
the reference, real Mimi) and samples the process RSS every 0.5 s. Prints RSS against the audio
position reached, so growth with length would show. The model is tiny so the run measures
dsm's own buffers (decoder, framing, tokens, words), not the weights.

    python benchmarks/bench_stt_memory.py --minutes 60
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import dsm
from tests.helpers.reference_mimi import speech_like
from tests.helpers.reference_stt import make_reference_stt_dir, stt_config


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_long_mp3(path: Path, minutes: float) -> None:
    import av

    block = speech_like(20.0, seed=3)[0, 0].numpy().astype(np.float32)
    total = int(minutes * 60 * 24000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp3", rate=24000)
        stream.layout = "mono"
        written = 0
        while written < total:
            n = min(block.shape[0], total - written)
            frame = av.AudioFrame.from_ndarray(block[None, :n], format="flt", layout="mono")
            frame.sample_rate = 24000
            for packet in stream.encode(frame):
                container.mux(packet)
            written += n
        for packet in stream.encode(None):
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    audio = work / "long.mp3"
    write_long_mp3(audio, args.minutes)
    ref = make_reference_stt_dir(work, stt_config(context=750))
    stt = dsm.load_stt(ref.directory, device="cpu")
    del ref
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - start, rss_mb()))
            time.sleep(0.5)

    baseline = rss_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.no_grad():
        result = stt.transcribe(audio)
    done.set()
    thread.join()
    wall = time.perf_counter() - start
    peaks = [rss for _, rss in samples]
    quarter = max(1, len(peaks) // 4)
    print(f"\ninput: {result.duration / 60:.1f} min mp3; transcribed in {wall:.0f} s "
          f"(RTF {result.duration / wall:.1f}); {len(result.words)} words")  # fmt: skip
    print("| part of the run | peak RSS (MB) |")
    print("|---|---|")
    print(f"| model loaded, before transcribing | {baseline:.0f} |")
    for i, name in enumerate(("first quarter", "second quarter", "third quarter", "last quarter")):
        part = peaks[i * quarter : (i + 1) * quarter] or peaks[-1:]
        print(f"| {name} | {max(part):.0f} |")


if __name__ == "__main__":
    main()
