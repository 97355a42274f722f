"""What cordlite needs to know about one audio chat model family (AudioFamily), and the error
raised for a model it does not run (FamilyError).

A family declares where its audio side and its language model live inside the transformers
class, which linear layers LoRA may adapt, the tokens that must never be sampled, the name the
processor gives the mel features' mask and how its audio encoder runs on a batch of clips.
Everything else (the two views, the step, the divergences, merging) is the same code for
every family: the audio view is the model's own prompt with the projected audio frames written
over its audio placeholder tokens, and the text view is the same class run on tokens alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


class FamilyError(ValueError):
    """A model type cordlite does not run, or a family name it does not know; the message names the
    type, why, and the supported families."""


def module_at(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """root.a.b.c for dotted 'a.b.c'."""
    out = root
    for part in dotted.split("."):
        out = getattr(out, part)
    return out


@dataclass(frozen=True)
class AudioFamily:
    name: str
    """cordlite's name (recipes: model.family)."""
    model_types: tuple[str, ...]
    """config.model_type values of checkpoints of this family."""
    model_class: str
    """The transformers class that loads a checkpoint (text and audio views both run through it)."""
    smallest: str
    """The smallest real checkpoint on the hub (docs/models.md, recipes/<family>_lora.yaml)."""
    encode: Callable
    """(tower, input_features [B, mel, F], feature_attention_mask [B, F]) -> (hidden [B, T, D]
    before the projector, frames per clip [B]): the numbers the model's own forward computes."""
    tower: str = "model.audio_tower"
    """Path of the audio encoder under the loaded class."""
    projector: str = "model.multi_modal_projector"
    """Path of the module mapping encoder frames into the language model's input space."""
    language_model: str = "model.language_model"
    """Path of the decoder (no LM head): what the shared-prefill sampler and the gradient pass call."""
    projector_lora: str = r"multi_modal_projector\.linear"
    """Regex (under the model) of the projector linears LoRA adapts with lora.projector."""
    encoder_linears: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    """Linear layer names inside the audio encoder's layers (lora.audio_encoder)."""
    audio_token_attr: str = "audio_token_id"
    """The config attribute holding the audio placeholder's token id."""
    feature_mask_key: str = "feature_attention_mask"
    """The processor's name for the mel features' mask (cordlite calls it feature_attention_mask)."""
    never_sample: tuple[str, ...] = ()
    """Tokens that must never be sampled: an audio placeholder in a completion breaks the next forward."""
    end_tokens: tuple[str, ...] = ()
    """Tokens that end an answer besides the generation config's eos ids."""
    audio_span: tuple[str, str] = ("", "")
    """Tokens the processor writes around a clip's placeholders (Music Flamingo's <|sound_bos|>,
    <|sound_eos|>); empty where the chat template writes them (Qwen2-Audio, Qwen2.5-Omni)."""
    pre_projector: Callable | None = None
    """(base, hidden [B, T, D]) -> hidden: what the model's own forward does to the encoder frames
    between the encoder and the projector (Music Flamingo's rotary time embedding), run with the projector."""
    decoder_inputs: Callable | None = None
    """(base, input_ids [B, L]) -> extra keyword inputs of the language model for the positions of
    input_ids, when it reads the token ids besides their embeddings (Gemma 4's per-layer inputs)."""
    before_generate: Callable | None = None
    """(base, rows) -> None, run before every generate() call of `rows` rows: for a class that keeps
    position state between calls (Qwen2.5-Omni's rope_deltas), the state these prompts give."""
    eager_parts: tuple[str, ...] = ()
    """Sub-configs whose modules run only transformers' eager attention (Gemma 4's audio tower)."""
    processor_class: str = ""
    """The transformers processor class when it also holds image or video processors (which need
    torchvision): without torchvision it is built from its audio and text parts (families.processors)."""
    notes: str = ""
    """Anything a user should know (docs/models.md repeats it)."""
    extra_skip: tuple[str, ...] = field(default=("lm_head",))
    """Modules kept unquantised besides the audio encoder and the projector."""

    def transformers_class(self) -> type:
        """The transformers class that loads this family's checkpoints."""
        import transformers

        return getattr(transformers, self.model_class)

    def audio_tower(self, base) -> torch.nn.Module:
        return module_at(base, self.tower)

    def audio_projector(self, base) -> torch.nn.Module:
        return module_at(base, self.projector)

    def lm(self, base) -> torch.nn.Module:
        return module_at(base, self.language_model)

    def audio_token_id(self, config) -> int:
        value = getattr(config, self.audio_token_attr, None)
        if value is None:
            raise FamilyError(f"{self.name}: the model's config has no {self.audio_token_attr}; not a "
                              f"{self.model_class} checkpoint?")
        return int(value)

    def skip_modules(self) -> tuple[str, ...]:
        """Full module names that stay unquantised: the audio encoder, the projector, the LM head."""
        return (self.tower, self.projector) + self.extra_skip

    def lora_regex(self, names: tuple[str, ...], projector: bool = False, audio_encoder: bool = False) -> str:
        """One peft target regex: the language model's linears `names` (anchored under the language
        model, since audio encoders have q/k/v_proj too), the projector's with `projector`, the
        audio encoder's layer linears with `audio_encoder` (both feed the audio view only)."""
        lm_tail = self.language_model.split(".")[-1]
        tower_tail = self.tower.split(".")[-1]
        parts = []
        if names:
            parts.append(r".*\." + lm_tail + r"\..*\.(" + "|".join(map(str, names)) + r")")
        if projector:
            parts.append(r".*\." + self.projector_lora)
        if audio_encoder:
            parts.append(r".*\." + tower_tail + r"\.layers\.\d+\.(.*\.)?(" + "|".join(self.encoder_linears) + r")")
        if not parts:
            raise ValueError("lora: nothing to adapt (empty target_modules, projector and audio_encoder off)")
        return "(" + "|".join(parts) + ")$"

    def attn_implementation(self, requested: str):
        """The from_pretrained attn_implementation for `requested`: per sub-model where some only run eager."""
        if not self.eager_parts or requested == "eager":
            return requested
        return {"": requested, **{part: "eager" for part in self.eager_parts}}

    def load_processor(self, name_or_path: str, revision: str | None = None):
        """The checkpoint's processor: AutoProcessor's, or the audio-and-text processor of
        families.processors where the processor class needs torchvision and it is missing; it carries
        the family's audio_span (cordlite.data expands placeholders as this family's processor does)."""
        from cordlite.models.families.processors import load_processor

        processor = load_processor(self, name_or_path, revision)
        if len(processor.tokenizer) < 100:  # transformers makes an all-but-empty tokenizer when its files are missing
            raise ValueError(f"{name_or_path} has no tokenizer (what loads holds {len(processor.tokenizer)} token(s): "
                             "tokenizer.json / tokenizer_config.json are missing); copy the tokenizer files of its "
                             "base model into it")
        processor._cordlite_audio_span = self.audio_span
        return processor

    def model_audio_inputs(self, audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """cordlite's audio inputs (input_features, feature_attention_mask) under the names the
        model's forward takes."""
        out = {"input_features": audio["input_features"]}
        out[self.feature_mask_key] = audio["feature_attention_mask"]
        return out
