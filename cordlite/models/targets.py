"""Which linear layers LoRA adapts: the language model's, the projector's, the audio encoder's.

Audio encoders have q/k/v_proj too, so language-model targets are anchored under the family's
language model; the projector and encoder feed the audio view only. The module paths are the
family's (cordlite.models.families).
"""

from __future__ import annotations


def lora_target_regex(names: tuple[str, ...], projector: bool = False, audio_encoder: bool = False,
                      family=None) -> str:
    """LoRA on the language model's linear layers `names`, plus the audio projector's linears when
    `projector` and the audio encoder's when `audio_encoder` (both feed the audio view only), in
    `family` (an AudioFamily; Qwen2-Audio's when None)."""
    if family is None:
        from cordlite.models.families import FAMILIES

        family = FAMILIES["qwen2_audio"]
    return family.lora_regex(names, projector, audio_encoder)
