"""A Qwen2-Audio checkpoint with the real 7B architecture and random weights, written to local disk.

    python -m benchmarks.step_memory_speed --prepare-only          (builds cache/bench/qwen2audio-7b-random)

Memory and speed depend on the shapes, not on the values, so random weights measure what the
real Qwen2-Audio-7B-Instruct would. The checkpoint is written once in bf16 safetensors shards,
so the benchmark loads it through the same `from_pretrained` + BitsAndBytesConfig NF4 path as a
downloaded one. The model is built on the meta device and each tensor is drawn, written and freed
in turn, so the build holds one shard (at most 2 GB) of tensors at a time, not the 16.8 GB of the model.
Shards are renamed into place when complete and the marker file is written last: an interrupted
build resumes where it stopped.

Architecture source: the public config.json of Qwen/Qwen2-Audio-7B-Instruct on the Hugging Face
Hub. It sets text_config intermediate_size 11008, max_position_embeddings 8192, rms_norm_eps
1e-5, vocab_size 156032, rope_theta 10000, and leaves hidden_size 4096, 32 layers, 32 attention
heads and 32 key/value heads (no GQA) at Qwen2Config's defaults; the audio_config is the
Whisper-large-v3 encoder (d_model 1280, 32 layers, 20 heads, ffn 5120, 128 mel bins,
max_source_positions 1500) and audio_token_index is 151646. The same values are transformers'
Qwen2AudioConfig defaults for the audio side (transformers/models/qwen2_audio/configuration_qwen2_audio.py).

The tokenizer is cordlite's small locally trained one (cordlite.models.tiny_checkpoint), because the real
one cannot be downloaded here: the embedding and LM head keep all 156032 rows, and
audio_token_index is set to the small tokenizer's <|AUDIO|> id so the processor's audio
placeholders line up. Prompts therefore tokenize into somewhat more tokens than with Qwen's
tokenizer; the 750 audio positions of a 30 s clip, which dominate the prompt, are identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

MARKER = "bench_checkpoint.json"
_FORMAT = 1
_SHARD_BYTES = 2_000_000_000


@dataclass(frozen=True)
class Arch:
    """Shapes of a Qwen2-Audio model (text: Qwen2; audio: Whisper-style encoder)."""

    name: str
    vocab_size: int | None  # None: exactly the tokenizer's length
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float
    audio_d_model: int
    audio_layers: int
    audio_heads: int
    audio_ffn_dim: int
    num_mel_bins: int
    max_source_positions: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


QWEN2_AUDIO_7B = Arch(
    name="qwen2audio-7b", vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0, max_position_embeddings=8192,
    rms_norm_eps=1e-5, audio_d_model=1280, audio_layers=32, audio_heads=20, audio_ffn_dim=5120, num_mel_bins=128,
    max_source_positions=1500,
)
# The mid-size CPU benchmark: Qwen2's real vocabulary (151,936 rows) at 1,024 wide, 4 layers of 16 heads
# with as many key/value heads (no GQA, like the 7B), and a Whisper-small-shaped encoder (768 wide, 12
# layers, 12 heads, FFN 3072) with Qwen2-Audio's 128 mel bins: 0.45 B parameters, of which the
# embedding and LM head are 0.31 B, as large a share as in the 7B's decode. Small enough to step on 2 cores.
QWEN2_AUDIO_MID = Arch(
    name="qwen2audio-mid", vocab_size=151936, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
    num_attention_heads=16, num_key_value_heads=16, rope_theta=10000.0, max_position_embeddings=8192,
    rms_norm_eps=1e-5, audio_d_model=768, audio_layers=12, audio_heads=12, audio_ffn_dim=3072, num_mel_bins=128,
    max_source_positions=1500,
)
# cordlite.models.tiny.TinySpec's shapes with a 30 s audio window (max_source_positions 1500 like the 7B).
TINY = Arch(
    name="tiny", vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, rope_theta=10000.0, max_position_embeddings=8192, rms_norm_eps=1e-5, audio_d_model=64,
    audio_layers=2, audio_heads=4, audio_ffn_dim=128, num_mel_bins=128, max_source_positions=1500,
)
ARCHS = {"7b": QWEN2_AUDIO_7B, "mid": QWEN2_AUDIO_MID, "tiny": TINY}


def _processor_source(cache: Path) -> Path:
    """A tiny cordlite checkpoint with a 30 s feature extractor: its tokenizer, processor and chat
    template are reused (public API: cordlite.models.tiny_checkpoint.ensure_tiny_qwen2audio)."""
    from cordlite.models.tiny import TinySpec
    from cordlite.models.tiny_checkpoint import ensure_tiny_qwen2audio

    return ensure_tiny_qwen2audio(cache / "processor-30s", TinySpec(chunk_length_s=30))


def build_config(arch: Arch, tokenizer):
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in ("<|endoftext|>", "<|im_end|>", "<|AUDIO|>")}
    text = Qwen2Config(
        vocab_size=arch.vocab_size or len(tokenizer), hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings, rms_norm_eps=arch.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta}, tie_word_embeddings=False,
        use_sliding_window=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=arch.num_mel_bins, encoder_layers=arch.audio_layers, encoder_attention_heads=arch.audio_heads,
        encoder_ffn_dim=arch.audio_ffn_dim, d_model=arch.audio_d_model, max_source_positions=arch.max_source_positions,
        activation_function="gelu", scale_embedding=False,
    )
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"])
    config.dtype = "bfloat16"
    return config


def _init_value(name: str, shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Norm scales 1, biases 0, everything else N(0, 0.02) (transformers' initializer_range)."""
    leaf = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if leaf == "bias":
        return torch.zeros(shape, dtype=torch.bfloat16)
    if "norm" in parent and leaf == "weight":
        return torch.ones(shape, dtype=torch.bfloat16)
    t = torch.empty(shape, dtype=torch.bfloat16, device=device)
    return t.normal_(0.0, 0.02, generator=generator).cpu()


