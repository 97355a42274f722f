"""Attach LoRA to the frozen base, and switch it off: the student and the teacher of one model.

Teacher and student are ONE set of base weights: the student is the model with its LoRA
adapters on, the teacher the same model inside `adapters_off(model)`. There is never a second
copy of the base.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

from cordlite.config import LoraConfig
from cordlite.models.runtime import Runtime
from cordlite.models.targets import lora_target_regex


def attach_lora(model, lora: LoraConfig, rt: Runtime, seed: int = 0):
    """Wrap the frozen base with trainable LoRA adapters (peft); returns the PeftModel."""
    from peft import LoraConfig as PeftLoraConfig

    from cordlite.models.families import family_of
    from peft import get_peft_model

    torch.manual_seed(seed)  # LoRA A init
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora.target_modules, lora.projector, lora.audio_encoder, family_of(model)),
        bias="none",
    )
    with peft_wrapping():
        peft_model = get_peft_model(model, config)
    n_adapted = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A"))
    if n_adapted == 0:
        raise RuntimeError(f"lora.target_modules {list(lora.target_modules)} matched no linear layer of the "
                           "language model; use names such as q_proj, v_proj")
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # adapters train in fp32; autocast handles the matmuls
    if rt.gradient_checkpointing:
        base = peft_model.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # the name transformers 5 no longer deprecates
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft_model


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around peft's wrapping of a model (get_peft_model, PeftModel.from_pretrained): peft reads
    transformers 5's deprecated `is_gradient_checkpointing` there, a FutureWarning no cordlite user
    can act on. Silenced here only, so every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def adapters_off(model) -> Iterator[None]:
    """The teacher: the same base weights with every LoRA adapter bypassed."""
    with model.disable_adapter():
        yield


def base_of(model):
    """The underlying transformers model (inside a PeftModel or not)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
