"""Kyutai ``config.json`` parsed once into typed, frozen dataclasses.

The published checkpoints carry a flat JSON dict (model-spec §1.3). :func:`parse_config` splits
it into the file names, the model type, the sampling/STT/TTS sub-configs and an
:class:`LMConfig` that holds exactly what the language model needs. Unknown keys and
inconsistent values are rejected with an error that names the key; keys the reference itself
writes into configs it saves (LoRA settings, conditioners' ``output_dim`` and ``device``) are
known and ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dsm.checkpoint.quantization import QuantizationConfig, parse_quantization
from dsm.errors import ConfigError

_log = logging.getLogger(__name__)

# Text ids every published checkpoint uses; configs may override them (defaults of the fields).
TEXT_PADDING_ID = 3  # text padding: ids <= this are never part of the text
END_OF_PADDING_ID = 0  # STT: a word starts at the next token; TTS: the model asks for a word

__all__ = [
    "DEFAULT_MIMI_NAME",
    "DEFAULT_MOSHI_NAME",
    "DEFAULT_TOKENIZER_NAME",
    "CheckpointConfig",
    "ConditionerConfig",
    "FuserConfig",
    "LMConfig",
    "LMGenConfig",
    "ModelId",
    "STTConfig",
    "TTSConfig",
    "load_config",
    "parse_config",
]

# File-name defaults used by the reference when a config omits them (model-spec §1.1).
DEFAULT_MOSHI_NAME = "model.safetensors"
DEFAULT_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"

MODEL_TYPES = ("moshi", "stt", "tts", "hibiki")
NORMS = ("layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32")
POSITIONAL_EMBEDDINGS = ("rope", "sin", "none")
GATINGS = ("none", "silu", "gelu", "relu", "sigmoid", "tanh", "swish", "identity")


@dataclass(frozen=True)
class ConditionerConfig:
    """One entry of ``conditioners``: a lookup table (``lut``) or a projected tensor."""

    name: str
    type: str  # "lut" | "tensor"
    dim: int
    n_bins: int = 0  # lut only
    tokenizer: str = "noop"  # lut only
    possible_values: tuple[str, ...] = ()  # lut only


@dataclass(frozen=True)
class FuserConfig:
    """How conditions reach the LM: summed into the input, or as cross-attention source."""

    sum: tuple[str, ...] = ()
    cross: tuple[str, ...] = ()
    prepend: tuple[str, ...] = ()
    cross_attention_pos_emb: bool = False
    cross_attention_pos_emb_scale: float = 1.0


@dataclass(frozen=True)
class LMConfig:
    """Everything the DSM language model is built from (keys as in ``config.json``)."""

    dim: int = 128
    num_heads: int = 8
    num_layers: int = 8
    hidden_scale: float = 4.0
    n_q: int = 8
    dep_q: int = 8
    card: int = 1024
    text_card: int = 32000
    text_card_out: int | None = None
    existing_text_padding_id: int = TEXT_PADDING_ID
    existing_text_end_padding_id: int = END_OF_PADDING_ID
    delays: tuple[int, ...] = (0,)
    context: int | None = None
    max_period: float = 10000.0
    causal: bool = True
    layer_scale: float | None = None
    gating: str = "none"
    norm: str = "layer_norm"
    positional_embedding: str = "sin"
    kv_repeat: int = 1
    norm_emb: bool = False
    bias_proj: bool = False
    depformer_dim: int = 256
    depformer_num_heads: int | None = None  # None: num_heads
    depformer_num_layers: int | None = None  # None: num_layers
    depformer_dim_feedforward: int | tuple[int, ...] | None = None
    depformer_multi_linear: bool = False
    depformer_weights_per_step: bool = False
    depformer_weights_per_step_schedule: tuple[int, ...] | None = None
    depformer_low_rank_embeddings: int | None = None
    depformer_pos_emb: str = "sin"
    depformer_norm: str | None = None
    depformer_max_period: float | None = None
    depformer_gating: str | None = None
    depformer_layer_scale: float | None = None
    depformer_kv_repeat: int | None = None
    demux_second_stream: bool = False
    cross_attention: bool = False
    extra_heads_num_heads: int = 0
    extra_heads_dim: int = 6
    conditioners: tuple[ConditionerConfig, ...] | None = None
    fuser: FuserConfig | None = None

    @property
    def num_codebooks(self) -> int:
        """Streams per step: text + ``n_q`` audio."""
        return self.n_q + 1

    @property
    def text_out_card(self) -> int:
        """Size of the text head's output."""
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def dim_feedforward(self) -> int:
        """Main transformer FFN size before the gating rule."""
        return int(self.hidden_scale * self.dim)

    @property
    def depformer_weight_sets(self) -> int:
        """Distinct per-step weight sets of the depformer (1 when weights are shared)."""
        if not self.depformer_weights_per_step:
            return 1
        if self.depformer_weights_per_step_schedule is not None:
            return max(self.depformer_weights_per_step_schedule) + 1
        return self.dep_q

    @property
    def max_delay(self) -> int:
        return max(self.delays)