def _shard_plan(shapes: dict[str, torch.Size], shard_bytes: int) -> list[list[str]]:
    plan: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * shape.numel()
        if plan[-1] and size + nbytes > shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(name)
        size += nbytes
    return plan


def _marker(arch: Arch) -> dict:
    return {"format": _FORMAT, "arch": dataclasses.asdict(arch)}


def is_complete(out: Path, arch: Arch) -> bool:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8")) == _marker(arch)
    except (OSError, ValueError):
        return False


def ensure_checkpoint(arch: Arch, cache: Path, progress=print, shard_bytes: int = _SHARD_BYTES) -> Path:
    """The random-weight checkpoint of `arch` under `cache`, built (or finished) if needed."""
    from safetensors.torch import save_file
    from transformers import AutoProcessor, GenerationConfig, Qwen2AudioForConditionalGeneration

    out = Path(cache) / f"{arch.name}-random"
    if is_complete(out, arch):
        return out
    source = _processor_source(Path(cache))
    processor = AutoProcessor.from_pretrained(source)
    config = build_config(arch, processor.tokenizer)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    del model
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    plan = _shard_plan(shapes, shard_bytes)
    weight_map: dict[str, str] = {}
    index = {name: i for i, name in enumerate(shapes)}
    for k, names in enumerate(plan):
        shard = f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        weight_map.update({n: shard for n in names})
        if (out / shard).is_file():
            continue  # written by an earlier, interrupted build (shards appear only when complete)
        tensors = {}
        for name in names:
            g = torch.Generator(device=device).manual_seed(1_000 + index[name])  # value depends only on the name
            tensors[name] = _init_value(name, shapes[name], g, device)
        tmp = out / f".{shard}.tmp-{os.getpid()}"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / shard)
        progress(f"[checkpoint] {arch.name}: shard {k + 1}/{len(plan)} written")
        del tensors
    total = sum(2 * s.numel() for s in shapes.values())
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    config.save_pretrained(out)
    processor.save_pretrained(out)
    GenerationConfig.from_pretrained(source).save_pretrained(out)
    _write_json(out / MARKER, _marker(arch))
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parameter_counts(arch: Arch, vocab_size: int | None = None) -> dict[str, int]:
    """Parameters by part, from the shapes alone (checked against the built model in the tests)."""
    v = arch.vocab_size or vocab_size or 0
    h, f, L = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers
    kv = arch.num_key_value_heads * arch.head_dim
    linear = L * (h * h + 2 * h * kv + h * h + 3 * h * f)  # q, k, v, o, gate, up, down
    other = L * (h + 2 * kv + 2 * h) + h  # q/k/v biases, 2 RMSNorms per layer, final norm
    d, af, aL = arch.audio_d_model, arch.audio_ffn_dim, arch.audio_layers
    audio = (aL * (4 * d * d + 3 * d + 2 * d * af + af + d + 4 * d)  # attn (k_proj has no bias), fc1/fc2, 2 LNs
             + arch.num_mel_bins * d * 3 + d + d * d * 3 + d  # conv1, conv2
             + arch.max_source_positions * d + 2 * d)  # positions, final LN
    return {"lm_linear": linear, "lm_other": other, "embed_tokens": v * h, "lm_head": v * h, "audio_tower": audio,
            "projector": d * h + h}
