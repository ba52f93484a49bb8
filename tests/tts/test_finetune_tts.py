"""``dsm finetune tts``: the loss falls on a tiny synthetic set; the LoRA adapter (``--lora``)
and the merged checkpoint give the same logits; the reference loads the merged checkpoint and
computes the same logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dsm.cli import main
from dsm.train.tts_target import freeze, training_conditions
from dsm.tts.model import load_tts
from tests.helpers.reference_lm import _lm_kwargs
from tests.helpers.reference_tts import ReferenceTts
from tests.helpers.threads import one_thread  # noqa: F401 - autouse fixture
from tests.train.synthetic import write_dataset

RANK = 4
TOLERANCE = 1e-5  # float32 on CPU: merging reorders one sum


@pytest.fixture(scope="module")
def run(ref_tts: ReferenceTts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finetune_tts")
    manifest = write_dataset(root / "data")
    out = root / "run"
    torch.set_num_threads(1)
    code = main([
        "finetune", "tts", "--model", str(ref_tts.directory), "--train", str(manifest),
        "--out", str(out), "--voice", str(ref_tts.voice_path()), "--lora-rank", str(RANK),
        "--steps", "16", "--lr", "1e-2", "--batch-size", "3", "--merge", "--device", "cpu",
        "--cache-dir", str(root / "cache"), "-q",
    ])  # fmt: skip
    assert code == 0
    return out


def test_loss_falls(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"TTS fine-tuning loss (mean of 3 steps): {first:.3f} -> {last:.3f}, {len(losses)} steps")
    assert len(losses) >= 6 and last < 0.9 * first


def test_every_adapter_pair_learns(run: Path) -> None:
    """The TTS LM's adapters cover the depformer and both output heads, and the loss reached
    every pair: no ``lora_B`` of an adapted projection is still zero after training (zero
    entries are written only for the extra heads and the embeddings' low-rank projections,
    which stay frozen)."""
    from safetensors.torch import load_file

    adapter = load_file(str(run / "adapter.safetensors"))
    names = {k.rsplit(".lora_", 1)[0] for k in adapter}
    assert "text_linear" in names and any(n.startswith("depformer") for n in names)
    zero = sorted(k for k, v in adapter.items() if k.endswith("lora_B.weight") and not v.any())
    print(f"{len(names)} adapter pairs; lora_B still zero: {zero}")
    assert all(k.startswith("extra_heads.") or "_emb." in k for k in zero), zero


def _logits(tts: Any, codes: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = tts.lm(codes, training_conditions(tts, voice, codes.shape[0]))
    assert out.audio_logits is not None
    return torch.cat([out.text_logits.flatten(), out.audio_logits.flatten()]).nan_to_num()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_adapter_and_merged_agree_and_the_reference_loads_it(
    ref_tts: ReferenceTts, run: Path
) -> None:
    from moshi.models.loaders import get_moshi_lm
    from moshi.utils.compile import no_compile

    from dsm.tts.voices import load_voice_embedding

    base = freeze(load_tts(ref_tts.directory, voice_repo=ref_tts.voice_dir, device="cpu"))
    adapted = load_tts(ref_tts.directory, voice_repo=ref_tts.voice_dir, device="cpu", lora=run)
    merged = load_tts(run / "merged", voice_repo=ref_tts.voice_dir, device="cpu")
    voice = load_voice_embedding(ref_tts.voice_path(), model_id=None)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (2, 9, 40), generator=gen)
    codes[:, 0] = torch.randint(0, 60, (2, 40), generator=gen)
    a, b, c = (_logits(t, codes, voice) for t in (base, adapted, merged))
    assert _rel(b, a) > 1e-3, "the adapter changed nothing: the test is void"
    err = _rel(c, b)
    # The reference, on the merged checkpoint: the same text logits for the same conditions.
    config = json.loads((run / "merged" / "config.json").read_text())
    with no_compile():
        ref = get_moshi_lm(
            run / "merged" / config["moshi_name"], lm_kwargs=_lm_kwargs(config), device="cpu",
            dtype=torch.float32,
        ).eval()  # fmt: skip
        conditions = training_conditions(merged, voice, 2)
        assert conditions is not None
        with torch.no_grad():
            ours = merged.lm.forward_text(
                codes, sum_condition=conditions.sum, cross_src=conditions.cross
            )[0]
            theirs = ref.forward_text(
                codes, sum_condition=conditions.sum, cross_attention_src=conditions.cross
            )[1][:, 0]
    err_ref = _rel(ours, theirs)
    print(f"--lora vs merged: {err:.1e}; dsm vs reference on merged: {err_ref:.1e}")
    assert err < TOLERANCE and err_ref < TOLERANCE
