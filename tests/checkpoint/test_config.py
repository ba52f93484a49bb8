"""config.json parsing: the published layouts and clear errors for bad keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dsm.checkpoint import load_config, parse_config
from dsm.errors import ConfigError
from tests.helpers.published_configs import stt_1b_en_fr, stt_2p6b_en, tts_1p6b_en_fr


def test_stt_2p6b_layout() -> None:
    cfg = parse_config(stt_2p6b_en())
    lm = cfg.lm
    assert cfg.model_type == "stt"
    assert (lm.dim, lm.num_heads, lm.num_layers, lm.context) == (2048, 32, 48, 375)
    assert (lm.n_q, lm.dep_q, lm.card, lm.text_card) == (32, 0, 2048, 4000)
    assert lm.delays == (0,) * 33 and lm.max_delay == 0
    assert lm.max_period == 100000.0 and lm.norm == "rms_norm_f32" and lm.gating == "silu"
    assert lm.dim_feedforward == 8448
    assert lm.conditioners == () and lm.fuser is None
    assert cfg.stt is not None and cfg.stt.audio_delay_seconds == 2.5
    assert cfg.stt.audio_silence_prefix_seconds == 1.0
    assert cfg.tts is None
    assert cfg.lm_gen.top_k == 250 and cfg.lm_gen.temp_text == 0.0
    assert cfg.model_id is not None and cfg.model_id.sig == "dabcc802"
    assert cfg.moshi_name == "model.safetensors"
    assert cfg.mimi_name == "mimi-pytorch-e351c8d8@125.safetensors"
    assert cfg.tokenizer_name == "tokenizer_en_audio_4000.model"
    assert cfg.text_padding_token_id == 3


def test_stt_1b_with_and_without_vad_heads() -> None:
    plain = parse_config(stt_1b_en_fr())
    assert plain.lm.extra_heads_num_heads == 0
    assert plain.stt is not None and plain.stt.audio_delay_seconds == 0.5
    assert plain.stt.audio_silence_prefix_seconds == 0.0
    vad = parse_config(stt_1b_en_fr(vad_heads=True))
    assert (vad.lm.extra_heads_num_heads, vad.lm.extra_heads_dim) == (4, 6)
    assert (vad.lm.num_heads, vad.lm.num_layers, vad.lm.context) == (16, 16, 750)


def test_tts_1p6b_layout() -> None:
    cfg = parse_config(tts_1p6b_en_fr())
    lm = cfg.lm
    assert cfg.model_type == "tts"
    assert lm.dep_q == 32 and lm.delays == (0, 0) + (2,) * 31 and lm.max_delay == 2
    assert lm.depformer_weights_per_step_schedule is not None
    assert len(lm.depformer_weights_per_step_schedule) == 32
    assert lm.depformer_weight_sets == 11
    assert lm.depformer_low_rank_embeddings == 128 and lm.demux_second_stream
    assert lm.cross_attention and lm.depformer_dim_feedforward == 3072
    names = {c.name: c for c in lm.conditioners or ()}
    assert names["speaker_wavs"].type == "tensor" and names["speaker_wavs"].dim == 512
    assert names["cfg"].possible_values[2] == "2.0" and names["cfg"].n_bins == 7
    assert names["control"].dim == 2048
    assert lm.fuser is not None and lm.fuser.sum == ("control", "cfg")
    assert lm.fuser.cross == ("speaker_wavs",) and lm.fuser.cross_attention_pos_emb
    assert cfg.tts is not None and cfg.tts.audio_delay == 1.28
    assert cfg.tts.second_stream_ahead == 2 and cfg.tts.max_speakers == 5
    assert cfg.model_id is not None and (cfg.model_id.sig, cfg.model_id.epoch) == ("1e68beda", 240)
    assert cfg.moshi_name == "dsm_tts_1e68beda@240.safetensors"


def test_config_is_frozen() -> None:
    cfg = parse_config(stt_2p6b_en())
    with pytest.raises(AttributeError):
        cfg.lm.dim = 3  # type: ignore[misc]


def test_renamed_key_and_ignored_deprecated_keys() -> None:
    raw = tts_1p6b_en_fr()
    raw["demux_second_text_stream"] = raw.pop("demux_second_stream")
    raw["depformer_causal"] = True
    raw["depformer_context"] = 8
    assert parse_config(raw).lm.demux_second_stream


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c.update(not_a_key=1), "not_a_key"),
        (lambda c: c.update(delays=[0] * 5), "delays"),
        (lambda c: c.update(dim="big"), "'dim'"),
        (lambda c: c.update(norm="batch_norm"), "'norm'"),
        (lambda c: c.update(dep_q=40), "dep_q"),
        (lambda c: c.update(num_heads=30), "num_heads"),
        (lambda c: c.update(causal=1), "'causal'"),
        (lambda c: c["stt_config"].update(typo=1), "stt_config"),
        (lambda c: c["lm_gen_config"].update(top_p=0.9), "top_p"),
        (lambda c: c.update(model_type="vision"), "model_type"),
        (lambda c: c.update(model_id={"sig": "x"}), "model_id"),
    ],
)
def test_bad_keys_are_named(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    raw = stt_2p6b_en()
    mutate(raw)
    with pytest.raises(ConfigError, match=needle):
        parse_config(raw)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c.update(depformer_weights_per_step_schedule=[0, 1]), "schedule"),
        (lambda c: c["fuser"].update(sum=["control", "nope"]), "nope"),
        (lambda c: c["fuser"].update(prepend=["cfg"]), "prepend"),
        (lambda c: c.update(cross_attention=False), "cross"),
        (lambda c: c["conditioners"]["cfg"].update(type="t5"), "conditioners.cfg.type"),
        (lambda c: c["conditioners"]["cfg"]["lut"].update(n_bins=2), "possible_values"),
        (lambda c: c["tts_config"].update(speed=2), "speed"),
    ],
)
def test_inconsistent_tts_config(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    raw = tts_1p6b_en_fr()
    mutate(raw)
    with pytest.raises(ConfigError, match=needle):
        parse_config(raw)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "config.json")
    bad = tmp_path / "bad.json"
    # The committed upstream stt_1b_enfr.json misses a comma: a realistic malformed file.
    bad.write_text('{"model_type": "stt" "fuser": null}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(stt_2p6b_en()))
    assert load_config(good).lm.num_layers == 48
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(not_object)


def _written_by_reference() -> dict[str, object]:
    """tts-1.6b's config.json as moshi-finetune writes it after building the model with the
    reference: ``CheckpointInfo`` shallow-copies the raw config, ``get_conditioner`` updates
    each conditioner's dict in place (``output_dim``, ``device``), train.py adds the LoRA keys,
    and the Checkpointer dumps that raw config as JSON."""
    from moshi.models import loaders

    raw = tts_1p6b_en_fr()
    lm_config = dict(raw)  # CheckpointInfo.from_hf_repo: dict(raw_config), nested dicts shared
    loaders.get_conditioner_provider(lm_config["dim"], "cpu", lm_config)
    raw.update(lora=True, lora_rank=128, lora_scaling=2.0)  # moshi-finetune's train.py
    return dict(json.loads(json.dumps(raw)))


def test_config_written_by_the_reference_loads(caplog: pytest.LogCaptureFixture) -> None:
    written = _written_by_reference()
    conditioners = written["conditioners"]
    assert isinstance(conditioners, dict)
    assert conditioners["cfg"]["lut"]["output_dim"] == 2048
    assert conditioners["speaker_wavs"]["tensor"]["device"] == "cpu"
    with caplog.at_level(logging.DEBUG, logger="dsm.checkpoint.config"):
        parsed = parse_config(written)
    assert parsed == parse_config(tts_1p6b_en_fr())
    assert "output_dim" in caplog.text and "conditioners.speaker_wavs.tensor" in caplog.text


@pytest.mark.parametrize("where", ["cfg.lut", "speaker_wavs.tensor"])
def test_typos_beside_the_reference_keys_are_refused(where: str) -> None:
    written = _written_by_reference()
    name, kind = where.split(".")
    written["conditioners"][name][kind]["output_dims"] = 2048  # type: ignore[index]
    with pytest.raises(ConfigError, match=f"conditioners.{where}: output_dims"):
        parse_config(written)
