"""The optional unsloth backend: `model.backend: unsloth` in a recipe.

    cordlite train RECIPE --set model.backend=unsloth      (needs CUDA and `pip install -e ".[unsloth]"`)

When CUDA is present, unsloth is installed and the checkpoint's model family is one that unsloth
supports, the base is loaded through unsloth's public API (`FastModel.from_pretrained` in 4-bit
or 16-bit, then `FastModel.get_peft_model` for LoRA); the rest of the step is unchanged, and the
teacher is still the same weights with the adapters off. Anything else stops with one message
that lists every reason and the fix; there is never a silent fallback to the transformers path.

Qwen2-Audio is not among the audio models unsloth documents (unsloth.ai/docs, the text-to-speech
fine-tuning guide and the Gemma 3n guide list Whisper for speech-to-text, Gemma 3n for audio
input, and the text-to-speech models Orpheus-TTS, Sesame-CSM, Spark-TTS, Llasa-TTS and
Oute-TTS); cordlite's families (cordlite.models.families) are not among them, except perhaps Gemma
4 by now, which cordlite has not yet run through unsloth on a GPU. So SUPPORTED_MODEL_TYPES is empty:
today `backend: unsloth` always ends in that message. Add a model_type there only after the step
has been run and checked through unsloth on a GPU.

unsloth is imported only inside load_unsloth, after every check passed: importing it edits other
libraries at import time, which must never happen in a run that does not use it (or in tests).
"""

from __future__ import annotations

import importlib.util

import torch

from cordlite.config import LoraConfig, ModelConfig, QuantizationConfig
from cordlite.models.runtime import ModelLoadError, Runtime
from cordlite.models.targets import lora_target_regex

SUPPORTED_MODEL_TYPES: frozenset[str] = frozenset()
"""transformers model_type values that cordlite trains through unsloth (see the module docstring)."""

UNSLOTH_AUDIO_MODELS = ("Whisper (speech-to-text), Gemma 3n (audio input), and the text-to-speech models "
                        "Orpheus-TTS, Sesame-CSM, Spark-TTS, Llasa-TTS and Oute-TTS")
BACKEND_MARK = "_cordlite_backend"


class BackendUnavailable(ModelLoadError):
    """model.backend names a backend that cannot load this model here; the message says why and the fix."""


def model_type_of(model_cfg: ModelConfig) -> str:
    """model_type of the checkpoint (its config.json, local or in the hub cache); `model.family`
    when set; 'unknown' when neither can be read."""
    from cordlite.models.families import checkpoint_model_type

    if model_cfg.family:
        return model_cfg.family
    return checkpoint_model_type(model_cfg.name_or_path, model_cfg.revision, offline=True) or "unknown"


def unsloth_problems(model_cfg: ModelConfig) -> list[str]:
    """Every reason the unsloth backend cannot be used here; empty when it can. Never imports unsloth."""
    problems = []
    if not torch.cuda.is_available():
        problems.append("unsloth runs on NVIDIA GPUs only and torch sees no CUDA device")
    if importlib.util.find_spec("unsloth") is None:
        problems.append('unsloth is not installed (pip install -e ".[unsloth]", which also pins the transformers '
                        "version it needs)")
    family = model_type_of(model_cfg)
    if family not in SUPPORTED_MODEL_TYPES:
        problems.append(f"model family {family!r} of {model_cfg.name_or_path} is not supported through unsloth: "
                        f"the audio models unsloth supports are {UNSLOTH_AUDIO_MODELS}, and none of them is a "
                        "family cordlite trains yet (docs/models.md)")
    return problems


def check_unsloth(model_cfg: ModelConfig) -> None:
    problems = unsloth_problems(model_cfg)
    if problems:
        raise BackendUnavailable(
            "model.backend: 'unsloth' cannot be used: " + "; ".join(problems) + ". Fix: set model.backend: "
            "transformers (the default: bitsandbytes NF4 base + peft LoRA, the same objective and memory plan)")


def load_unsloth(model_cfg: ModelConfig, quant: QuantizationConfig, rt: Runtime):
    """Load the base through unsloth's FastModel; every base weight frozen, the processor left-padded."""
    check_unsloth(model_cfg)
    import unsloth  # noqa: F401  (first: it patches transformers when imported)
    from unsloth import FastModel

    from cordlite.models.families import detect_family, mark_family

    family = detect_family(model_cfg.name_or_path, model_cfg.family, model_cfg.revision)

    model, _ = FastModel.from_pretrained(
        model_name=model_cfg.name_or_path,
        dtype=rt.dtype,
        load_in_4bit=quant.mode == "nf4",
        full_finetuning=False,
        auto_model=family.transformers_class(),
        use_gradient_checkpointing="unsloth" if rt.gradient_checkpointing else False,
        **({"revision": model_cfg.revision} if model_cfg.revision else {}),
    )
    processor = family.load_processor(model_cfg.name_or_path, model_cfg.revision)
    processor.tokenizer.padding_side = "left"  # completions must start at the same column in both views
    for p in model.parameters():
        p.requires_grad_(False)
    setattr(model, BACKEND_MARK, "unsloth")
    mark_family(model, family)
    return model, processor


def attach_lora_unsloth(model, lora: LoraConfig, rt: Runtime, seed: int = 0):
    """LoRA through unsloth's get_peft_model on the language model's linear layers; returns a PeftModel."""
    from unsloth import FastModel

    from cordlite.models.families import family_of

    return FastModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora.target_modules, family=family_of(model)),
        bias="none",
        random_state=seed,
        use_gradient_checkpointing="unsloth" if rt.gradient_checkpointing else False,
        finetune_vision_layers=False,
        finetune_language_layers=True,
    )
