"""Random reference (``moshi``) language models saved as hub-layout checkpoint directories.

``make_reference_lm_dir(tmp_path, raw_config, seed)`` builds a ``moshi.models.lm.LMModel``
through the reference's own loader path (``get_moshi_lm`` with the ``config.json`` dict, as
``CheckpointInfo`` would pass it), sets every parameter from a seeded generator (conditioners
included, so they are non-zero), and writes ``config.json`` plus the weights in the published
layout (fused ``in_proj_weight``). dsm then loads the directory like a downloaded checkpoint.

Raw configs, scaled-down copies of the published ones (model-spec §1.4):

* :data:`STT_LIKE`: 32 input codebooks, no depformer, extra (VAD) heads, rms_norm_f32, RoPE
  base 1e5, short context.
* :data:`TTS_LIKE`: dep_q = n_q = 8, delays ``[0, 0] + [2] * 7``, scheduled per-step depformer
  weights, low-rank and demultiplexed embeddings, cross-attention on a speaker tensor, ``cfg``
  and ``control`` LUT conditioners summed into the input.
* :data:`TINY`: the reference's own unit-test model (model-spec Appendix A): layer norms,
  ungated main FFN, sinusoidal positions.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from tests.helpers.hub_layout import save_hub_safetensors

# The reference compiles its RMSNorm lazily outside its layers, which costs seconds on CPU; it
# reads this variable when its modules are first imported. Tests that may import moshi earlier
# wrap reference calls in ``moshi.utils.compile.no_compile()`` as well.
os.environ.setdefault("NO_TORCH_COMPILE", "1")

__all__ = [
    "STT_LIKE",
    "TINY",
    "TTS_LIKE",
    "make_reference_lm",
    "make_reference_lm_dir",
    "randomize_",
    "reference_condition_tensors",
]

# Keys CheckpointInfo pops before the rest reaches LMModel (model-spec §1.1).
_NON_LM_KEYS = (
    "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
    "lm_gen_config", "tts_config", "stt_config", "model_id",
)  # fmt: skip

STT_LIKE: dict[str, Any] = {
    "card": 64,
    "n_q": 32,
    "dep_q": 0,
    "delays": [0] * 33,
    "dim": 64,
    "text_card": 100,
    "existing_text_padding_id": 3,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 8,
    "max_period": 100000.0,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 32,
    "depformer_num_heads": 2,
    "depformer_num_layers": 1,
    "depformer_dim_feedforward": None,
    "depformer_multi_linear": True,
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "conditioners": {},
    "cross_attention": False,
    "extra_heads_num_heads": 4,
    "extra_heads_dim": 6,
    "model_id": {"sig": "5770000", "epoch": 1},
    "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
    "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
    "model_type": "stt",
    "mimi_name": "mimi-test.safetensors",
    "tokenizer_name": "tokenizer-test.model",
}

TTS_LIKE: dict[str, Any] = {
    "card": 64,
    "n_q": 8,
    "dep_q": 8,
    "delays": [0, 0] + [2] * 7,
    "dim": 64,
    "text_card": 50,
    "existing_text_padding_id": 3,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 16,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 32,
    "depformer_num_heads": 2,
    "depformer_num_layers": 2,
    "depformer_dim_feedforward": 96,
    "depformer_multi_linear": True,
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "depformer_low_rank_embeddings": 8,
    "demux_second_stream": True,
    "text_card_out": None,
    "cross_attention": True,
    "depformer_weights_per_step_schedule": [0, 1, 2, 3, 3, 4, 4, 4],
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 16}},
        "cfg": {
            "type": "lut",
            "lut": {
                "n_bins": 7,
                "dim": 16,
                "tokenizer": "noop",
                "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"],
            },
        },
        "control": {
            "type": "lut",
            "lut": {"dim": 64, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]},
        },
    },
    "fuser": {
        "cross_attention_pos_emb": True,
        "cross_attention_pos_emb_scale": 1,
        "sum": ["control", "cfg"],
        "prepend": [],
        "cross": ["speaker_wavs"],
    },
    "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
    "model_id": {"sig": "7e570000", "epoch": 1},
    "model_type": "tts",
    "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
    "tokenizer_name": "tokenizer-test.model",
    "mimi_name": "mimi-test.safetensors",
    "moshi_name": "dsm_tts_test.safetensors",
}

TINY: dict[str, Any] = {
    "delays": [0, 1, 2, 4],
    "n_q": 3,
    "dep_q": 3,
    "card": 32,
    "text_card": 48,
    "dim": 16,
    "num_layers": 2,
    "num_heads": 1,
    "hidden_scale": 1,
    "depformer_dim": 16,
    "depformer_multi_linear": True,
    "depformer_weights_per_step": True,
    "depformer_weights_per_step_schedule": [0, 1, 1],
    "depformer_low_rank_embeddings": 8,
    "depformer_num_heads": 1,
    "depformer_gating": "silu",
    "context": 4,
}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Set every parameter from a generator seeded with ``seed`` (deterministic, in place).

    Matrices get ``N(0, 1/fan_in)``; norm gains ``1 + N(0, 0.1^2)``; biases ``N(0, 0.1^2)``;
    learnt paddings ``N(0, 0.2^2)``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "alpha" or (leaf == "weight" and param.dim() == 1):
                value = 1.0 + 0.1 * noise
            elif leaf in ("bias", "scale"):
                value = 0.1 * noise
            elif leaf == "learnt_padding":
                value = 0.2 * noise
            else:
                value = noise / math.sqrt(param.shape[-1])
            param.copy_(value.to(param.dtype))
    return model


def _lm_kwargs(raw_config: dict[str, Any]) -> dict[str, Any]:
    kwargs = copy.deepcopy(raw_config)
    for key in _NON_LM_KEYS:
        kwargs.pop(key, None)
    return kwargs


def make_reference_lm(raw_config: dict[str, Any], seed: int = 0) -> Any:
    """A float32 CPU reference ``LMModel`` for ``raw_config`` (a ``config.json`` dict),
    randomized with :func:`randomize_`, in eval mode."""
    from moshi.models.loaders import get_moshi_lm

    model = get_moshi_lm(None, lm_kwargs=_lm_kwargs(raw_config), device="cpu", dtype=torch.float32)
    randomize_(model, seed)
    return model.eval()


def make_reference_lm_dir(
    tmp_path: Path, raw_config: dict[str, Any], seed: int = 0, name: str = "lm"
) -> tuple[Any, Path]:
    """Build a random reference LM and save it as a checkpoint directory.

    Returns ``(reference_model, directory)``; the directory holds ``config.json`` and the
    weights under the config's ``moshi_name`` (default ``model.safetensors``).
    """
    model = make_reference_lm(raw_config, seed)
    directory = Path(tmp_path) / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(raw_config, indent=2))
    weights = directory / raw_config.get("moshi_name", "model.safetensors")
    save_hub_safetensors(model.state_dict(), weights)
    return model, directory


def reference_condition_tensors(
    model: Any,
    text: dict[str, list[str | None]],
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
) -> dict[str, Any]:
    """The reference's ``condition_tensors`` (``prepare_and_provide``) for batched inputs.

    ``text[name][b]`` and ``tensors[name] = (tensor [B, T, dim], mask [B, T])`` row ``b`` make
    the ``ConditionAttributes`` of batch item ``b``.
    """
    from moshi.conditioners import ConditionAttributes, TensorCondition

    attributes = []
    for b in range(batch_size):
        attributes.append(
            ConditionAttributes(
                text={name: values[b] for name, values in text.items()},
                tensor={
                    name: TensorCondition(t[b : b + 1], m[b : b + 1])
                    for name, (t, m) in tensors.items()
                },
            )
        )
    return model.condition_provider.prepare_and_provide(attributes)
