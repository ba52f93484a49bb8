"""The published ``config.json`` layouts, reconstructed from model-spec §1.4.

No weights or configs can be downloaded in tests; these dicts stand for the real files.
"""

from __future__ import annotations

from typing import Any

_LM_GEN_STT = {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50}


def stt_2p6b_en() -> dict[str, Any]:
    """kyutai/stt-2.6b-en (revision a07aec56)."""
    return {
        "card": 2048, "n_q": 32, "dep_q": 0, "delays": [0] * 33, "dim": 2048,
        "text_card": 4000, "existing_text_padding_id": 3, "num_heads": 32, "num_layers": 48,
        "hidden_scale": 4.125, "causal": True, "layer_scale": None, "context": 375,
        "max_period": 100000.0, "gating": "silu", "norm": "rms_norm_f32",
        "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16,
        "depformer_num_layers": 6, "depformer_dim_feedforward": None,
        "depformer_multi_linear": True, "depformer_pos_emb": "none",
        "depformer_weights_per_step": True, "conditioners": {}, "cross_attention": False,
        "model_id": {"sig": "dabcc802", "epoch": 50}, "lm_gen_config": dict(_LM_GEN_STT),
        "stt_config": {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
        "model_type": "stt", "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
        "tokenizer_name": "tokenizer_en_audio_4000.model",
    }  # fmt: skip


def stt_1b_en_fr(vad_heads: bool = False) -> dict[str, Any]:
    """kyutai/stt-1b-en_fr (``vad_heads``: the ``-candle`` sibling with 4 extra heads)."""
    config = stt_2p6b_en()
    config.update(
        num_heads=16, num_layers=16, context=750, text_card=8000, fuser=None,
        stt_config={"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
        tokenizer_name="tokenizer_en_fr_audio_8000.model",
    )  # fmt: skip
    config.pop("model_id")
    if vad_heads:
        config.update(extra_heads_num_heads=4, extra_heads_dim=6)
    return config


def tts_1p6b_en_fr() -> dict[str, Any]:
    """kyutai/tts-1.6b-en_fr (revision f6543960)."""
    return {
        "card": 2048, "n_q": 32, "dep_q": 32, "delays": [0, 0] + [2] * 31, "dim": 2048,
        "text_card": 8000, "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16,
        "hidden_scale": 4.125, "causal": True, "layer_scale": None, "context": 500,
        "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
        "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16,
        "depformer_num_layers": 4, "depformer_dim_feedforward": 3072,
        "depformer_multi_linear": True, "depformer_pos_emb": "none",
        "depformer_weights_per_step": True, "depformer_low_rank_embeddings": 128,
        "demux_second_stream": True, "text_card_out": None, "cross_attention": True,
        "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
            "cfg": {"type": "lut", "lut": {
                "n_bins": 7, "dim": 16, "tokenizer": "noop",
                "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]}},
            "control": {"type": "lut", "lut": {
                "dim": 2048, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]}},
        },
        "fuser": {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1,
                  "sum": ["control", "cfg"], "prepend": [], "cross": ["speaker_wavs"]},
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": {"sig": "1e68beda", "epoch": 240}, "model_type": "tts",
        "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
        "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
        "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
        "moshi_name": "dsm_tts_1e68beda@240.safetensors",
    }  # fmt: skip
