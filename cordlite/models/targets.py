"""Which linear layers LoRA adapts: the language model's, the projector's, the audio encoder's.

Qwen2-Audio's audio encoder has q/k/v_proj too, so language-model targets are anchored under
`language_model`; the projector and encoder feed the audio view only.
"""

from __future__ import annotations

AUDIO_ENCODER_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_target_regex(names: tuple[str, ...], projector: bool = False, audio_encoder: bool = False) -> str:
    """LoRA on the language model's linear layers `names` (the audio encoder has q/k/v_proj too,
    so the match is anchored under language_model), plus the audio projector's linear layer when
    `projector` and the audio encoder's linears when `audio_encoder` (both feed the audio view only)."""
    parts = []
    if names:
        parts.append(r".*\.language_model\..*\.(" + "|".join(map(str, names)) + r")")
    if projector:
        parts.append(r".*\.multi_modal_projector\.linear")
    if audio_encoder:
        parts.append(r".*\.audio_tower\.layers\.\d+\.(.*\.)?(" + "|".join(AUDIO_ENCODER_LINEARS) + r")")
    if not parts:
        raise ValueError("lora: nothing to adapt (empty target_modules, projector and audio_encoder off)")
    return "(" + "|".join(parts) + ")$"
