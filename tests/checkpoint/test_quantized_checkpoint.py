"""``dsm quantize``, quantized checkpoint directories, ``--quantize`` and their errors."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from dsm.checkpoint.quantization import FORMAT_VERSION
from dsm.checkpoint.weights import read_safetensors, read_shapes
from dsm.cli import main
from dsm.errors import ConfigError
from dsm.lm import load_lm
from dsm.models.lm_loading import quantize_lm
from dsm.nn.quantized import QuantizedLinear
from dsm.stt.model import load_stt


@pytest.fixture(scope="module")
def quantized_dirs(stt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for bits, mode in (("8", "int8"), ("4", "int4")):
        target = root / mode
        assert (
            main(["quantize", str(stt_dir), str(target), "--bits", bits, "--group-size", "32"]) == 0
        )
        out[mode] = target
    return out


def _buffers(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name, m in lm.named_modules()
        if isinstance(m, QuantizedLinear)
        for key, value in m.state_dict().items()
    }


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_dir_loads_the_same_integers(
    mode: str, stt_dir: Path, quantized_dirs: dict[str, Path]
) -> None:
    directory = quantized_dirs[mode]
    config = json.loads((directory / "config.json").read_text())
    assert config["quantization"]["mode"] == mode
    assert config["quantization"]["format_version"] == FORMAT_VERSION
    names = {p.name for p in directory.iterdir()}
    assert {config["moshi_name"], config["mimi_name"], config["tokenizer_name"]} <= names
    stored = read_shapes(directory / config["moshi_name"])
    assert not any(key.endswith("in_proj_weight") for key in stored)  # no float projection
    assert any(dtype in ("I8", "U8") for _, dtype in stored.values())
    assert stored["emb.0.qweight"][1] == "I8" and "emb.0.weight" not in stored  # int8 tables

    direct = _buffers(load_lm(directory))
    at_load = _buffers(load_lm(stt_dir, quantize=mode))
    assert direct and direct.keys() == at_load.keys()
    if mode == "int8":  # no group: quantizing at load gives the stored integers
        assert all(torch.equal(direct[k], v) for k, v in at_load.items())
    # The float checkpoint quantized by hand with the same group gives the same integers.
    by_hand = _buffers(quantize_lm(load_lm(stt_dir), mode, group_size=32))
    assert by_hand.keys() == direct.keys()
    assert all(torch.equal(direct[k], v) for k, v in by_hand.items())


def test_format_1_checkpoint_still_loads(
    stt_dir: Path, quantized_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Format 1 kept the embedding tables float: such a checkpoint loads, its tables quantized
    at load, to the same tensors as the current format."""
    from safetensors.torch import save_file

    current = quantized_dirs["int8"]
    old = tmp_path / "format1"
    old.mkdir()
    config = json.loads((current / "config.json").read_text())
    for name in (config["mimi_name"], config["tokenizer_name"]):
        (old / name).symlink_to(current / name)
    lm = quantize_lm(load_lm(stt_dir), "int8", tables=False)
    state = {k: v.contiguous() for k, v in lm.state_dict().items()}
    assert "emb.0.weight" in state
    save_file(state, str(old / config["moshi_name"]))
    config["quantization"]["format_version"] = 1
    (old / "config.json").write_text(json.dumps(config))
    loaded, direct = load_lm(old).state_dict(), load_lm(current).state_dict()
    assert loaded.keys() == direct.keys()
    assert all(torch.equal(loaded[k], v) for k, v in direct.items())


def test_int4_checkpoint_loads_packed(quantized_dirs: dict[str, Path]) -> None:
    """On CPU an int4 checkpoint's projections are packed for the kernel at load, their stored
    nibbles read into memory (not mapped) and released; saving gives the stored tensors back."""
    lm = load_lm(quantized_dirs["int4"])
    modules = [m for m in lm.modules() if isinstance(m, QuantizedLinear)]
    # The kernel takes row blocks of a multiple of 16 (the others multiply dequantized rows).
    fits = [all((b - a) % 16 == 0 for a, b in itertools.pairwise(m.block_starts)) for m in modules]
    assert sum(fits) > len(modules) / 2
    for module, fit in zip(modules, fits, strict=True):
        assert (module.packed_bytes() > 0) == fit
        assert (module.qweight.stride() == (0, 0)) == fit
    config = json.loads((quantized_dirs["int4"] / "config.json").read_text())
    stored = read_safetensors(quantized_dirs["int4"] / config["moshi_name"])
    state = lm.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if not k.endswith("alpha"))


