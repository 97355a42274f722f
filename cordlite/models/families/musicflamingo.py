"""Music Flamingo (nvidia/music-flamingo-2601-hf): Audio Flamingo 3's encoder, projector and Qwen2.5-7B
language model, with rotary time embeddings on the encoder frames before the projector (their
angles follow each frame's time in the clip) and `<|sound_bos|><sound>...<|sound_eos|>` in the
prompt, 25 placeholders per second of each 30 s window. cordlite's views hold one window per clip
(data.max_audio_seconds <= 30), where a frame's time is its index x 40 ms."""

from __future__ import annotations

import torch

from cordlite.models.families.base import AudioFamily
from cordlite.models.families.whisper import window_encode


def rotary_time(base, hidden: torch.Tensor) -> torch.Tensor:
    """The model's rotary time embedding (base.model.pos_emb, applied as its get_audio_features
    applies it) on encoder frames [B, T, D] of one window per clip: frame t at t x 4 mel frames."""
    from transformers.models.musicflamingo.modeling_musicflamingo import apply_rotary_time_emb

    step = base.config.audio_frame_step * 4  # one encoder frame: 4 mel frames (two stride-2 stages)
    frames = hidden.shape[-2]
    timestamps = torch.arange(frames, dtype=torch.float32, device=hidden.device)[None, :] * step
    cos, sin = base.model.pos_emb(timestamps.expand(hidden.shape[0], -1), seq_len=frames)
    return apply_rotary_time_emb(hidden, cos, sin)


FAMILY = AudioFamily(
    name="musicflamingo",
    model_types=("musicflamingo",),
    model_class="MusicFlamingoForConditionalGeneration",
    smallest="nvidia/music-flamingo-2601-hf",
    encode=window_encode,
    pre_projector=rotary_time,
    projector_lora=r"multi_modal_projector\.linear_[12]",
    audio_token_attr="audio_token_id",
    feature_mask_key="input_features_mask",
    never_sample=("<sound>", "<|sound_bos|>", "<|sound_eos|>"),
    end_tokens=("<|im_end|>", "<|endoftext|>"),
    audio_span=("<|sound_bos|>", "<|sound_eos|>"),
    notes="One 30 s window per clip (the processor would split longer clips into several); the rotary "
          "time embedding runs with the projector on every call, so cached encoder frames stay valid.",
)
