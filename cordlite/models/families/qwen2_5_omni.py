"""Qwen2.5-Omni's Thinker (Qwen/Qwen2.5-Omni-3B, -7B): a Whisper-large-style encoder that attends
within 2 s chunks of a clip's own frames, with average pooling, a layer norm and a linear
projection inside the encoder (`audio_tower.proj`), and a Qwen2 language model with 3-D
(multimodal) rotary positions; `<|audio_bos|><|AUDIO|><|audio_eos|>` in the prompt, 25 placeholders
per second. Only the Thinker is loaded: the Talker (speech output) is never loaded, and the vision
encoder is loaded but unused by an audio question.

The encoder takes the clips' frames flattened ([mel, sum of frames], no padding), so a batch is
the model's own `get_audio_features` call; its output is split back per clip. For audio and text
alone the 3-D positions are the 1-D positions repeated, so the language model runs on
`inputs_embeds` with the same positions as every other family."""

from __future__ import annotations

import torch

from cordlite.models.families.base import AudioFamily


def thinker_encode(tower, input_features: torch.Tensor,
                   feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output before its projection, [B, T, D], and each clip's frame count [B]: the model's
    own get_audio_features on the valid frames, with the projection's input kept (the family's
    projector, `audio_tower.proj`, is then applied by cordlite, with its adapter when it has one)."""
    mask = feature_attention_mask.bool()
    lengths = mask.sum(-1)
    flat = input_features.permute(0, 2, 1)[mask].permute(1, 0)  # [mel, sum of frames], clip after clip
    _, out_lengths = tower._get_feat_extract_output_lengths(lengths)
    seen: list[torch.Tensor] = []
    hook = tower.proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        tower(flat.to(tower.conv1.weight.dtype), feature_lens=lengths)
    finally:
        hook.remove()
    if len(seen) != 1 or seen[0].shape[0] != int(out_lengths.sum()):
        raise RuntimeError(f"{type(tower).__name__}: expected one projection of {int(out_lengths.sum())} frames, got "
                           f"{[tuple(s.shape) for s in seen]}: the encoder's forward is not the one this family knows")
    rows = seen[0].split(out_lengths.tolist())
    hidden = seen[0].new_zeros((len(rows), int(out_lengths.max()), seen[0].shape[-1]))
    for b, r in enumerate(rows):
        hidden[b, : len(r)] = r
    return hidden, out_lengths


def zero_rope_deltas(base, rows: int) -> None:
    """The Thinker keeps the 3-D positions' offset from the last prompt it read (model.rope_deltas) and
    adds it while decoding; a cache cordlite prefilled (or a call with another batch) would meet a
    stale one. Audio and text alone have 1-D positions, whose offset the class computes as 0."""
    base.model.rope_deltas = torch.zeros((rows, 1), dtype=torch.long, device=base.device)


FAMILY = AudioFamily(
    name="qwen2_5_omni",
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    smallest="Qwen/Qwen2.5-Omni-3B",
    encode=thinker_encode,
    projector="model.audio_tower.proj",
    projector_lora=r"audio_tower\.proj",
    audio_token_attr="audio_token_id",
    feature_mask_key="feature_attention_mask",
    never_sample=("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>",
                  "<|vision_eos|>", "<|vision_pad|>"),
    end_tokens=("<|im_end|>", "<|endoftext|>"),
    before_generate=zero_rope_deltas,
    processor_class="Qwen2_5OmniProcessor",
    notes="The Thinker only (text answers); the vision encoder is loaded and unused. Without torchvision "
          "the processor is built without its image and video processors (an audio question needs neither).",
)