@dataclass(frozen=True)
class STTConfig:
    """``stt_config``: text lags audio by ``audio_delay_seconds`` in training."""

    audio_delay_seconds: float = 5.0
    audio_silence_prefix_seconds: float = 1.0


@dataclass(frozen=True)
class TTSConfig:
    """``tts_config``: audio lags text by ``audio_delay`` seconds."""

    audio_delay: float = 0.0
    second_stream_ahead: int = 0
    multistream: bool = False
    max_speakers: int = 5


@dataclass(frozen=True)
class LMGenConfig:
    """``lm_gen_config``: default sampling parameters shipped with the checkpoint."""

    temp: float | None = None
    temp_text: float | None = None
    top_k: int | None = None
    top_k_text: int | None = None


@dataclass(frozen=True)
class ModelId:
    """``model_id``: signature and epoch (they name the voice embeddings of TTS models)."""

    sig: str
    epoch: int | str


@dataclass(frozen=True)
class CheckpointConfig:
    """A whole parsed ``config.json``."""

    lm: LMConfig
    model_type: str = "moshi"
    moshi_name: str = DEFAULT_MOSHI_NAME
    mimi_name: str = DEFAULT_MIMI_NAME
    tokenizer_name: str = DEFAULT_TOKENIZER_NAME
    mimi_config_name: str | None = None
    lora_name: str | None = None
    text_padding_token_id: int = TEXT_PADDING_ID
    stt: STTConfig | None = None
    tts: TTSConfig | None = None
    lm_gen: LMGenConfig = field(default_factory=LMGenConfig)
    model_id: ModelId | None = None
    quantization: QuantizationConfig | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# Keys the reference accepts and ignores (deprecated or training-only).
_IGNORED_KEYS = {"depformer_causal", "depformer_context", "lora", "lora_rank", "lora_scaling"}
_FILE_KEYS = ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name", "lora_name")
# Keys read by the reference with a different name.
_RENAMED = {"demux_second_text_stream": "demux_second_stream"}


