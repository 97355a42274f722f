"""Audio chat model families: which transformers class a checkpoint is, and where its audio side
and its language model live (docs/models.md).

    family = detect_family("Qwen/Qwen2-Audio-7B-Instruct")      # from config.json's model_type
    family = family_of(model)                                   # of a loaded model (PeftModel or not)
    family.audio_tower(base), family.audio_projector(base), family.lm(base)

A checkpoint's family is found from its `config.model_type`; a recipe's `model.family` names one
instead (a checkpoint whose config says another type). A model type cordlite does not run is
refused with the reason and the supported families (FamilyError), never half-run.

May import: the shared ground (cordlite.config), torch, transformers (lazily). One module per family.
Must not be imported by: nothing below it (the recipe layer knows the family names from
cordlite.config.MODEL_FAMILIES, kept equal to FAMILIES by a test).
"""

from __future__ import annotations

import json
from pathlib import Path

from cordlite.models.families.audioflamingo3 import FAMILY as AUDIOFLAMINGO3
from cordlite.models.families.base import AudioFamily, FamilyError, module_at
from cordlite.models.families.gemma4 import FAMILY as GEMMA4
from cordlite.models.families.musicflamingo import FAMILY as MUSICFLAMINGO
from cordlite.models.families.qwen2_5_omni import FAMILY as QWEN2_5_OMNI
from cordlite.models.families.qwen2_audio import FAMILY as QWEN2_AUDIO

FAMILIES: dict[str, AudioFamily] = {f.name: f for f in (QWEN2_AUDIO, QWEN2_5_OMNI, GEMMA4, AUDIOFLAMINGO3, MUSICFLAMINGO)}
"""Every family cordlite runs, in the order of docs/models.md."""

# Model types cordlite knows and does not run, with the reason a user is told.
REFUSED: dict[str, str] = {
    "qwen3_omni_moe": "its experts are fused 3-D parameters, which bitsandbytes does not quantise and LoRA "
                      "target names cannot reach",
    "qwen3_omni_moe_thinker": "its experts are fused 3-D parameters, which bitsandbytes does not quantise and "
                              "LoRA target names cannot reach",
    "step_audio_2": "Step-Audio-2 is not in transformers (remote code only); cordlite runs transformers' own classes",
    "gemma3n": "not supported yet: its vision tower needs timm (and timm torchvision), and its conformer has no "
               "family module in cordlite",
    "voxtral": "not supported yet: its processor takes audio only through apply_chat_template",
    "granite_speech": "not supported yet: its own speech LoRA must stay on for the audio view only",
    "phi4_multimodal": "not supported yet: its own speech LoRA must stay on for the audio view only",
    "qwen3_asr": "a speech recogniser (it answers with transcripts): its text view has no answer to teach",
    "glmasr": "a speech recogniser (it answers with transcripts): its text view has no answer to teach",
    "fun_asr_nano": "a speech recogniser (it answers with transcripts): its text view has no answer to teach",
}


def supported() -> str:
    return ", ".join(f"{f.name} ({f.model_class})" for f in FAMILIES.values())


def family_named(name: str) -> AudioFamily:
    """The family called `name` (a recipe's model.family)."""
    if name in FAMILIES:
        return FAMILIES[name]
    raise FamilyError(f"model.family: {name!r} is not a family cordlite runs; use one of: {', '.join(FAMILIES)}")


def family_for_type(model_type: str | None, where: str = "the checkpoint") -> AudioFamily:
    """The family of config.model_type `model_type`; FamilyError naming the type, why, and the list."""
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    why = REFUSED.get(model_type or "", "it is not an audio chat model family cordlite knows")
    raise FamilyError(f"{where}: model type {model_type!r} is not supported: {why}. Supported families: "
                      f"{supported()}. A checkpoint of one of them under another model_type can be run with "
                      "model.family: NAME")


def checkpoint_model_type(name_or_path: str, revision: str | None = None, offline: bool = False) -> str | None:
    """config.model_type of a local checkpoint directory or a hub id (its config.json: from the local
    hub cache, and with `offline` False from the hub); None when it cannot be read. The file is read
    as JSON, so a type transformers does not know (remote code) is still named."""
    local = Path(name_or_path).expanduser()
    try:
        if local.is_dir():
            path = local / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name_or_path, "config.json", revision=revision, local_files_only=offline))
        value = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except Exception:  # noqa: BLE001 - unreadable, unreachable, unknown id: the caller says what to do
        return None
    return value if isinstance(value, str) else None


