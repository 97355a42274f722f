"""The audio encoder of Whisper-style families (Qwen2-Audio, Audio Flamingo 3): two convolutions,
a learned position table, transformer layers, average pooling and a layer norm, on a fixed window
of 2 x max_source_positions mel frames.

    hidden, frames = window_encode(tower, input_features, feature_attention_mask)   # [B, T, D], [B]

Step for step the encoder's own modules in its own order, on the start of the window that holds
audio: a frame past a clip's end never reaches its valid frames (attention masks it; the
convolutions see one frame beyond), so the numbers are the model's own forward's while the cost
follows the clip, not the window (a 7 s question in a 30 s window pays for 7 s).
"""

from __future__ import annotations

import torch

# The classes whose forward window_forward reproduces module for module.
WINDOW_ENCODERS = ("Qwen2AudioEncoder", "AudioFlamingo3Encoder")


def window_encode(tower, input_features: torch.Tensor,
                  feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output [B, T, D] and each clip's frame count [B] (T covers the longest clip)."""
    from transformers.masking_utils import create_bidirectional_mask

    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    batch, _, mel = input_features.shape
    frames = (mel - 2) // 2 + 1  # the whole window's frames after the stride-2 convolution
    trim = type(tower).__name__ in WINDOW_ENCODERS
    if trim:  # one frame past the longest clip: its last valid frame's convolution reads that far
        frames = min(frames, int(feat_lengths.max()) + 1)
    valid = torch.arange(frames, device=feat_lengths.device)[None, :] < feat_lengths[:, None]  # [B, frames]
    mask = create_bidirectional_mask(config=tower.config,
                                     inputs_embeds=torch.zeros((batch, frames, 1), dtype=tower.conv1.weight.dtype,
                                                               device=input_features.device),
                                     attention_mask=valid.long())
    if not trim:  # another encoder class (a test's): its own forward on the whole window
        return tower(input_features, attention_mask=mask).last_hidden_state, out_lengths
    return window_forward(tower, input_features[..., : 2 * frames], mask), out_lengths


def window_forward(tower, input_features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The encoder's forward on the first F = mel/2 frames of the window ([B, mel bins, 2F] ->
    [B, F/2, D]): convolutions, position table, layers with their dropout and layer drop, pooling,
    norm. The classes themselves accept only the whole window."""
    import torch.nn.functional as F

    x = input_features.to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
    x = F.gelu(tower.conv2(F.gelu(tower.conv1(x))))  # [B, D, F]
    x = x.permute(0, 2, 1) + tower.embed_positions.weight[: x.shape[-1]]  # [B, F, D]
    x = F.dropout(x, p=tower.dropout, training=tower.training)
    for layer in tower.layers:
        if tower.training and tower.layerdrop > 0.0 and torch.rand([]) < tower.layerdrop:
            continue
        x = layer(x, mask)
    x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)  # [B, F/2, D]
    return tower.layer_norm(x)
