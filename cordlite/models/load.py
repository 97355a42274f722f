"""Load the base LALM (4-bit NF4, 8-bit or unquantised) with its processor, every weight frozen.

    model, processor = load_base(recipe.model, recipe.quantization, resolve_runtime(...))

The class is the checkpoint's family's (cordlite.models.families, from config.model_type or
model.family); a model type cordlite does not run is refused before any weight is read. The audio
encoder, the projector and the LM head stay unquantised (the family's, plus
quantization.skip_modules). LoRA goes on with
cordlite.models.lora.attach_lora.
"""

from __future__ import annotations

import torch

from cordlite.config import TINY_MODEL_DIR, ModelConfig, QuantizationConfig, is_tiny_path
from cordlite.models.runtime import ModelLoadError, Runtime


def bnb_config(quant: QuantizationConfig, compute_dtype: torch.dtype, keep: tuple[str, ...] = ()):
    """bitsandbytes settings of `quant`; `keep` (a family's audio side) is never quantised either."""
    from transformers import BitsAndBytesConfig

    skip = list(dict.fromkeys(tuple(keep) + tuple(quant.skip_modules)))
    if quant.mode == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    if quant.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return None


def load_base(model_cfg: ModelConfig, quant: QuantizationConfig, rt: Runtime):
    """Load the checkpoint's family class and its processor; every base weight frozen."""
    from cordlite.models.families import FamilyError, detect_family, mark_family

    path = model_cfg.name_or_path
    if model_cfg.create_tiny_if_missing and is_tiny_path(path, TINY_MODEL_DIR):
        from cordlite.models.tiny_checkpoint import ensure_tiny_qwen2audio

        ensure_tiny_qwen2audio(path)
    try:
        family = detect_family(path, model_cfg.family, model_cfg.revision)
    except FamilyError as e:
        raise ModelLoadError(str(e)) from None
    kwargs: dict = {"dtype": rt.dtype, "attn_implementation": family.attn_implementation(model_cfg.attn_implementation)}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    bnb = bnb_config(quant, rt.compute_dtype, family.skip_modules())
    if bnb is not None:
        kwargs["quantization_config"] = bnb
    # Every weight is read straight onto the run's device, shard by shard: a bf16 7B base never sits
    # in host memory whole (17 GB) before moving to the GPU.
    kwargs["device_map"] = {"": rt.device.index or 0} if rt.device.type == "cuda" else {"": "cpu"}
    try:
        model = family.transformers_class().from_pretrained(path, **kwargs)
        processor = family.load_processor(path, model_cfg.revision)
    except ValueError as e:  # a config or processor files transformers or the family refuses: their message
        raise ModelLoadError(f"model.name_or_path: {e}") from None
    except OSError as e:
        raise ModelLoadError(f"model.name_or_path: cannot load {path!r} ({e}). Use a local checkpoint directory "
                             f"or a hub id reachable from this machine (e.g. {family.smallest}).") from None
    mark_family(model, family)
    processor.tokenizer.padding_side = "left"  # completions must start at the same column in both views
    for p in model.parameters():
        p.requires_grad_(False)
    if rt.device.type == "cpu":
        _cpu_4bit_trainable(model)
    return model, processor


def _cpu_4bit_trainable(model: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights into an inference-only layout
    on the first no-grad pass, after which backward fails. Training needs the plain layout."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


