"""LoRA: only the adapter trains; the adapter used unmerged (LoRA modules), loaded with
``--lora`` (merged at load) and merged into a checkpoint directory give the same logits; the
reference (moshi 0.2.13) loads both the merged checkpoint and the adapter (its ``lora_weights``
mechanism) and gives the same logits as dsm. Tolerances are relative to the largest logit."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import dsm
from dsm.checkpoint.weights import read_safetensors
from dsm.cli import main
from dsm.models.lm import LMModel
from dsm.nn.lora import LoRALinear
from dsm.train.lora import LoraSettings, add_lora
from tests.helpers.reference_stt import ReferenceStt
from tests.helpers.threads import one_torch_thread

# float32 on CPU: merging reorders one sum (W x + s B A x vs (W + s B A) x).
MERGE_RTOL = 1e-5
PARITY_RTOL = 1e-5
RANK, SCALING = 4, 2.0


@pytest.fixture(scope="module")
def run(prefixed_stt: ReferenceStt, synthetic_manifest: Path, tmp_path_factory: Any) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    with one_torch_thread():
        code = main([
            "finetune", "stt", "--model", str(prefixed_stt.directory), "--train",
            str(synthetic_manifest), "--out", str(out), "--lora-rank", str(RANK), "--steps", "12",
            "--lr", "1e-2", "--batch-size", "3", "--grad-accum", "3", "--merge", "--save-every",
            "100", "--device", "cpu", "--cache-dir", str(out.parent / "cache"), "-q",
        ])  # fmt: skip
    assert code == 0
    return out


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _tokens(lm: LMModel, seed: int = 3, B: int = 2, T: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, lm.card, (B, lm.num_codebooks, T), generator=gen)
    tokens[:, 0] = torch.randint(0, lm.text_card, (B, T), generator=gen)
    return tokens


@torch.no_grad()
def _logits(lm: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Text logits ``[B, T, C]`` of the main transformer (dsm returns ``(logits, hidden)``,
    the reference ``(hidden, logits [B, 1, T, C])``)."""
    if isinstance(lm, LMModel):
        return lm.forward_text(tokens)[0]
    return lm.forward_text(tokens)[1][:, 0]


def test_only_adapter_parameters_change(prefixed_stt: ReferenceStt, run: Path) -> None:
    state = torch.load(run / "train_state" / "state.pt", weights_only=True)
    trained = set(state["params"])
    assert trained and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in trained)
    base = read_safetensors(prefixed_stt.directory / "model.safetensors")
    merged = read_safetensors(run / "merged" / "model.safetensors")
    assert set(base) == set(merged)
    targets = {k.rsplit(".lora_", 1)[0] for k in trained}
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    # Published names: the attention's fused in_proj is stored as in_proj_weight.
    expected = {t.replace("self_attn.in_proj", "self_attn.in_proj_weight") for t in targets}
    expected = {e if e.endswith("in_proj_weight") else f"{e}.weight" for e in expected}
    assert changed == expected
    assert any("gating" in k for k in changed) and any("in_proj_weight" in k for k in changed)
    adapter = load_file(str(run / "adapter.safetensors"))
    assert all(adapter[f"{t}.lora_B.weight"].abs().max() > 0 for t in targets)
    assert json.loads((run / "adapter.json").read_text())["rank"] == RANK


def test_every_lora_pair_receives_a_gradient(prefixed_stt: ReferenceStt, run: Path) -> None:
    """Every projection the loss reaches is adapted (the text head among them), and after
    training both matrices of every pair have moved: ``B`` away from zero, ``A`` away from its
    seeded initialisation (rebuilt here as ``dsm finetune`` draws it). Only the extra (VAD)
    heads, which no loss reaches, keep zero entries in the file."""
    fresh = dsm.load_lm(prefixed_stt.directory)
    torch.manual_seed(0)  # dsm finetune's --seed default, before add_lora
    names = add_lora(fresh, LoraSettings(RANK, SCALING))
    assert "text_linear" in names and any(n.startswith("transformer.layers.") for n in names)
    linears = [n for n, m in fresh.named_modules() if isinstance(m, LoRALinear)]
    assert set(linears) == set(names)
    adapter = load_file(str(run / "adapter.safetensors"))
    still_a, still_b = [], []
    for name in names:
        module = fresh.get_submodule(name)
        assert isinstance(module, LoRALinear)
        if torch.equal(adapter[f"{name}.lora_A.weight"], module.lora_A.weight.detach()):
            still_a.append(name)
        if not adapter[f"{name}.lora_B.weight"].abs().max() > 0:
            still_b.append(name)
    print(f"{len(names)} adapted projections; A unmoved: {still_a}, B still zero: {still_b}")
    assert not still_a and not still_b
    zero = {k.rsplit(".lora_", 1)[0] for k, v in adapter.items() if not v.abs().max() > 0}
    assert zero and all(k.startswith("extra_heads.") for k in zero), zero