def detect_family(name_or_path: str, override: str | None = None, revision: str | None = None) -> AudioFamily:
    """The family of a checkpoint: `override` (model.family) when given, else its config.model_type."""
    if override:
        return family_named(override)
    model_type = checkpoint_model_type(name_or_path, revision)
    if model_type is None:
        raise FamilyError(f"model.name_or_path: {name_or_path!r}: no config.json could be read to tell its model "
                          "family; point it at a checkpoint directory or a reachable hub id, or set model.family "
                          f"(one of: {', '.join(FAMILIES)})")
    return family_for_type(model_type, f"model.name_or_path: {name_or_path!r}")


def describe_family(name_or_path: str, override: str | None = None, revision: str | None = None,
                    tiny: bool = False) -> str:
    """One line for `cordlite show`: the family a recipe's model resolves to, and from what."""
    if override:
        try:
            fam = family_named(override)
        except FamilyError as e:
            return f"not runnable: {e}"
        return f"{fam.name} ({fam.model_class}), set by model.family"
    if tiny and not Path(name_or_path).expanduser().exists():
        fam = FAMILIES["qwen2_audio"]
        return f"{fam.name} ({fam.model_class}), the tiny model built on first use"
    model_type = checkpoint_model_type(name_or_path, revision, offline=True)
    if model_type is None:
        return (f"not detected here: {name_or_path!r} is neither a checkpoint directory nor in the local hub cache "
                "(the family is read from its config.json when the model loads)")
    try:
        fam = family_for_type(model_type)
    except FamilyError as e:
        return f"not runnable: {str(e).replace('the checkpoint: ', '')}"
    return f"{fam.name} ({fam.model_class}), detected from config.json model_type {model_type!r}"


def family_of(model) -> AudioFamily:
    """The family of a loaded model (a PeftModel or the bare transformers model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # inside a PeftModel or not
    name = getattr(base, "_cordlite_family", None)
    if name:
        return FAMILIES[name]
    return family_for_type(getattr(base.config, "model_type", None), f"{type(base).__name__}")


def forward_inputs(model, inputs: dict) -> dict:
    """Model inputs with cordlite's name for the mel features' mask (feature_attention_mask) turned
    into the one the family's forward takes; anything else unchanged."""
    if "feature_attention_mask" not in inputs:
        return inputs
    key = family_of(model).feature_mask_key
    if key == "feature_attention_mask":
        return inputs
    out = {k: v for k, v in inputs.items() if k != "feature_attention_mask"}
    out[key] = inputs["feature_attention_mask"]
    return out


def is_family_type(model_type: str | None) -> bool:
    """Whether config.model_type `model_type` is one of the families' (a text-only LM is not)."""
    return any(model_type in f.model_types for f in FAMILIES.values())


def family_or_none(model) -> AudioFamily | None:
    """The family of an audio chat model of a known family; None for any other model (a text-only judge LM)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_cordlite_family", None) is None and not is_family_type(getattr(base.config, "model_type", None)):
        return None
    return family_of(base)


def decoder_kwargs(model, input_ids) -> dict:
    """Extra inputs of the language model for the positions of `input_ids` when it runs on embeddings
    (a family's decoder_inputs: Gemma 4's per-layer inputs); {} for every other model."""
    family = family_or_none(model)
    if family is None or family.decoder_inputs is None:
        return {}
    return family.decoder_inputs(model.get_base_model() if hasattr(model, "get_base_model") else model, input_ids)


def logit_softcap(model) -> float | None:
    """The language model's final logit soft-cap (logits -> tanh(logits / c) * c), None when it has none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "final_logit_softcapping", None)


def language_model_of(model):
    """The decoder (without LM head) of an audio chat model of a known family; None for any other
    model (a text-only judge LM), which then runs through its own forward."""
    family = family_or_none(model)
    if family is None:
        return None
    return family.lm(model.get_base_model() if hasattr(model, "get_base_model") else model)


def mark_family(model, family: AudioFamily) -> None:
    """Record the family on a loaded base (model.family overrides the config's type)."""
    model._cordlite_family = family.name


__all__ = ["FAMILIES", "REFUSED", "AudioFamily", "FamilyError", "describe_family", "detect_family", "family_for_type", "family_named",
           "decoder_kwargs", "family_of", "family_or_none", "forward_inputs", "logit_softcap", "is_family_type", "language_model_of", "mark_family", "module_at", "supported", "checkpoint_model_type"]
