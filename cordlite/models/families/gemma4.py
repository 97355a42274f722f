"""Gemma 4 with audio (google/gemma-4-E2B-it, -E4B-it): a conformer audio encoder (USM-style, 40 ms
per frame after subsampling), a normed linear embedder into the language model, and a Gemma 4
language model with per-layer embeddings (each layer also reads a table lookup of the token ids),
key-value sharing across its last layers, sliding-window attention and soft-capped logits;
`<|audio>` + `<|audio|>` x frames + `<audio|>` in the prompt, written by the processor.

Two things every other family does not need, declared here and applied by cordlite wherever it
runs the language model on merged embeddings: the per-layer inputs are looked up from the token
ids (audio placeholders read as the pad token, as the model's own forward does), and the logits
are soft-capped (tanh(logits / c) x c)."""

from __future__ import annotations

import torch

from cordlite.models.families.base import AudioFamily


def conformer_encode(tower, input_features: torch.Tensor,
                     feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio tower's own forward on the batch ([B, frames, mel] and its mask): its output
    [B, T, D] before the embedder and each clip's valid frame count [B] (the tower's output mask)."""
    out = tower(input_features.to(tower.output_proj.weight.dtype), feature_attention_mask.bool(), return_dict=True)
    mask = out.attention_mask.bool()  # [B, T], True on a prefix of each row
    lengths = mask.sum(-1)
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]):
        raise RuntimeError(f"{type(tower).__name__}: its valid frames are not a prefix of each row")
    return out.last_hidden_state, lengths


def per_layer_inputs(base, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The token-identity part of the per-layer embeddings of `input_ids` [B, L], placeholders of
    audio, images and video read as the pad token (Gemma4Model.forward's own substitution)."""
    config = base.config
    lm = base.model.language_model
    if not getattr(config.get_text_config(), "hidden_size_per_layer_input", None):
        return {}
    soft = [config.audio_token_id, config.image_token_id, getattr(config, "video_token_id", None)]
    soft = torch.tensor([t for t in soft if t is not None], device=input_ids.device)
    multimodal = torch.isin(input_ids, soft)  # the soft-token placeholders (not <|audio>, <audio|>), as the model does
    ids = torch.where(multimodal, config.get_text_config().pad_token_id, input_ids)
    return {"per_layer_inputs": lm.get_per_layer_inputs(ids, None)}


FAMILY = AudioFamily(
    name="gemma4",
    model_types=("gemma4",),
    model_class="Gemma4ForConditionalGeneration",
    smallest="google/gemma-4-E2B-it",
    encode=conformer_encode,
    projector="model.embed_audio",
    projector_lora=r"embed_audio\.embedding_projection",
    encoder_linears=("linear", "relative_k_proj"),
    audio_token_attr="audio_token_id",
    feature_mask_key="input_features_mask",
    never_sample=("<|audio|>", "<|audio>", "<audio|>", "<|image|>", "<|image>", "<image|>", "<|video|>"),
    end_tokens=("<turn|>", "<eos>"),
    audio_span=("<|audio>", "<audio|>"),
    decoder_inputs=per_layer_inputs,
    eager_parts=("audio_config",),
    processor_class="Gemma4Processor",
    notes="E2B and E4B carry the audio encoder. The language model's per-layer embeddings are looked up "
          "from the token ids on every pass cordlite makes; its logits are soft-capped. Without torchvision "
          "the processor is built without its image and video processors.",
)
