"""Resident memory of the language model: float32, quantized at load, and quantized checkpoints.

Builds a random checkpoint directory in the published kyutai/stt-1b-en_fr shape (``--layers``
main layers, real 16; LM weights stored in bfloat16 as the hub's are, the published Mimi
architecture, a tiny tokenizer), writes its int8 and int4 copies with ``dsm quantize``, then
runs each variant in a fresh process:

1. load Mimi (the codec every variant shares), note the process RSS;
2. load the LM (``dsm.lm.load_lm``: float32, ``quantize=`` at load, or the quantized
   directory), note the RSS;
3. run ``--steps`` live STT steps (``SttEngine.step``, batch 1), note the RSS and the peak.

"LM resident" is the RSS after the steps minus the RSS before the LM was loaded: weights
(mapped file pages that were read count, as the kernel counts them), packed copies, the KV
cache and the step's buffers. "peak" is the process's high-water mark (VmHWM) minus the same
base: what loading needs, e.g. the float32 weights that quantizing at load goes through. The
``dsm quantize`` rows give the peak of writing each quantized directory.

    python benchmarks/bench_quant_memory.py --layers 16 --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

GB = 1e9


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def build_checkpoint(directory: Path, layers: int) -> None:
    """A random stt-1b-shaped checkpoint directory (LM weights in bfloat16)."""
    import torch
    from safetensors.torch import save_file

    from tests.helpers.hub_layout import to_hub_layout
    from tests.helpers.published_configs import stt_1b_en_fr
    from tests.helpers.reference_lm import make_reference_lm
    from tests.helpers.reference_mimi import build_reference_mimi, save_reference_mimi
    from tests.helpers.tiny_tokenizer import train_tiny_tokenizer

    raw = stt_1b_en_fr()
    raw["num_layers"] = layers
    raw.setdefault("moshi_name", "model.safetensors")
    directory.mkdir(parents=True)
    with torch.no_grad():
        lm = make_reference_lm(raw, seed=0)
        state = {
            k: v.detach().to(torch.bfloat16 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in to_hub_layout(lm.state_dict()).items()
        }
        del lm
        save_file(state, str(directory / raw["moshi_name"]))
        del state
        save_reference_mimi(build_reference_mimi(seed=0), directory / raw["mimi_name"])
    tok = train_tiny_tokenizer(directory / "tok", vocab_size=64, name=raw["tokenizer_name"])
    (directory / raw["tokenizer_name"]).write_bytes(tok.read_bytes())
    (directory / "config.json").write_text(json.dumps(raw, indent=2))


def child_quantize(source: str, out: str, bits: int) -> dict[str, Any]:
    from dsm.commands.quantize import quantize_checkpoint

    base = status_kb("VmRSS")
    start = time.perf_counter()
    quantize_checkpoint(source, out, bits)
    return {
        "seconds": time.perf_counter() - start,
        "peak": (status_kb("VmHWM") - base) * 1e3,
    }


def child_run(directory: str, quantize: str | None, steps: int) -> dict[str, Any]:
    import torch

    from benchmarks.bench_lm import weight_bytes
    from dsm.checkpoint import open_checkpoint
    from dsm.lm import load_lm
    from dsm.mimi import FRAME_SIZE, load_mimi
    from dsm.stt.engine import SttEngine
    from tests.helpers.reference_mimi import speech_like

    torch.set_grad_enabled(False)
    codec = load_mimi(open_checkpoint(directory).mimi_file())
    pcm = speech_like((steps + 3) * FRAME_SIZE / 24000, seed=1, batch=1)[:, 0].float()
    base = status_kb("VmRSS")
    start = time.perf_counter()
    lm = load_lm(directory, quantize=quantize)
    load_s = time.perf_counter() - start
    loaded = status_kb("VmRSS")
    active = torch.ones(1, dtype=torch.bool)
    times = []
    with SttEngine(codec, lm, 1) as engine:
        engine.start_slot([0])
        for i in range(steps + 3):
            t = time.perf_counter()
            engine.step(pcm[:, i * FRAME_SIZE : (i + 1) * FRAME_SIZE], active, active)
            if i >= 3:
                times.append(time.perf_counter() - t)
        after = status_kb("VmRSS")
    times.sort()
    return {
        "held": weight_bytes(lm),
        "load_s": load_s,
        "loaded": (loaded - base) * 1e3,
        "resident": (after - base) * 1e3,
        "peak": (status_kb("VmHWM") - base) * 1e3,
        "ms": times[len(times) // 2] * 1e3,
    }


def spawn(args: list[str], threads: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="main layers (real: 16)")
    parser.add_argument("--steps", type=int, default=20, help="live STT steps per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workdir", default=None, help="keep the checkpoints here and reuse them (default: temp)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, *rest = args.child
        if kind == "quantize":
            result = child_quantize(rest[0], rest[1], int(rest[2]))
        else:
            mode = None if rest[1] == "float" else rest[1]
            result = child_run(rest[0], mode, int(rest[2]))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        source = work / "stt"
        if not (source / "config.json").is_file():
            build_checkpoint(source, args.layers)
        quantized = {}
        rows = []
        for bits, mode in ((8, "int8"), (4, "int4")):
            quantized[mode] = work / mode
            if (quantized[mode] / "config.json").is_file():
                continue
            r = spawn(["quantize", str(source), str(quantized[mode]), str(bits)], args.threads)
            rows.append(f"| `dsm quantize --bits {bits}` | - | - | {r['peak'] / GB:.2f} | - | - |")
        variants = [
            ("float32 checkpoint, float32", str(source), "float"),
            ("float32 checkpoint, `--quantize int8`", str(source), "int8"),
            ("float32 checkpoint, `--quantize int4`", str(source), "int4"),
            ("`dsm quantize --bits 8` checkpoint", str(quantized["int8"]), "float"),
            ("`dsm quantize --bits 4` checkpoint", str(quantized["int4"]), "float"),
        ]
        for name, directory, mode in variants:
            r = spawn(["run", directory, mode, str(args.steps)], args.threads)
            rows.append(
                f"| {name} | {r['held'] / GB:.2f} | {r['resident'] / GB:.2f} | "
                f"{r['peak'] / GB:.2f} | {r['load_s']:.1f} | {r['ms']:.0f} |"
            )
        print(
            f"\nstt-1b shape, {args.layers} main layers, LM stored bfloat16, "
            f"{args.threads} threads, live STT batch 1, median of {args.steps} steps"
        )
        print("| LM | tensors held GB | LM resident GB | peak GB | load s | ms per frame (live) |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