def test_int4_checkpoint_missing_a_tensor_names_it(
    quantized_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from dsm.errors import WeightsError

    source = quantized_dirs["int4"]
    config = json.loads((source / "config.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in source.iterdir():
        if path.name != config["moshi_name"]:
            (broken / path.name).symlink_to(path)
    state = dict(read_safetensors(source / config["moshi_name"]))
    gone = next(k for k in state if k.endswith("linear_in.qweight"))
    del state[gone]
    save_file({k: v.contiguous() for k, v in state.items()}, str(broken / config["moshi_name"]))
    with pytest.raises(WeightsError, match="missing") as exc:
        load_lm(broken)
    assert gone in str(exc.value)


def test_copied_tensors_equal_mapped_ones(quantized_dirs: dict[str, Path]) -> None:
    config = json.loads((quantized_dirs["int4"] / "config.json").read_text())
    path = quantized_dirs["int4"] / config["moshi_name"]
    mapped = read_safetensors(path)
    keys = [k for k, v in mapped.items() if v.dtype in (torch.uint8, torch.int8, torch.bfloat16)]
    copied = read_safetensors(path, copy=keys[:40])
    assert copied.keys() == mapped.keys()
    for key in keys[:40]:
        assert copied[key].dtype == mapped[key].dtype and torch.equal(copied[key], mapped[key])


def test_inspect_shows_the_quantization(
    quantized_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(quantized_dirs["int4"])]) == 0
    out = capsys.readouterr().out
    assert "quantization: {'mode': 'int4', 'group_size': 32" in out
    assert "stored (lm):" in out and "U8" in out


def test_quantizing_a_quantized_checkpoint_is_refused(
    quantized_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "again"
    assert main(["quantize", str(quantized_dirs["int8"]), str(target), "--bits", "4"]) == 1
    assert "already quantized (int8)" in capsys.readouterr().err
    assert not target.exists()


def test_existing_output_is_not_overwritten(
    stt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["quantize", str(stt_dir), str(target), "--bits", "8"]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert os.listdir(target) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


def test_unsupported_bits(
    stt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", str(stt_dir), str(tmp_path / "q3"), "--bits", "3"]) == 1
    err = capsys.readouterr().err
    assert "--bits 3 is not supported" in err and "8 (int8), 4 (int4)" in err
    assert not (tmp_path / "q3").exists()


def test_newer_format_is_refused(quantized_dirs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "future"
    copy.mkdir()
    for path in quantized_dirs["int8"].iterdir():
        (copy / path.name).symlink_to(path)
    config = json.loads((quantized_dirs["int8"] / "config.json").read_text())
    config["quantization"]["format_version"] = FORMAT_VERSION + 1
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"reads up to version {FORMAT_VERSION}: upgrade dsm"):
        load_lm(copy)
    config["quantization"]["format"] = "someone-else"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="cannot read"):
        load_lm(copy)


def test_bad_quantize_values(stt_dir: Path, quantized_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="supported are int8, int4"):
        load_stt(stt_dir, device="cpu", quantize="int3")
    with pytest.raises(ConfigError, match="already quantized \\(int8\\)"):
        load_stt(quantized_dirs["int8"], device="cpu", quantize="int4")
    with pytest.raises(SystemExit) as exc:
        main(["transcribe", "--model", str(stt_dir), "--quantize", "int3", "x.wav"])
    assert exc.value.code == 2


def test_server_flag_sets_both_modules() -> None:
    from dsm.commands.serve import apply_overrides, build_parser_for_tests
    from dsm.server.config import ServerConfig

    args = build_parser_for_tests().parse_args(["--quantize", "int4"])
    config = apply_overrides(ServerConfig(), args)
    assert config.stt.quantize == config.tts.quantize == "int4"


@pytest.mark.parametrize("command", ["transcribe", "synthesize", "eval"])
def test_model_option_reaches_the_loader(command: str) -> None:
    from typing import Any

    from dsm.cli import build_parser
    from dsm.commands.model_args import load_model

    extra = ["x.wav"] if command != "synthesize" else ["hello"]
    args = build_parser().parse_args([command, "--quantize", "int4", *extra])
    seen: dict[str, Any] = {}

    def loader(source: str, **kwargs: Any) -> str:
        seen.update(kwargs)
        return source

    load_model(loader, args, "usage")
    assert seen["quantize"] == "int4"
    args = build_parser().parse_args([command, *extra])
    seen.clear()
    load_model(loader, args, "usage")
    assert "quantize" not in seen
