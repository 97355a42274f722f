"""Audio Flamingo 3 (nvidia/audio-flamingo-3-hf): a Whisper-large-v3 encoder fine-tuned with
average pooling, a two-layer MLP projector, a Qwen2.5-7B language model; `<sound>` placeholders,
25 per second of each 30 s window. Clips longer than one window are split into several windows by
the processor; cordlite's views hold one window per clip (data.max_audio_seconds <= 30)."""

from cordlite.models.families.base import AudioFamily
from cordlite.models.families.whisper import window_encode

FAMILY = AudioFamily(
    name="audioflamingo3",
    model_types=("audioflamingo3",),
    model_class="AudioFlamingo3ForConditionalGeneration",
    smallest="nvidia/audio-flamingo-3-hf",
    encode=window_encode,
    projector_lora=r"multi_modal_projector\.linear_[12]",
    audio_token_attr="audio_token_id",
    feature_mask_key="input_features_mask",
    never_sample=("<sound>",),
    end_tokens=("<|im_end|>", "<|endoftext|>"),
    notes="One 30 s window per clip (the processor would split longer clips into several).",
)