def _expect(key: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    # bool is an int subclass: reject it where a number is expected.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")
    return value


def _int(key: str, value: Any) -> int:
    return int(_expect(key, value, int, "an integer"))


def _opt_int(key: str, value: Any) -> int | None:
    return None if value is None else _int(key, value)


def _float(key: str, value: Any) -> float:
    return float(_expect(key, value, (int, float), "a number"))


def _opt_float(key: str, value: Any) -> float | None:
    return None if value is None else _float(key, value)


def _bool(key: str, value: Any) -> bool:
    return bool(_expect(key, value, bool, "true or false"))


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(
            f"config key {key!r} is {value!r}; supported values: {', '.join(choices)}"
        )
    return str(value)


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    _expect(key, value, list, "a list of integers")
    return tuple(_int(f"{key}[{i}]", v) for i, v in enumerate(value))


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    _expect(key, value, list, "a list of strings")
    return tuple(str(_expect(f"{key}[{i}]", v, str, "a string")) for i, v in enumerate(value))


def _sub_dict(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return dict(_expect(key, value, dict, "an object"))


def _check_known(section: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {section}: {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )


# Keys the reference adds to each ``conditioners.<name>.<type>`` dict when it builds a model
# (``loaders.get_conditioner`` updates the config's own dict in place with the LM width and the
# device); moshi-finetune saves that same dict as the checkpoint's config.json. Known, unused.
REFERENCE_CONDITIONER_KEYS = ("output_dim", "device")


def _parse_conditioners(value: Any) -> tuple[ConditionerConfig, ...]:
    out = []
    for name, spec in _sub_dict("conditioners", value).items():
        spec = _sub_dict(f"conditioners.{name}", spec)
        kind = spec.get("type")
        if kind not in ("lut", "tensor"):
            raise ConfigError(
                f"conditioners.{name}.type is {kind!r}; supported conditioner types: lut, tensor"
            )
        _check_known(f"conditioners.{name}", spec, {"type", kind})
        inner = _sub_dict(f"conditioners.{name}.{kind}", spec.get(kind))
        where = f"conditioners.{name}.{kind}"
        written = sorted(set(inner) & set(REFERENCE_CONDITIONER_KEYS))
        if written:
            _log.debug("ignoring %s in %s (written by the reference)", ", ".join(written), where)
            inner = {k: v for k, v in inner.items() if k not in REFERENCE_CONDITIONER_KEYS}
        if kind == "tensor":
            _check_known(where, inner, {"dim"})
            out.append(ConditionerConfig(name, "tensor", _int(f"{where}.dim", inner.get("dim"))))
        else:
            _check_known(
                where, inner, {"n_bins", "dim", "tokenizer", "possible_values", "init_scale"}
            )
            tokenizer = inner.get("tokenizer", "noop")
            if tokenizer != "noop":
                raise ConfigError(f"{where}.tokenizer is {tokenizer!r}; only 'noop' is supported")
            possible = _str_list(f"{where}.possible_values", inner.get("possible_values", []))
            n_bins = _int(f"{where}.n_bins", inner.get("n_bins"))
            if len(possible) > n_bins:
                raise ConfigError(
                    f"{where}.possible_values has {len(possible)} values but n_bins is {n_bins}"
                )
            out.append(
                ConditionerConfig(
                    name, "lut", _int(f"{where}.dim", inner.get("dim")), n_bins, tokenizer, possible
                )
            )
    return tuple(out)


def _parse_fuser(value: Any, conditioners: tuple[ConditionerConfig, ...] | None) -> FuserConfig:
    data = _sub_dict("fuser", value)
    data.pop("streaming_sum", None)
    _check_known(
        "fuser",
        data,
        {"sum", "cross", "prepend", "cross_attention_pos_emb", "cross_attention_pos_emb_scale"},
    )
    fuser = FuserConfig(
        sum=_str_list("fuser.sum", data.get("sum", [])),
        cross=_str_list("fuser.cross", data.get("cross", [])),
        prepend=_str_list("fuser.prepend", data.get("prepend", [])),
        cross_attention_pos_emb=_bool(
            "fuser.cross_attention_pos_emb", data.get("cross_attention_pos_emb", False)
        ),
        cross_attention_pos_emb_scale=_float(
            "fuser.cross_attention_pos_emb_scale", data.get("cross_attention_pos_emb_scale", 1.0)
        ),
    )
    if fuser.prepend:
        raise ConfigError("fuser.prepend is not supported (only 'sum' and 'cross' conditions are)")
    names = {c.name for c in conditioners or ()}
    for method in ("sum", "cross"):
        for name in getattr(fuser, method):
            if name not in names:
                raise ConfigError(
                    f"fuser.{method} names condition {name!r}, absent from conditioners"
                )
    return fuser


_LM_FIELDS = {f.name for f in fields(LMConfig)}
_INT_KEYS = {
    "dim", "num_heads", "num_layers", "n_q", "dep_q", "card", "text_card",
    "existing_text_padding_id", "existing_text_end_padding_id", "kv_repeat", "depformer_dim",
    "extra_heads_num_heads", "extra_heads_dim",
}  # fmt: skip
_OPT_INT_KEYS = {
    "text_card_out", "context", "depformer_num_heads", "depformer_num_layers",
    "depformer_low_rank_embeddings", "depformer_kv_repeat",
}  # fmt: skip
_BOOL_KEYS = {
    "causal", "norm_emb", "bias_proj", "depformer_multi_linear", "depformer_weights_per_step",
    "demux_second_stream", "cross_attention",
}  # fmt: skip


def _parse_lm(data: dict[str, Any]) -> LMConfig:
    _check_known("config.json", data, _LM_FIELDS)
    kw: dict[str, Any] = {}
    for key, value in data.items():
        if key in _INT_KEYS:
            kw[key] = _int(key, value)
        elif key in _OPT_INT_KEYS:
            kw[key] = _opt_int(key, value)
        elif key in _BOOL_KEYS:
            kw[key] = _bool(key, value)
        elif key in ("hidden_scale", "max_period"):
            kw[key] = _float(key, value)
        elif key in ("layer_scale", "depformer_max_period", "depformer_layer_scale"):
            kw[key] = _opt_float(key, value)
        elif key == "delays":
            kw[key] = _int_list(key, value)
        elif key == "depformer_weights_per_step_schedule":
            kw[key] = None if value is None else _int_list(key, value)
        elif key == "depformer_dim_feedforward":
            if isinstance(value, list):
                kw[key] = _int_list(key, value)
            else:
                kw[key] = _opt_int(key, value)
        elif key in ("norm", "depformer_norm"):
            kw[key] = (
                None if value is None and key == "depformer_norm" else _choice(key, value, NORMS)
            )
        elif key in ("gating", "depformer_gating"):
            kw[key] = (
                None
                if value is None and key == "depformer_gating"
                else _choice(key, value, GATINGS)
            )
        elif key in ("positional_embedding", "depformer_pos_emb"):
            kw[key] = _choice(key, value, POSITIONAL_EMBEDDINGS)
        elif key == "conditioners":
            kw[key] = _parse_conditioners(value)
        elif key == "fuser":
            pass  # parsed below, once the conditioners are known
        else:  # pragma: no cover - every field is handled above
            raise AssertionError(key)
    if data.get("fuser") is not None:
        kw["fuser"] = _parse_fuser(data["fuser"], kw.get("conditioners"))
    lm = LMConfig(**kw)
    _validate_lm(lm, data)
    return lm


def _validate_lm(lm: LMConfig, data: dict[str, Any]) -> None:
    for key in ("dim", "num_heads", "num_layers", "card", "text_card", "n_q"):
        if getattr(lm, key) <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {getattr(lm, key)}")
    if lm.dim % lm.num_heads:
        raise ConfigError(f"dim ({lm.dim}) must be a multiple of num_heads ({lm.num_heads})")
    if not 0 <= lm.dep_q <= lm.n_q:
        raise ConfigError(f"dep_q ({lm.dep_q}) must be between 0 and n_q ({lm.n_q})")
    if len(lm.delays) != lm.num_codebooks:
        raise ConfigError(
            f"delays has {len(lm.delays)} entries; expected n_q + 1 = {lm.num_codebooks} "
            "(text first, then one per audio codebook)"
        )
    if any(d < 0 for d in lm.delays):
        raise ConfigError(f"delays must be non-negative, got {list(lm.delays)}")
    if lm.context is not None and lm.context <= 0:
        raise ConfigError(f"context must be positive or null, got {lm.context}")
    schedule = lm.depformer_weights_per_step_schedule
    if schedule is not None:
        if len(schedule) != lm.dep_q:
            raise ConfigError(
                f"depformer_weights_per_step_schedule has {len(schedule)} entries; "
                f"expected dep_q = {lm.dep_q}"
            )
        if min(schedule, default=0) < 0:
            raise ConfigError("depformer_weights_per_step_schedule entries must be >= 0")
    if lm.dep_q > 0:
        heads = lm.depformer_num_heads or lm.num_heads
        if lm.depformer_dim % heads:
            raise ConfigError(
                f"depformer_dim ({lm.depformer_dim}) must be a multiple of "
                f"depformer_num_heads ({heads})"
            )
    if lm.cross_attention and (lm.fuser is None or not lm.fuser.cross):
        raise ConfigError("cross_attention is true but the fuser has no 'cross' condition")
    if lm.fuser is not None and lm.fuser.cross and not lm.cross_attention:
        raise ConfigError("the fuser has 'cross' conditions but cross_attention is false")
    if lm.fuser is not None and lm.conditioners is None:
        raise ConfigError("a fuser is configured but there are no conditioners")
    if lm.kv_repeat < 1 or lm.num_heads % lm.kv_repeat:
        raise ConfigError(f"kv_repeat ({lm.kv_repeat}) must divide num_heads ({lm.num_heads})")
    if lm.existing_text_padding_id >= lm.text_card:
        raise ConfigError(
            f"existing_text_padding_id ({lm.existing_text_padding_id}) must be < "
            f"text_card ({lm.text_card})"
        )


def parse_config(raw: dict[str, Any]) -> CheckpointConfig:
    """Parse a Kyutai ``config.json`` dict. Raises :class:`ConfigError` naming any bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {type(raw).__name__}")
    data = dict(raw)
    for old, new in _RENAMED.items():
        if old in data:
            if new in data:
                raise ConfigError(f"config has both {old!r} and {new!r}; keep one")
            data[new] = data.pop(old)
    files = {}
    for key in _FILE_KEYS:
        if key in data:
            value = data.pop(key)
            files[key] = None if value is None else str(_expect(key, value, str, "a file name"))
    model_type = _choice("model_type", data.pop("model_type", "moshi"), MODEL_TYPES)
    padding_id = _int("text_padding_token_id", data.pop("text_padding_token_id", TEXT_PADDING_ID))

    stt_raw = _sub_dict("stt_config", data.pop("stt_config", None))
    _check_known("stt_config", stt_raw, {"audio_delay_seconds", "audio_silence_prefix_seconds"})
    stt = None
    if stt_raw or model_type == "stt":
        stt = STTConfig(
            audio_delay_seconds=_float(
                "stt_config.audio_delay_seconds", stt_raw.get("audio_delay_seconds", 5.0)
            ),
            audio_silence_prefix_seconds=_float(
                "stt_config.audio_silence_prefix_seconds",
                stt_raw.get("audio_silence_prefix_seconds", 1.0),
            ),
        )
    tts_raw = _sub_dict("tts_config", data.pop("tts_config", None))
    _check_known(
        "tts_config", tts_raw, {"audio_delay", "second_stream_ahead", "multistream", "max_speakers"}
    )
    tts = None
    if tts_raw or model_type == "tts":
        tts = TTSConfig(
            audio_delay=_float("tts_config.audio_delay", tts_raw.get("audio_delay", 0.0)),
            second_stream_ahead=_int(
                "tts_config.second_stream_ahead", tts_raw.get("second_stream_ahead", 0)
            ),
            multistream=_bool("tts_config.multistream", tts_raw.get("multistream", False)),
            max_speakers=_int("tts_config.max_speakers", tts_raw.get("max_speakers", 5)),
        )
    gen_raw = _sub_dict("lm_gen_config", data.pop("lm_gen_config", None))
    # "text_temp" appears in the published TTS config; the reference never reads it.
    gen_raw.pop("text_temp", None)
    _check_known("lm_gen_config", gen_raw, {"temp", "temp_text", "top_k", "top_k_text"})
    lm_gen = LMGenConfig(
        temp=_opt_float("lm_gen_config.temp", gen_raw.get("temp")),
        temp_text=_opt_float("lm_gen_config.temp_text", gen_raw.get("temp_text")),
        top_k=_opt_int("lm_gen_config.top_k", gen_raw.get("top_k")),
        top_k_text=_opt_int("lm_gen_config.top_k_text", gen_raw.get("top_k_text")),
    )
    id_raw = _sub_dict("model_id", data.pop("model_id", None))
    model_id = None
    if id_raw:
        _check_known("model_id", id_raw, {"sig", "epoch"})
        if "sig" not in id_raw or "epoch" not in id_raw:
            raise ConfigError("model_id must have both 'sig' and 'epoch'")
        model_id = ModelId(sig=str(id_raw["sig"]), epoch=id_raw["epoch"])
    quant_raw = data.pop("quantization", None)
    quantization = None if quant_raw is None else parse_quantization(quant_raw)
    for key in _IGNORED_KEYS:
        data.pop(key, None)
    lm = _parse_lm(data)
    if lm.fuser is None and lm.conditioners:
        raise ConfigError("conditioners are configured but there is no fuser to use them")
    return CheckpointConfig(
        lm=lm,
        model_type=model_type,
        moshi_name=files.get("moshi_name") or DEFAULT_MOSHI_NAME,
        mimi_name=files.get("mimi_name") or DEFAULT_MIMI_NAME,
        tokenizer_name=files.get("tokenizer_name") or DEFAULT_TOKENIZER_NAME,
        mimi_config_name=files.get("mimi_config_name"),
        lora_name=files.get("lora_name"),
        text_padding_token_id=padding_id,
        stt=stt,
        tts=tts,
        lm_gen=lm_gen,
        model_id=model_id,
        quantization=quantization,
        raw=dict(raw),
    )


def load_config(path: str | Path) -> CheckpointConfig:
    """Read and parse a ``config.json`` file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
