"""The audio view as input embeddings: the audio tower run once, its frames merged into the prompt.

    hidden, lengths = encode_audio(model, input_features, feature_attention_mask)   # [B, T, D], [B]
    embeds = merge_audio(model, input_ids, project(model, hidden), lengths)         # [B, P, H]
    model(inputs_embeds=embeds, attention_mask=...)   # the same logits as model(input_ids, input_features, ...)

Qwen2-Audio merges audio inside its forward: every call with `input_features` runs the encoder
again, for each row. Split into these three steps, the encoder can run once per distinct clip
and its frames be reused (rollout rows of the same prompt, the gradient pass, the alignment's
cached clips), with the same numbers as the model's own forward: the same encoder mask, the
same frames cut to each clip's length, the same placement at the audio placeholder tokens.
"""

from __future__ import annotations

import torch

from cordlite.models.lora import base_of


def _parts(model):
    inner = base_of(model).model
    return inner.audio_tower, inner.multi_modal_projector, inner.get_input_embeddings(), base_of(model).config


def encode_audio(model, input_features: torch.Tensor,
                 feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio tower output [B, T, D] (T = the window's frames) and each clip's frame count [B],
    exactly as Qwen2AudioModel.forward computes them (padding masked in the encoder)."""
    from transformers.masking_utils import create_bidirectional_mask

    tower, _, _, _ = _parts(model)
    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    batch, _, mel = input_features.shape
    frames = (mel - 2) // 2 + 1
    valid = torch.arange(frames, device=feat_lengths.device)[None, :] < feat_lengths[:, None]  # [B, frames]
    mask = create_bidirectional_mask(config=tower.config,
                                     inputs_embeds=torch.zeros((batch, frames, 1), dtype=tower.conv1.weight.dtype,
                                                               device=input_features.device),
                                     attention_mask=valid.long())
    hidden = tower(input_features, attention_mask=mask).last_hidden_state
    return hidden, out_lengths


def project(model, hidden: torch.Tensor) -> torch.Tensor:
    """Encoder frames [.., D] -> the language model's input space [.., H] (the projector)."""
    _, projector, _, _ = _parts(model)
    return projector(hidden)


def merge_audio(model, input_ids: torch.Tensor, projected: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings [B, P, H]: token embeddings, with row b's first lengths[b] projected audio
    frames [B, T, H] written over its audio placeholder tokens, in order."""
    _, _, embed, config = _parts(model)
    embeds = embed(input_ids)
    audio = input_ids == config.audio_token_id  # [B, P]
    keep = torch.arange(projected.shape[1], device=projected.device)[None, :] < lengths.to(projected.device)[:, None]
    frames = projected[keep]  # [sum of lengths, H], row by row
    if int(audio.sum()) != frames.shape[0]:
        raise ValueError(f"{int(audio.sum())} audio placeholder tokens in the prompt but {frames.shape[0]} audio "
                         "frames: the prompt was not made by this model's processor for these clips")
    return embeds.masked_scatter(audio.unsqueeze(-1), frames.to(embeds.dtype))


def prompt_embeds(model, prompt: dict[str, torch.Tensor],
                  frames: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """An audio-view prompt (input_ids, attention_mask, input_features, feature_attention_mask) as
    {"inputs_embeds", "attention_mask", "input_ids"}: the encoder run once for its B rows, or not
    at all when its output `frames` (hidden, lengths from encode_audio) is given. `input_ids` stays
    for lengths and logging; models are called with the embeddings."""
    hidden, lengths = frames if frames is not None else encode_audio(model, prompt["input_features"],
                                                                     prompt["feature_attention_mask"])
    embeds = merge_audio(model, prompt["input_ids"], project(model, hidden), lengths)
    return {"inputs_embeds": embeds, "attention_mask": prompt["attention_mask"], "input_ids": prompt["input_ids"]}


def encoder_is_frozen(model) -> bool:
    """True when nothing can change the audio tower's output between calls: no adapter layers in
    it and no parameter of it that trains."""
    tower, _, _, _ = _parts(model)
    return not any("lora_" in name or p.requires_grad for name, p in tower.named_parameters())


class FrameCache:
    """Encoder frames per clip id, computed once and reused by later prompts of the same clips:
    valid while the encoder is frozen (encoder_is_frozen), as for every evaluation of adapters
    that leave it alone. The projector and the merge run on every call, so adapters on the
    projector or the language model are always applied."""

    def __init__(self) -> None:
        self.frames: dict[str, torch.Tensor] = {}

    def prompt(self, model, ids: list[str], audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`audio` (an audio-view prompt of the clips `ids`) as merged input embeddings."""
        missing = [i for i, k in enumerate(ids) if k not in self.frames]
        if missing:
            index = torch.tensor(missing)
            hidden, lengths = encode_audio(model, audio["input_features"].index_select(0, index),
                                           audio["feature_attention_mask"].index_select(0, index))
            for i, h, n in zip(missing, hidden, lengths.tolist()):
                self.frames[ids[i]] = h[:n].detach().clone()
        rows = [self.frames[k] for k in ids]
        lengths = torch.tensor([len(r) for r in rows])
        hidden = rows[0].new_zeros((len(rows), int(lengths.max()), rows[0].shape[1]))
        for b, r in enumerate(rows):
            hidden[b, : len(r)] = r
        embeds = merge_audio(model, audio["input_ids"], project(model, hidden), lengths)
        return {"inputs_embeds": embeds, "attention_mask": audio["attention_mask"], "input_ids": audio["input_ids"]}