def test_unmerged_loaded_and_merged_logits_agree(prefixed_stt: ReferenceStt, run: Path) -> None:
    base = dsm.load_lm(prefixed_stt.directory)
    tokens = _tokens(base)
    # 1. The adapter as trained: LoRA modules around the frozen projections.
    wrapped = copy.deepcopy(base)
    add_lora(wrapped, LoraSettings(RANK, SCALING))
    adapter = load_file(str(run / "adapter.safetensors"))
    for name, module in wrapped.named_modules():
        if isinstance(module, LoRALinear):
            module.lora_A.weight.data.copy_(adapter[f"{name}.lora_A.weight"])
            module.lora_B.weight.data.copy_(adapter[f"{name}.lora_B.weight"])
    # 2. --lora: merged at load.  3. The merged checkpoint directory.
    loaded = dsm.load_lm(prefixed_stt.directory, lora=run)
    merged = dsm.load_lm(run / "merged")
    a, b, c = _logits(wrapped, tokens), _logits(loaded, tokens), _logits(merged, tokens)
    assert _rel(a, _logits(base, tokens)) > 1e-3, "the adapter changed nothing: test is void"
    err_ab, err_bc = _rel(b, a), _rel(c, b)
    print(f"LoRA unmerged vs --lora: {err_ab:.1e}; --lora vs merged dir: {err_bc:.1e}")
    assert err_ab < MERGE_RTOL and err_bc < MERGE_RTOL
    # The transcribe command path takes --lora too.
    stt = dsm.load_stt(prefixed_stt.directory, lora=run)
    assert torch.equal(_logits(stt.lm, tokens), b)


def _reference(path: Path, config: dict[str, Any], **kw: Any) -> Any:
    from moshi.models.loaders import get_moshi_lm
    from moshi.utils.compile import no_compile

    from tests.helpers.reference_lm import _lm_kwargs

    with no_compile():
        lm = get_moshi_lm(
            path, lm_kwargs=_lm_kwargs(config), device="cpu", dtype=torch.float32, **kw
        )
    return lm.eval()


def test_reference_loads_merged_and_adapter(prefixed_stt: ReferenceStt, run: Path) -> None:
    from moshi.utils.compile import no_compile

    ours = dsm.load_lm(run / "merged")
    tokens = _tokens(ours)
    expected = _logits(ours, tokens)
    config = json.loads((run / "merged" / "config.json").read_text())
    ref_merged = _reference(run / "merged" / config["moshi_name"], config)
    base_config = {**prefixed_stt.config, "lora": True, "lora_rank": RANK, "lora_scaling": SCALING}
    ref_adapter = _reference(
        prefixed_stt.directory / "model.safetensors", base_config,
        lora_weights=run / "adapter.safetensors", fuse_lora=True,
    )  # fmt: skip
    with no_compile():
        err_merged = _rel(_logits(ref_merged, tokens), expected)
        err_adapter = _rel(_logits(ref_adapter, tokens), expected)
    print(f"reference vs dsm: merged checkpoint {err_merged:.1e}, adapter {err_adapter:.1e}")
    assert err_merged < PARITY_RTOL and err_adapter < PARITY_RTOL


def test_merge_command(prefixed_stt: ReferenceStt, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    assert main(["finetune", "merge", "--model", str(prefixed_stt.directory), "--lora", str(run),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    ours, theirs = (
        read_safetensors(out / "model.safetensors"),
        read_safetensors(run / "merged" / "model.safetensors"),
    )
    assert set(ours) == set(theirs)
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert worst < 1e-6, worst
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (run / "merged").iterdir())
    again = ["finetune", "merge", "--model", str(prefixed_stt.directory), "--lora", str(run)]
    assert main([*again, "--out", str(out)]) == 1  # the directory is not empty: refused


def test_moshi_finetune_adapter_loads(prefixed_stt: ReferenceStt, tmp_path: Path) -> None:
    """moshi-finetune's LoRA output (``lora.safetensors`` with the reference's in-memory key
    names, every linear adapted, and a config.json with the rank and scaling) loads with
    ``--lora`` and gives the reference's logits."""
    from moshi.modules.lora import replace_all_linear_with_lora
    from moshi.utils.compile import no_compile
    from safetensors.torch import save_file

    ref = copy.deepcopy(prefixed_stt.lm)
    replace_all_linear_with_lora(ref, RANK, SCALING)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if ".lora_" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    lora = {k: v.contiguous() for k, v in ref.state_dict().items() if ".lora_" in k}
    assert any(".in_projs.0.lora_A" in k for k in lora) and "text_linear.lora_B.weight" in lora
    save_file(lora, str(tmp_path / "lora.safetensors"))
    config = {**prefixed_stt.config, "lora": True, "lora_rank": RANK, "lora_scaling": SCALING}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = dsm.load_lm(prefixed_stt.directory, lora=tmp_path)
    tokens = _tokens(ours)
    with no_compile():
        expected = _logits(ref.eval(), tokens)
    assert _rel(_logits(dsm.load_lm(prefixed_stt.directory), tokens), expected) > 1e-3
    err = _rel(_logits(ours, tokens), expected)
    print(f"moshi-finetune adapter: dsm --lora vs the reference's LoRA modules {err:.1e}")
    assert err < MERGE_RTOL


def test_serve_takes_the_adapter(prefixed_stt: ReferenceStt, run: Path, tmp_path: Path) -> None:
    from dsm.commands.serve import _load_stt, apply_overrides, build_parser_for_tests
    from dsm.server.config import load_server_config

    path = tmp_path / "server.toml"
    path.write_text(f'[stt]\nmodel = "{prefixed_stt.directory}"\nlora = "{run}"\ndevice = "cpu"\n')
    config = load_server_config(path)
    assert config.stt.lora == str(run)
    args = build_parser_for_tests().parse_args(["--tts-lora", "elsewhere"])
    assert apply_overrides(config, args).tts.lora == "elsewhere"
    stt = _load_stt(config)
    tokens = _tokens(stt.lm)
    assert torch.equal(
        _logits(stt.lm, tokens), _logits(dsm.load_lm(prefixed_stt.directory, lora=run), tokens)
    )
