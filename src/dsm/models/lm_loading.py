"""Strict loading of DSM language-model weights (model-spec §1.1 step 5, §2.8).

* The model is built on the ``meta`` device (no memory, no init) and the checkpoint tensors are
  assigned to it, so a 2B-parameter model loads in the time it takes to read (or just map) the
  file. On CPU, tensors already in the requested dtype stay memory-mapped (no copy).
* dtype rule of the reference: floating tensors go to the requested dtype, except
  ``condition_provider.*`` and ``fuser.*`` which are float32. Integer tensors are kept.
* Keys: the published (fused) layout loads as is; the reference's in-memory layout
  (``in_projs.{i}.weight`` / ``out_projs.{i}.weight``) is fused first
  (:func:`~dsm.checkpoint.weights.fuse_split_projections`, shared with the Mimi loader).
* Loading is strict: every missing, unexpected or mis-shaped key is listed in one
  :class:`~dsm.errors.WeightsError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dsm.checkpoint.config import CheckpointConfig, LMConfig
from dsm.checkpoint.quantization import TABLES_INT8_SINCE
from dsm.checkpoint.weights import fuse_split_projections, read_safetensors
from dsm.errors import ConfigError, WeightsError
from dsm.models.embeddings import TokenEmbedding
from dsm.models.lm import LMModel
from dsm.nn.host_memory import release_free_memory
from dsm.nn.linear import set_cpu_kernels
from dsm.nn.quantized import (
    DEFAULT_GROUP_SIZE,
    QuantizedLinear,
    check_quantize_mode,
    pack_model,
    quantize_model,
)

__all__ = [
    "FLOAT32_PREFIXES",
    "check_state_dict",
    "default_dtype",
    "fuse_split_projections",
    "load_lm_from_files",
    "load_lm_state",
    "quantize_lm",
    "quantize_tables",
    "read_safetensors",
    "target_dtype",
]

_log = logging.getLogger(__name__)

# Checkpoint parts the reference always keeps in float32, whatever the model dtype.
FLOAT32_PREFIXES = ("condition_provider.", "fuser.")


def target_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """dtype a checkpoint tensor is loaded as (the reference's rule, see module docstring)."""
    if not tensor.dtype.is_floating_point:
        return tensor.dtype
    if key.startswith(FLOAT32_PREFIXES):
        return torch.float32
    return dtype


def check_state_dict(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """Compare key -> shape maps: ``(missing, unexpected, mis-shaped)``, each sorted.

    Mis-shaped entries read ``"key: checkpoint [a, b] vs model [c, d]"``.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{key}: checkpoint {list(found[key])} vs model {list(expected[key])}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key]) != tuple(expected[key])
    ]
    return missing, unexpected, wrong


def _mismatch_message(
    what: str, missing: list[str], unexpected: list[str], wrong: list[str]
) -> str:
    lines = [f"{what} do not match the LM built from its config:"]
    for title, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("with a wrong shape", wrong),
    ):
        if keys:
            lines.append(f"  {len(keys)} key(s) {title}:")
            lines.extend(f"    {key}" for key in keys)
    lines.append(
        "Use the config.json and the weights file of the same checkpoint (same repository and "
        "revision); a -candle or quantized variant needs its own config.json."
    )
    return "\n".join(lines)


def load_lm_state(
    model: LMModel,
    state: dict[str, torch.Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    what: str = "weights",
) -> LMModel:
    """Strictly load ``state`` (published or reference layout) into ``model`` with assign.

    Tensors are cast with :func:`target_dtype` and moved to ``device``; ``model`` may live on
    the ``meta`` device. Raises :class:`WeightsError` listing every bad key. The projections'
    CPU kernels are then set from ``DSM_CPU_MATMUL`` / ``DSM_CPU_PACK``
    (:func:`dsm.nn.set_cpu_kernels`; an invalid value is a ``ValueError`` here).
    """
    set_cpu_kernels(model)  # read the environment before any work: a bad value fails fast
    state = fuse_split_projections(state)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    found = {key: tuple(t.shape) for key, t in state.items()}
    missing, unexpected, wrong = check_state_dict(expected, found)
    if missing or unexpected or wrong:
        raise WeightsError(_mismatch_message(what, missing, unexpected, wrong))
    target = torch.device(device) if device is not None else torch.device("cpu")
    # Quantized projections' integers and scales load in the dtype they were stored in.
    stored = {
        f"{name}.{buffer}": tensor.dtype
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLinear)
        or (isinstance(module, TokenEmbedding) and module.quantized)
        for buffer, tensor in module.named_buffers(recurse=False)
    }
    wrong_dtype = [
        f"{key}: checkpoint {state[key].dtype} vs model {want}"
        for key, want in stored.items()
        if state[key].dtype != want
    ]
    if wrong_dtype:
        raise WeightsError(_mismatch_message(what, [], [], wrong_dtype))
    cast = {
        key: value.to(
            device=target,
            dtype=stored[key] if key in stored else target_dtype(key, value, dtype),
        )
        for key, value in state.items()
    }
    model.load_state_dict(cast, strict=True, assign=True)
    # Non-persistent tensors are not in the checkpoint; none may be left on meta.
    leftover = [n for n, t in model.named_buffers() if t.is_meta]
    leftover += [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise AssertionError(f"tensors left on the meta device after loading: {leftover}")
    return model


def default_dtype(device: torch.device | str | None) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere."""
    kind = torch.device(device).type if device is not None else "cpu"
    return torch.bfloat16 if kind == "cuda" else torch.float32


def quantize_lm(
    model: LMModel,
    mode: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    device: str | None = None,
    *,
    tables: bool = True,
) -> LMModel:
    """Quantize the LM: its projections (temporal transformer, depformer, heads) in ``mode``
    and, with ``tables``, its embedding tables as int8 rows
    (:meth:`~dsm.models.embeddings.TokenEmbedding.quantize_table`, whatever ``mode``: the
    tables are read a few rows per step, so their size matters, not their speed). The float32
    conditioners, the embeddings' low-rank and demux projections and the norms stay float.
    ``device="meta"`` builds empty quantized modules to load a quantized checkpoint into."""
    skip = [prefix.rstrip(".") for prefix in FLOAT32_PREFIXES]
    tables_of = [(n, m) for n, m in model.named_modules() if isinstance(m, TokenEmbedding)]
    skip += [name for name, _ in tables_of]
    quantize_model(model, mode, group_size=group_size, skip=skip, device=device)
    if tables:
        quantize_tables(model, device=device)
    return model


def quantize_tables(model: LMModel, device: str | None = None) -> LMModel:
    """Store every embedding table of ``model`` as int8 rows with a scale per row."""
    for module in model.modules():
        if isinstance(module, TokenEmbedding):
            module.quantize_table(device=device)
    return model


def load_lm_from_files(
    config: CheckpointConfig | LMConfig,
    weights: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    lora: str | Path | None = None,
) -> LMModel:
    """Build the LM of ``config`` on ``meta`` and load ``weights`` (safetensors) strictly.

    ``dtype`` defaults to bfloat16 on CUDA and float32 on CPU. The model is returned in eval
    mode on ``device`` (CPU by default).

    ``quantize`` (``int8`` or ``int4``, ``group_size`` for int4) quantizes the projections at
    load (:func:`quantize_lm`). A quantized checkpoint (``quantization`` in its config) loads
    its integer weights directly, never materialising float ones; ``quantize`` must then be
    None or its own mode.

    ``lora``: a LoRA adapter directory (``dsm finetune`` output) merged into the weights at
    load, before any quantization (:func:`dsm.models.lora_loading.apply_adapter`).
    """
    check_quantize_mode(quantize)
    lm_config = config.lm if isinstance(config, CheckpointConfig) else config
    stored = config.quantization if isinstance(config, CheckpointConfig) else None
    if stored is not None and lora is not None:
        raise ConfigError(
            "a LoRA adapter cannot be merged into an already quantized checkpoint: load the "
            "float checkpoint with --lora (and --quantize to quantize after merging)"
        )
    if stored is not None and quantize not in (None, stored.mode):
        raise ConfigError(
            f"this checkpoint is already quantized ({stored.mode}); it cannot be loaded as "
            f"{quantize}: drop the quantize option or use the float checkpoint"
        )
    dtype = dtype or default_dtype(device)
    try:
        model = LMModel(lm_config, device="meta", dtype=dtype)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"this LM config describes a model dsm cannot build: {exc}") from exc
    # Format 1 kept the embedding tables float; they are quantized after loading.
    float_tables = stored is not None and stored.format_version < TABLES_INT8_SINCE
    copy: list[str] = []
    if stored is not None:
        group = stored.group_size or DEFAULT_GROUP_SIZE
        quantize_lm(model, stored.mode, group, device="meta", tables=not float_tables)
        if stored.mode == "int4" and torch.device(device or "cpu").type == "cpu":
            # Packed for the CPU kernel below: read into memory that goes with them, not mapped.
            copy = [
                f"{name}.{buffer}"
                for name, module in model.named_modules()
                if isinstance(module, QuantizedLinear)
                for buffer in ("qweight", "scale", "zero")
            ]
    state = read_safetensors(weights, copy=copy)
    load_lm_state(model, state, device=device, dtype=dtype, what=f"weights {weights}")
    del state
    if float_tables:
        quantize_tables(model)
    if lora is not None:
        from dsm.models.lora_loading import apply_adapter

        apply_adapter(model, lora)
    if quantize is not None and stored is None:
        quantize_lm(model, quantize, group_size)
    # int4 on CPU: the kernel's layout now, the stored nibbles freed.
    if (pack_model(model) or quantize is not None) and release_free_memory():
        _log.debug("returned the quantization temporaries' memory to the system")
    return model.eval()
