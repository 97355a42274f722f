"""Qwen2-Audio (Qwen2-Audio-7B, -7B-Instruct): a Whisper-large encoder with average pooling, one
linear projector, a Qwen2 language model; `<|AUDIO|>` placeholders, 25 per second of a 30 s window."""

from cordlite.models.families.base import AudioFamily
from cordlite.models.families.whisper import window_encode

FAMILY = AudioFamily(
    name="qwen2_audio",
    model_types=("qwen2_audio",),
    model_class="Qwen2AudioForConditionalGeneration",
    smallest="Qwen/Qwen2-Audio-7B-Instruct",
    encode=window_encode,
    projector_lora=r"multi_modal_projector\.linear",
    audio_token_attr="audio_token_id",
    feature_mask_key="feature_attention_mask",
    never_sample=("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
    end_tokens=("<|im_end|>", "<|endoftext|>"),
)
