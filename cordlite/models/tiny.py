"""The tiny random-init Qwen2-Audio: its shape (`TinySpec`) and its weights.

    model = build_model(TinySpec(), tokenizer)     # Qwen2AudioForConditionalGeneration, seeded

The real transformers classes with a small config; the tokenizer and processor are
cordlite.models.tiny_processor's, and the checkpoint directory (build, reuse, atomic install)
is cordlite.models.tiny_checkpoint's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cordlite.models.tiny_processor import HOP_LENGTH, SAMPLING_RATE, SPECIAL_TOKENS, special_ids

# bitsandbytes quantizes weights in blocks of 64 values; keeping every LM
# linear dimension a multiple of 64 means 4-bit loading behaves like on the
# real model instead of exercising padding edge cases.
_BNB_BLOCK = 64


@dataclass(frozen=True)
class TinySpec:
    """Shape and seed of a tiny Qwen2-Audio checkpoint."""

    vocab_size: int = 1024
    """BPE vocabulary target, special tokens included (a small corpus may yield fewer)."""
    hidden_size: int = 64
    """Width of the Qwen2 language model."""
    intermediate_size: int = 128
    """Width of the language model's SwiGLU MLP."""
    num_hidden_layers: int = 2
    """Decoder layers in the language model."""
    num_attention_heads: int = 4
    """Query heads in the language model."""
    num_key_value_heads: int = 4
    """Key/value heads. Equal to the query heads like Qwen2-Audio-7B (no GQA); this
    also keeps k_proj/v_proj outputs at 64, a whole bitsandbytes block."""
    audio_d_model: int = 64
    """Width of the Whisper-style audio encoder."""
    audio_layers: int = 2
    """Encoder layers in the audio tower."""
    audio_heads: int = 4
    """Attention heads in the audio tower."""
    audio_ffn_dim: int = 128
    """Feed-forward width in the audio tower."""
    num_mel_bins: int = 128
    """Mel bins produced by the feature extractor and consumed by the encoder."""
    chunk_length_s: int = 10
    """Feature-extractor window in seconds; audio is padded/cut to this length and
    the encoder's max_source_positions is chunk_length_s * 100 // 2."""
    seed: int = 0
    """Seed for the weight initialisation (the tokenizer training is deterministic)."""

    @property
    def max_source_positions(self) -> int:
        # 100 mel frames per second at hop 160 / 16 kHz, halved by the encoder's stride-2 conv.
        return self.chunk_length_s * (SAMPLING_RATE // HOP_LENGTH) // 2

    def validate(self) -> None:
        """Raise ValueError naming the offending field if the spec cannot build a usable model."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"TinySpec.{field.name}={value!r} must be an int")
            if field.name != "seed" and value <= 0:
                raise ValueError(f"TinySpec.{field.name}={value} must be positive")
        minimum_vocab = 256 + len(SPECIAL_TOKENS)
        if self.vocab_size < minimum_vocab:
            raise ValueError(
                f"TinySpec.vocab_size={self.vocab_size} is below the {minimum_vocab} needed for the "
                f"256 byte tokens plus {len(SPECIAL_TOKENS)} special tokens; raise it to at least {minimum_vocab}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TinySpec.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; pick a divisor of hidden_size"
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim % 2:
            raise ValueError(f"TinySpec head dim {head_dim} must be even for rotary embeddings; change hidden_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"TinySpec.num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; pick a divisor"
            )
        if self.audio_d_model % self.audio_heads:
            raise ValueError(
                f"TinySpec.audio_d_model={self.audio_d_model} is not divisible by audio_heads={self.audio_heads}"
            )
        lm_dims = {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_key_value_heads * head_dim": self.num_key_value_heads * head_dim,
        }
        for name, dim in lm_dims.items():
            if dim % _BNB_BLOCK:
                raise ValueError(
                    f"TinySpec {name}={dim} is not a multiple of {_BNB_BLOCK}; the LM's linear layers must "
                    f"split into whole 4-bit blocks, so choose a multiple of {_BNB_BLOCK}"
                )


def qwen2_text_config(spec: TinySpec, vocab_size: int, endoftext: int, im_end: int):
    """The tiny Qwen2 language model's config (shared by every family whose LM is Qwen2)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        # Exactly the tokenizer length: the embedding must cover every special token id.
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        # Same context length and norm epsilon as Qwen2-Audio-7B; rope left at defaults.
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )


def build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
    )

    ids = special_ids(tokenizer)
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    audio_config = Qwen2AudioEncoderConfig(
        num_mel_bins=spec.num_mel_bins,
        encoder_layers=spec.audio_layers,
        encoder_attention_heads=spec.audio_heads,
        encoder_ffn_dim=spec.audio_ffn_dim,
        d_model=spec.audio_d_model,
        max_source_positions=spec.max_source_positions,
        activation_function="gelu",
        scale_embedding=False,
    )
    text_config = qwen2_text_config(spec, len(tokenizer), endoftext, im_end)
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=ids["<|AUDIO|>"],
    )
    config.dtype = "float32"

    # Seed right before construction so the weights depend only on the spec.
    torch.manual_seed(spec.seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext,
        # Like the real instruct checkpoint: stop on the end of the assistant turn or of the text.
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        do_sample=False,
        max_new_tokens=64,
    )
    return model
